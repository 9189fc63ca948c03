"""Pruned weights stay zero through training and saving; schedules, lottery tickets, sensitivity."""
import warnings

import numpy as np
import pytest

from prunekit import functional as F
from prunekit import models, nn, optim
from prunekit import pruning as P
from prunekit.data import DataLoader
from prunekit.tensor import Tensor
from prunekit.train import Callback, evaluate, fit

RNG = np.random.default_rng(0)
X = RNG.standard_normal((64, 6)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.5)


def small(seed=0):
    return models.mlp([6, 16, 8, 3], seed=seed)


def step(model, opt, i):
    xb, yb = X[(i * 16) % 64:(i * 16) % 64 + 16], Y[(i * 16) % 64:(i * 16) % 64 + 16]
    opt.zero_grad()
    F.cross_entropy(model(Tensor(xb)), yb).backward()
    opt.step()


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("created_before", [False, True])
def test_zeros_hold_for_100_steps(name, created_before):
    m = small()
    opt = OPTIMIZERS[name](m.parameters()) if created_before else None
    if created_before:   # momentum / Adam moments are already non-zero everywhere
        for i in range(5):
            step(m, opt, i)
    P.prune(m, 0.7, scope="global")
    masks = {n: k.copy() for n, k in P.masks(m).items()}
    before = {n: p.data.copy() for n, p in m.named_parameters()}
    opt = opt or OPTIMIZERS[name](m.parameters())
    for i in range(100):
        step(m, opt, i)
    for n, p in m.named_parameters():
        if n in masks:
            np.testing.assert_array_equal(p.mask, masks[n])
            assert np.all(p.data[masks[n] == 0] == 0)
            moved = p.data[masks[n] == 1] != before[n][masks[n] == 1]
            assert moved.any()  # the rest did train (weights into a dead ReLU may not)
        else:
            assert p.mask is None


