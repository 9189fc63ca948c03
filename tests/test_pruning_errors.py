"""Bad input is refused with a clear error that names the argument."""
import numpy as np
import pytest

from prunekit import models, nn, optim
from prunekit import pruning as P

X = np.zeros((4, 6), np.float32)
Y = np.zeros(4, np.int64)


@pytest.fixture
def m():
    return models.mlp([6, 5, 3], seed=0)


@pytest.mark.parametrize("amount, exc, text", [
    (-0.1, ValueError, "amount must be a float in the range \\[0, 1\\] or a non-negative int, got -0.1"),
    (1.2, ValueError, "amount.*got 1.2"),
    (float("nan"), ValueError, "amount must be"),
    (-3, ValueError, "amount.*got -3"),
    (31, ValueError, "amount.*unpruned weights \\(30\\).*got 31"),
    (True, TypeError, "amount must be"),
    ("0.5", TypeError, "amount must be"),
    (None, TypeError, "amount must be"),
])
def test_bad_amount(m, amount, exc, text):
    with pytest.raises(exc, match=text):
        P.prune(m, amount)
    assert not P.is_pruned(m)  # nothing half-done


def test_int_amount_too_big_globally(m):
    with pytest.raises(ValueError, match="amount.*\\(45\\)"):
        P.prune(m, 46, scope="global")


def test_unknown_score(m):
    with pytest.raises(ValueError, match="score must be one of .*'magnitude'.*got 'magnitud'"):
        P.prune(m, 0.5, score="magnitud")
    with pytest.raises(TypeError, match="score must be"):
        P.prune(m, 0.5, score=3)


@pytest.mark.parametrize("score", ["gradient", "taylor", "obd", "snip", "movement", "oracle", "oracle_abs"])
def test_data_hungry_score_without_data(m, score):
    with pytest.raises(ValueError, match=f"data must be .*{score!r}.*got None"):
        P.prune(m, 0.5, score=score)
    assert not P.is_pruned(m)