def test_zeros_hold_through_save_and_load(tmp_path):
    m = small()
    P.prune(m, 0.8)
    path = tmp_path / "pruned.npz"
    nn.save(m, path)
    m2 = small(seed=5)
    nn.load_state(m2, path)
    for (n, p), (_, q) in zip(m.named_parameters(), m2.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
        if p.mask is None:
            assert q.mask is None
        else:
            np.testing.assert_array_equal(p.mask, q.mask)
    opt = optim.Adam(m2.parameters(), lr=1e-2)
    for i in range(100):
        step(m2, opt, i)
    assert P.sparsity(m2).total == pytest.approx(P.sparsity(m).total)
    for n, mask in P.masks(m2).items():
        assert np.all(dict(m2.named_parameters())[n].data[mask == 0] == 0)


def test_remove_lets_weights_train_again():
    m = small()
    P.prune(m, 0.5)
    P.remove(m)
    zeros = m[0].weight.data == 0
    opt = optim.SGD(m.parameters(), lr=0.1)
    for i in range(3):
        step(m, opt, i)
    assert np.any(m[0].weight.data[zeros] != 0)


# ------------------------------------------------------------------ AGP
def test_agp_formula_hand_values():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3
    assert P.agp_sparsity(5, 0.8, 0, 10) == pytest.approx(0.8 - 0.8 * 0.5 ** 3)
    assert P.agp_sparsity(7, 0.8, 0, 12, frequency=3) == pytest.approx(0.8 * (1 - 0.5 ** 3))  # t_k = 6
    assert P.agp_sparsity(2, 0.9, 2, 6, initial_sparsity=0.1) == pytest.approx(0.1)
    assert P.agp_sparsity(1, 0.9, 2, 6) == 0.0
    assert P.agp_sparsity(6, 0.9, 2, 6) == 0.9 and P.agp_sparsity(100, 0.9, 2, 6) == 0.9


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_agp_callback_reaches_exactly_the_target(scope):
    m = small()
    agp = P.AGP(0.87, begin_step=2, frequency=3, scope=scope)
    loader = DataLoader(X, Y, 16)
    fit(m, loader, optim.SGD(m.parameters(), lr=0.05, momentum=0.9), 5, callbacks=[agp], progress=False)
    total_steps = 5 * len(loader)
    steps = [t for t, _, _ in agp.history]
    assert steps == [2, 5, 8, 11, 14, 17, 20]
    assert steps[-1] == total_steps
    targets = [s for _, s, _ in agp.history]
    assert targets == sorted(targets) and targets[-1] == 0.87
    for t, s, _ in agp.history:
        assert s == pytest.approx(0.87 * (1 - (1 - (t - 2) / (total_steps - 2)) ** 3))
    rep = P.sparsity(m)
    if scope == "layer":
        for r in rep.rows:
            assert r["pruned"] == round(0.87 * r["size"])
    else:
        assert rep.pruned == round(0.87 * rep.size)
    for n, mask in P.masks(m).items():
        assert np.all(dict(m.named_parameters())[n].data[mask == 0] == 0)


def test_agp_warns_when_end_is_after_training():
    m = small()
    with pytest.warns(UserWarning, match="will not be reached"):
        fit(m, DataLoader(X, Y, 32), optim.SGD(m.parameters(), lr=0.01), 1,
            callbacks=[P.AGP(0.5, end_step=50)], progress=False)


# ------------------------------------------------------------------ iterative and batch pruning
def test_sparsity_schedule_values():
    assert P.sparsity_schedule(0.75, 2, kind="geometric") == pytest.approx([0.5, 0.75])
    assert P.sparsity_schedule(0.9, 3, kind="linear") == pytest.approx([0.3, 0.6, 0.9])
    assert P.sparsity_schedule(0.8, 2, kind="cubic") == pytest.approx([0.8 * (1 - 0.125), 0.8])


def test_iterative_prune_with_callable_finetune():
    m = small()
    seen = []

    def finetune(model, i):
        seen.append((i, P.sparsity(model).total))
        opt = optim.SGD(model.parameters(), lr=0.05)
        for k in range(3):
            step(model, opt, k)
        return "done"

    out = P.iterative_prune(m, 0.9, 3, finetune, evaluate=(X, Y))
    assert [r["step"] for r in out] == [1, 2, 3] and out[-1]["finetune"] == "done"
    assert [round(s, 6) for s in (r["sparsity"] for r in out)] == [round(1 - 0.1 ** (i / 3), 6) for i in (1, 2, 3)]
    for r in P.sparsity(m).rows:
        assert r["pruned"] == round(0.9 * r["size"])
    assert 0 <= out[-1]["metrics"]["accuracy"] <= 1
    assert seen[0][1] < seen[1][1] < seen[2][1]


def test_iterative_prune_with_a_finetune_and_lr_rewinding():
    m = small()
    opt = optim.SGD(m.parameters(), lr=0.1)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    lrs = []

    class Spy(Callback):
        def on_train_begin(self, state):
            lrs.append(state.optimizer.lr)

    P.iterative_prune(m, 0.5, 2, P.FineTune(DataLoader(X, Y, 32), opt, 2, scheduler=sched, callbacks=[Spy()]),
                      rewind_epoch=0)
    assert lrs == [0.1, 0.1]   # without rewinding the second round would start at 0.025
    assert P.sparsity(m).total == pytest.approx(0.5, abs=0.01)


def test_rewind_learning_rate():
    opt = optim.SGD(small().parameters(), lr=1.0)
    sched = optim.StepLR(opt, 1, gamma=0.1)
    for _ in range(3):
        sched.step()
    assert opt.lr == pytest.approx(1e-3)
    P.rewind_learning_rate(sched, epoch=1)
    assert opt.lr == pytest.approx(0.1)
    with pytest.raises(TypeError, match="scheduler must be"):
        P.rewind_learning_rate(opt)


def test_batch_prune_rescoring():
    m = small()
    calls = []

    def counting(ctx):
        calls.append(sum(int((p.mask == 0).sum()) if p.mask is not None else 0 for p in ctx.params.values()))
        return {n: np.abs(w) for n, w in ctx.weights.items()}

    n = m[0].weight.size + m[2].weight.size + m[4].weight.size
    rep = P.batch_prune(m, 0.6, rounds=4, score=counting, scope="global")
    assert len(calls) == 4 and calls == sorted(calls) and calls[0] == 0
    assert rep.pruned == round(0.6 * n)
    # with a data-free score the result equals one-shot pruning
    m2 = small()
    P.prune(m2, 0.6, scope="global")
    for a, b in zip(P.masks(m).values(), P.masks(m2).values()):
        np.testing.assert_array_equal(a, b)
    m3 = small()
    calls.clear()
    P.batch_prune(m3, 0.5, weights_per_round=50, score=counting, scope="global")
    assert P.sparsity(m3).pruned == round(0.5 * n) and len(calls) == -(-round(0.5 * n) // 50)
    m4 = small()
    P.batch_prune(m4, 0.5, weights_per_round=50, score="taylor", data=(X, Y), scope="global")
    assert P.sparsity(m4).pruned == round(0.5 * n)


def test_random_baseline_is_worse_than_magnitude():
    from prunekit.data import load_digits
    (x, y), (xt, yt) = load_digits()
    m = models.mlp([64, 32, 10], seed=0)
    fit(m, DataLoader(x, y, 64, shuffle=True, seed=0), optim.Adam(m.parameters(), lr=1e-2), 5, progress=False)
    state = m.state_dict()
    P.prune(m, 0.8, score="magnitude")
    acc_mag = evaluate(m, (xt, yt))["accuracy"]
    accs = []
    for seed in range(3):
        m.load_state_dict(state)
        P.prune(m, 0.8, score="random", seed=seed)
        accs.append(evaluate(m, (xt, yt))["accuracy"])
    assert acc_mag > max(accs) + 0.2


# ------------------------------------------------------------------ lottery tickets
def test_lottery_ticket_rewinds_to_step_k_and_controls():
    m = small(2)
    starts = []
    loader = DataLoader(X, Y, 16)

    class Starts(Callback):
        def on_train_begin(self, state):
            model = state.model
            starts.append({n: p.data.copy() for n, p in model.named_parameters()})
            starts[-1]["masks"] = {n: None if p.mask is None else p.mask.copy() for n, p in model.named_parameters()}

    train = P.FineTune(loader, lambda p: optim.SGD(p, lr=0.05), 2, callbacks=[Starts()])

    # what the weights are after 3 batches of the first run (reference, same deterministic training)
    ref = small(2)
    snap = P.WeightSnapshot(3)
    fit(ref, loader, optim.SGD(ref.parameters(), lr=0.05), 2, callbacks=[snap], progress=False)
    theta_0 = {n: p.data.copy() for n, p in small(2).named_parameters()}

    res = P.lottery_ticket(m, train, rounds=2, amount=0.5, rewind_step=3, evaluate=(X, Y), seed=0)
    assert [r["round"] for r in res.rounds] == [0, 1, 2]
    assert [r["sparsity"] for r in res.rounds] == pytest.approx([0, 0.5, 0.75], abs=0.01)
    assert len(starts) == 1 + 2 + 2       # dense, two rounds, two controls
    for r in (1, 2):                       # survivors rewound to theta_3, masked
        for n, p in small(2).named_parameters():
            mask = starts[r]["masks"][n]
            expected = snap.state[n] * (1 if mask is None else mask)
            np.testing.assert_array_equal(starts[r][n], expected)
    ticket = {n: k for n, k in res.masks.items()}
    reinit, randmask = starts[3], starts[4]
    for n, mask in ticket.items():
        np.testing.assert_array_equal(reinit["masks"][n], mask)          # same mask ...
        assert np.isin(reinit[n][mask == 1], theta_0[n]).all()          # ... values drawn from theta_0
        assert not np.array_equal(reinit[n], theta_0[n] * mask)          # ... in a shuffled order
        np.testing.assert_array_equal(reinit[n][mask == 0], 0)
        assert (randmask["masks"][n] == 0).sum() == (mask == 0).sum()    # same count, other mask
        assert not np.array_equal(randmask["masks"][n], mask)
    assert set(res.controls) == {"reinit", "random_mask"}
    # the model ends as the trained ticket
    for n, mask in ticket.items():
        np.testing.assert_array_equal(dict(m.named_parameters())[n].mask, mask)
    assert "ctrl reinit" in repr(res)


def test_lottery_reinit_draws_from_initial_values():
    m = small(3)
    theta_0 = {n: p.data.copy() for n, p in m.named_parameters()}
    seen = []

    def train(model, step):
        seen.append({n: p.data.copy() for n, p in model.named_parameters()})

    P.lottery_ticket(m, train, rounds=1, amount=0.5, evaluate=lambda mm: 0.0, controls=["reinit"], seed=1)
    reinit = seen[-1]
    for n in theta_0:
        if n.endswith("bias"):
            np.testing.assert_array_equal(np.sort(reinit[n]), np.sort(theta_0[n]))  # a permutation
            assert not np.array_equal(reinit[n], theta_0[n])


def test_lottery_ticket_with_a_finetune_and_a_plain_callable():
    m = small(4)
    res = P.lottery_ticket(m, P.FineTune(DataLoader(X, Y, 32), lambda p: optim.SGD(p, lr=0.05), 1),
                           rounds=1, amount=0.3, evaluate=(X, Y), controls=())
    assert res.rounds[1]["sparsity"] == pytest.approx(0.3, abs=0.01) and res.controls == {}
    steps = []
    P.lottery_ticket(small(4), lambda model, step: steps.append(step), rounds=2, amount=0.3,
                     evaluate=lambda mm: 0.0, controls=["reinit"])
    assert steps == [0, 1, 2, 2]              # dense run, rounds 1 and 2, the control as the last round
    with pytest.raises(TypeError, match="lottery_ticket\\(\\): train must be None, a FineTune.*got dict"):
        P.lottery_ticket(m, {"loader": DataLoader(X, Y, 32), "optimizer": optim.SGD(m.parameters(), lr=0.1),
                             "epochs": 1}, rounds=1, evaluate=(X, Y))


# ------------------------------------------------------------------ sensitivity
def test_sensitivity_scan_matches_manual_and_restores_model():
    m = small()
    fit(m, DataLoader(X, Y, 16), optim.Adam(m.parameters(), lr=1e-2), 10, progress=False)
    P.prune(m, 0.2)
    state = m.state_dict()
    res = P.sensitivity_scan(m, (X, Y), sparsities=[0.5, 0.9], metric="loss")
    after = m.state_dict()
    assert state.keys() == after.keys() and all(np.array_equal(state[k], after[k]) for k in state)
    assert res.baseline == pytest.approx(evaluate(m, (X, Y))["loss"])
    # manual: layer 2 alone at 90%
    m.load_state_dict(state)
    P.prune_to(m, 0.9, layers=["2"])
    assert res.values["2.weight"][1] == pytest.approx(evaluate(m, (X, Y))["loss"])
    assert list(res.values) == ["0.weight", "2.weight", "4.weight"] and "dense" in repr(res)


def test_sparsities_for_tolerated_drop():
    res = P.SensitivityResult([0.5, 0.8, 0.9], {"a": [0.90, 0.89, 0.80], "b": [0.85, 0.91, 0.91],
                                                "c": [0.95, 0.95, 0.95]}, 0.91, "accuracy", True)
    assert res.sparsities_for(0.025) == {"a": 0.8, "b": 0.0, "c": 0.9}
    loss = P.SensitivityResult([0.5, 0.9], {"a": [1.0, 1.2]}, 1.0, "loss", False)
    assert loss.sparsities_for(0.1) == {"a": 0.5}


def test_sensitivity_plot_and_sparsities_feed_prune_to():
    import matplotlib
    matplotlib.use("Agg")
    m = small()
    res = P.sensitivity_scan(m, lambda mm: evaluate(mm, (X, Y)), sparsities=[0.5], metric="accuracy")
    ax = res.plot()
    assert ax.get_xlabel().startswith("sparsity") and len(ax.lines) == 4
    P.prune_to(m, {"0.weight": 0.5, "4.weight": 0.25})
    assert P.sparsity(m)["0.weight"] == 0.5 and m[2].weight.mask is None


def test_batch_prune_layer_scope_counts_per_layer():
    m = small()
    P.batch_prune(m, 0.5, weights_per_round=7, score="taylor", data=(X, Y))
    for r in P.sparsity(m).rows:
        assert r["pruned"] == round(0.5 * r["size"])


def test_sensitivity_scan_with_finetune_restores_everything():
    m = small()
    fit(m, DataLoader(X, Y, 16), optim.Adam(m.parameters(), lr=1e-2), 5, progress=False)
    P.prune(m, 0.2)
    state = m.state_dict()
    steps = []
    ft = P.FineTune(DataLoader(X, Y, 16), lambda p: optim.SGD(p, lr=0.05), 1)

    def tune(model, step):
        steps.append(step)
        ft(model, step)

    res = P.sensitivity_scan(m, (X, Y), sparsities=[0.5, 0.9], metric="loss", finetune=tune)
    after = m.state_dict()
    assert state.keys() == after.keys() and all(np.array_equal(state[k], after[k]) for k in state)
    assert steps == [1, 2, 3, 4, 5, 6]           # 3 layers x 2 sparsities
    m.load_state_dict(state)                      # by hand: layer 2 at 90%, one epoch, evaluate
    P.prune_to(m, 0.9, layers=["2"])
    ft(m)
    assert res.values["2.weight"][1] == pytest.approx(evaluate(m, (X, Y))["loss"])
    assert P.sparsity(m)["2.weight"] == pytest.approx(0.9, abs=0.01)   # fine-tuning kept the cut
    with pytest.raises(TypeError, match=r"sensitivity_scan\(\): finetune must be None, a FineTune"):
        P.sensitivity_scan(m, (X, Y), finetune={"epochs": 1})


def test_agp_refuses_an_unknown_score_option_when_made():
    with pytest.raises(TypeError, match=r"AGP\(\): max_sample must be a keyword score 'obd' knows"):
        P.AGP(0.5, score="obd", max_sample=10)