def test_unknown_layer(m):
    with pytest.raises(ValueError, match="layers must be names of layers in the model "
                                         "\\(prunable: '0', '2'\\), got 'fc1'"):
        P.prune(m, 0.5, layers=["fc1"])
    with pytest.raises(ValueError, match="layers.*have a weight"):
        P.prune(m, 0.5, layers=["1"])  # the ReLU
    with pytest.raises(ValueError, match="layers.*part of the model"):
        P.prune(m, 0.5, layers=[nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="layers must be"):
        P.prune(m, 0.5, layers=[3])


def test_unknown_scope_loss_structure(m):
    with pytest.raises(ValueError, match="scope must be one of \\{'layer', 'global'\\}. got 'model'"):
        P.prune(m, 0.5, scope="model")
    with pytest.raises(ValueError, match="loss.*got 'hinge'"):
        P.prune(m, 0.5, score="taylor", data=(X, Y), loss="hinge")
    with pytest.raises(ValueError, match="prune\\(\\): structure must be 'neuron', 'channel' or 'N:M'.*channels"):
        P.prune(m, 0.5, structure="channels")
    with pytest.raises(ValueError, match="prune\\(\\): structure must be given for ignored_layers"):
        P.prune(m, 0.5, round_to=8)


def test_bad_model_and_data(m):
    with pytest.raises(TypeError, match="model must be"):
        P.prune("model", 0.5)
    with pytest.raises(TypeError, match="data must be"):
        P.prune(m, 0.5, score="taylor", data=5)
    with pytest.raises(ValueError, match="prune\\(\\): data.*4 inputs and 3 targets"):
        P.prune(m, 0.5, score="taylor", data=(X, Y[:3]))


def test_bad_scores(m):
    with pytest.raises(ValueError, match="score.*NaN"):
        P.prune(m, 0.5, score=lambda ctx: {n: np.full(w.shape, np.nan) for n, w in ctx.weights.items()})
    with pytest.raises(ValueError, match="score.*missing '2.weight'"):
        P.prune(m, 0.5, score={"0.weight": np.ones((5, 6))})
    with pytest.raises(ValueError, match="score.*shape \\(5, 6\\)"):
        P.prune(m, 0.5, score={"0.weight": np.ones(30), "2.weight": np.ones((3, 5))})
    with pytest.raises(TypeError, match="score.*dict"):
        P.prune(m, 0.5, score=lambda ctx: [1, 2])


def test_dict_amount_errors(m):
    with pytest.raises(ValueError, match="amount.*scope='global'"):
        P.prune(m, {"0.weight": 0.5}, scope="global")
    with pytest.raises(ValueError, match="amount.*keys \\['3.weight'\\]"):
        P.prune(m, {"3.weight": 0.5})
    with pytest.raises(ValueError, match="amount\\['0.weight'\\].*got 2.0"):
        P.prune(m, {"0.weight": 2.0})


def test_schedule_errors(m):
    with pytest.raises(ValueError, match="final_sparsity must be"):
        P.AGP(1.5)
    with pytest.raises(ValueError, match="initial_sparsity must be"):
        P.AGP(0.5, initial_sparsity=0.8)
    with pytest.raises(ValueError, match="end_step must be"):
        P.agp_sparsity(3, 0.5, 5, 5)
    with pytest.raises(ValueError, match="target must be"):
        P.iterative_prune(m, 1.5, 3)
    with pytest.raises(ValueError, match="kind must be"):
        P.sparsity_schedule(0.5, 3, kind="exponential")
    with pytest.raises(TypeError, match="iterative_prune\\(\\): finetune must be None, a FineTune.*got dict"):
        P.iterative_prune(m, 0.5, 2, {"loader": [], "optimizer": None})
    with pytest.raises(TypeError, match="FineTune\\(\\): optimizer must be an Optimizer or a factory"):
        P.FineTune((X, Y), None)
    with pytest.raises(TypeError, match="FineTune\\(\\): scheduler must be a factory"):
        opt = optim.SGD(m.parameters(), lr=0.1)
        P.FineTune((X, Y), lambda p: optim.SGD(p, lr=0.1), scheduler=optim.StepLR(opt, 1))
    with pytest.raises(ValueError, match="rewind_epoch must be"):
        P.iterative_prune(m, 0.5, 2, rewind_epoch=1)
    with pytest.raises(ValueError, match="sparsity.*got 1.5"):
        P.prune_to(m, 1.5)
    with pytest.raises(ValueError, match="batch_prune\\(\\): rounds must be given, or weights_per_round"):
        P.batch_prune(m, 0.5)
    with pytest.raises(ValueError, match="rounds must be given, or weights_per_round given .exactly one"):
        P.batch_prune(m, 0.5, rounds=2, weights_per_round=3)


def test_lottery_and_sensitivity_errors(m):
    train = P.FineTune([(X, Y)], lambda p: optim.SGD(p, lr=0.1), epochs=1)
    with pytest.raises(ValueError, match="evaluate must be"):
        P.lottery_ticket(m, train, rounds=1)
    with pytest.raises(ValueError, match="rewind_step.*got 5"):
        P.lottery_ticket(m, train, rounds=1, rewind_step=5, evaluate=(X, Y))
    with pytest.raises(ValueError, match="controls must be"):
        P.lottery_ticket(m, train, rounds=1, evaluate=(X, Y), controls=["shuffle"])
    with pytest.raises(ValueError, match="amount must be"):
        P.lottery_ticket(m, train, rounds=1, amount=0, evaluate=(X, Y))
    with pytest.raises(ValueError, match="metric.*got 'acc'"):
        P.sensitivity_scan(m, (X, Y), sparsities=[0.5], metric="acc")
    with pytest.raises(ValueError, match="sensitivity_scan\\(\\): sparsities must be"):
        P.sensitivity_scan(m, (X, Y), sparsities=[1.5])
    with pytest.raises(TypeError, match="sensitivity_scan\\(\\): amounts must be a keyword"):
        P.sensitivity_scan(m, (X, Y), amounts=[0.5])          # the old name is refused, not ignored
    with pytest.raises(ValueError, match="lottery_ticket\\(\\): rewind_step must be 0 when train is a plain"):
        P.lottery_ticket(m, lambda model, step: None, rounds=1, rewind_step=2, evaluate=(X, Y))


def test_unknown_score_option_is_refused(m):
    with pytest.raises(TypeError, match="max_weight must be a keyword score 'oracle' knows "
                                        "\\(it accepts: batch_size, max_weights\\)"):
        P.prune(m, 0.5, score="oracle", data=(X, Y), max_weight=10)
    with pytest.raises(TypeError, match="max_samples.*'magnitude'"):
        P.prune(m, 0.5, max_samples=3)
    # an unregistered callable may read any option
    P.prune(m, 0.5, score=lambda ctx: {n: np.abs(w) * ctx.option("power", 1) for n, w in ctx.weights.items()},
            power=2)
