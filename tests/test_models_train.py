"""prunekit.models and prunekit.train: model shapes, fit/evaluate, History, callbacks, errors."""
import numpy as np
import pytest

from prunekit import functional as F
from prunekit import models, nn
from prunekit.optim import SGD, StepLR
from prunekit.tensor import Tensor, gradcheck
from prunekit.train import Callback, History, evaluate, fit


@pytest.fixture
def serial_numba():
    """One numba thread for the many tiny kernel calls of a gradcheck (see test_functional.py)."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


# ------------------------------------------------------------------ data
def blobs(n_per_class=60, seed=0):
    """Three well separated Gaussian blobs in 2-D: a problem a small MLP must solve."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    x = np.concatenate([c + 0.6 * rng.standard_normal((n_per_class, 2)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(3), n_per_class).astype(np.int64)
    order = rng.permutation(len(y))
    return x[order], y[order]


def batches(x, y, size):
    """The smallest loader: a list of (xb, yb) pairs (has len() and iterates)."""
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


# ---------------------------------------------------------------- models
def test_mlp_structure_and_shapes():
    m = models.mlp([64, 128, 10], seed=0)
    assert [type(l) for l in m] == [nn.Linear, nn.ReLU, nn.Linear]
    assert m[0].weight.shape == (128, 64) and m[2].weight.shape == (10, 128)
    assert m(np.zeros((5, 64), np.float32)).shape == (5, 10)
    deep = models.mlp([3, 4, 5, 2], activation="tanh")
    assert [type(l) for l in deep] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert isinstance(models.mlp([2, 2, 2], activation="sigmoid")[1], nn.Sigmoid)
    assert len(models.mlp([7, 1])) == 1


def test_mlp_argument_errors():
    with pytest.raises(ValueError, match="activation must be"):
        models.mlp([2, 3], activation="gelu")
    for bad in ([5], [5, 0, 2], [5, 2.5], "64,10"):
        with pytest.raises(ValueError, match="sizes must be"):
            models.mlp(bad)


def test_lenet_300_100():
    m = models.lenet_300_100(seed=0)
    assert [tuple(p.shape) for p in m.parameters()] == [(300, 784), (300,), (100, 300), (100,), (10, 100), (10,)]
    assert m.num_parameters() == 266_610
    assert m(np.zeros((2, 784), np.float32)).shape == (2, 10)


def test_lenet5():
    m = models.lenet5(seed=0)
    # conv 1->6 5x5, conv 6->16 5x5, fc 400-120-84-10
    assert m.num_parameters() == (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    x = np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32)
    out = m(x)
    assert out.shape == (2, 10) and out.dtype == np.float32
    F.cross_entropy(out, np.array([3, 7])).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in m.parameters())


def test_resnet_small():
    m = models.resnet_small(seed=0)
    x = np.random.default_rng(1).random((2, 1, 28, 28)).astype(np.float32)
    out = m(x)
    assert out.shape == (2, 10) and np.all(np.isfinite(out.data))
    assert any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    blocks = [mod for mod in m.modules() if isinstance(mod, models.ResidualBlock)]
    assert len(blocks) == 3
    assert isinstance(blocks[0].shortcut, nn.Identity)                       # 16 -> 16, stride 1
    assert isinstance(blocks[1].shortcut, nn.Sequential)                     # 16 -> 32, stride 2
    F.cross_entropy(out, np.array([1, 2])).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in m.parameters())
    m.eval()
    np.testing.assert_array_equal(m(x).data, m(x).data)


def test_resnet_small_gradient_wrt_input(serial_numba):
    """Residual adds reuse a tensor along two paths: backward must wait for both."""
    m = models.resnet_small(channels=(2, 3), num_classes=4, seed=0)
    x = Tensor(np.random.default_rng(2).standard_normal((2, 1, 6, 6)), requires_grad=True)
    assert gradcheck(lambda x: m(x), [x], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("make", [lambda s: models.mlp([4, 8, 2], seed=s), lambda s: models.lenet5(seed=s),
                                  lambda s: models.resnet_small(seed=s)], ids=["mlp", "lenet5", "resnet_small"])
def test_models_are_reproducible_from_a_seed(make):
    a, b, c = make(3), make(3), make(4)
    for (na, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data, err_msg=na)
    assert any(not np.array_equal(pa.data, pc.data) for pa, pc in zip(a.parameters(), c.parameters()))


# ------------------------------------------------------------------- fit
def test_fit_learns_a_separable_problem():
    x, y = blobs()
    xv, yv = blobs(seed=1)
    model = models.mlp([2, 16, 3], seed=0)
    before = evaluate(model, (xv, yv))
    hist = fit(model, batches(x, y, 30), SGD(model.parameters(), lr=0.1, momentum=0.9), epochs=15,
               val_loader=batches(xv, yv, 50), progress=False)
    assert isinstance(hist, History)
    assert hist.epochs == list(range(1, 16))
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 15 for v in hist.history.values())
    assert hist["loss"][-1] < hist["loss"][0] / 5
    assert hist["accuracy"][-1] >= 0.97 and hist["val_accuracy"][-1] >= 0.97
    after = evaluate(model, (xv, yv))
    assert after["loss"] < before["loss"] / 5 and after["accuracy"] >= 0.97
    # the last epoch's validation metrics are those of the final model
    assert hist["val_loss"][-1] == pytest.approx(after["loss"], rel=1e-6)
    assert hist["val_accuracy"][-1] == pytest.approx(after["accuracy"])
    assert hist.last("val_accuracy") == hist["val_accuracy"][-1] and "loss" in hist
    assert not model.training or all(m.training for m in model.modules())


def test_fit_matches_an_independent_numpy_training_loop():
    """fit(mlp, SGD momentum) == the same network trained with hand-written NumPy backprop."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((96, 5)).astype(np.float32)
    y = rng.integers(0, 3, 96)
    loader = batches(x, y, 32)
    model = models.mlp([5, 16, 3], seed=2)
    w1, b1, w2, b2 = ref = [p.data.astype(np.float64) for p in model.parameters()]
    fit(model, loader, SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3), epochs=4, progress=False)
    bufs = [None] * 4
    for _ in range(4):
        for xb, yb in loader:
            h = xb @ w1.T + b1
            a = np.maximum(h, 0)
            z = a @ w2.T + b2
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            d = (p - np.eye(3)[yb]) / len(yb)              # d loss / d logits
            dh = (d @ w2) * (h > 0)
            grads = [dh.T @ xb, dh.sum(axis=0), d.T @ a, d.sum(axis=0)]
            for i, (w, g) in enumerate(zip(ref, grads)):
                g = g + 1e-3 * w
                bufs[i] = g if bufs[i] is None else 0.9 * bufs[i] + g
                w -= 0.1 * bufs[i]
    for p, r in zip(model.parameters(), ref):
        np.testing.assert_allclose(p.data, r, rtol=1e-4, atol=1e-5)


def test_history_loss_is_the_mean_of_batch_losses_and_accuracy_is_right():
    x, y = blobs(n_per_class=20)
    model = models.mlp([2, 8, 3], seed=1)

    class Record(Callback):
        def __init__(self):
            self.losses, self.correct = [], []

        def on_batch_end(self, state):
            self.losses.append(state.loss)

    rec = Record()
    loader = batches(x, y, 15)                      # 60 samples: 4 equal batches
    # the training accuracy of an epoch is measured on the predictions made during that epoch;
    # with lr = 0 the model never changes, so it equals the accuracy of the initial model
    p0 = model(x).data
    hist = fit(model, loader, SGD(model.parameters(), lr=0.0), epochs=2, callbacks=[rec], progress=False)
    assert hist["loss"][0] == pytest.approx(np.mean(rec.losses[:4]), rel=1e-6)
    assert hist["loss"][1] == pytest.approx(np.mean(rec.losses[4:]), rel=1e-6)
    z = p0.astype(np.float64)
    ce = -np.mean(z[np.arange(60), y] - np.log(np.exp(z).sum(axis=1)))
    assert hist["loss"][0] == pytest.approx(ce, rel=1e-5)
    assert hist["accuracy"][0] == pytest.approx(np.mean(p0.argmax(axis=1) == y))


def test_callbacks_are_called_with_the_right_counters():
    x, y = blobs(n_per_class=10)
    model = models.mlp([2, 4, 3], seed=0)
    opt = SGD(model.parameters(), lr=0.01)
    events = []

    class Spy(Callback):
        def on_train_begin(self, s):
            events.append(("train_begin", s.epoch, s.step))
            assert s.model is model and s.optimizer is opt and s.epochs == 3 and s.steps_per_epoch == 4

        def on_epoch_begin(self, s):
            events.append(("epoch_begin", s.epoch, s.step))

        def on_batch_end(self, s):
            events.append(("batch_end", s.epoch, s.step))
            assert np.isfinite(s.loss)

        def on_epoch_end(self, s):
            events.append(("epoch_end", s.epoch, s.step))
            assert len(s.history.epochs) == s.epoch + 1   # this epoch's metrics are already recorded

        def on_train_end(self, s):
            events.append(("train_end", s.epoch, s.step))

    spies = [Spy(), Spy()]
    hist = fit(model, batches(x, y, 8), opt, epochs=3, callbacks=spies, progress=False)  # 30 samples: 4 batches
    expected = [("train_begin", 0, 0)]
    step = 0
    for e in range(3):
        expected.append(("epoch_begin", e, step))
        for _ in range(4):
            step += 1
            expected.append(("batch_end", e, step))
        expected.append(("epoch_end", e, step))
    expected.append(("train_end", 2, 12))
    assert events == [ev for ev in expected for _ in spies]         # each hook, each callback, in order
    assert hist.epochs == [1, 2, 3]


def test_stop_ends_training_early():
    x, y = blobs(n_per_class=10)
    model = models.mlp([2, 4, 3], seed=0)
    calls = {"batches": 0, "end": 0}

    class StopAfterTwo(Callback):
        def on_batch_end(self, s):
            calls["batches"] += 1

        def on_epoch_end(self, s):
            if s.epoch == 1:
                s.stop = True

        def on_train_end(self, s):
            calls["end"] += 1

    hist = fit(model, batches(x, y, 10), SGD(model.parameters(), lr=0.01), epochs=10,
               callbacks=[StopAfterTwo()], progress=False)
    assert hist.epochs == [1, 2] and len(hist["loss"]) == 2
    assert calls == {"batches": 6, "end": 1}


def test_fit_steps_the_scheduler_once_per_epoch():
    x, y = blobs(n_per_class=10)
    model = models.mlp([2, 4, 3], seed=0)
    opt = SGD(model.parameters(), lr=0.4)
    seen = []

    class LR(Callback):
        def on_epoch_begin(self, s):
            seen.append(s.optimizer.lr)

    fit(model, batches(x, y, 10), opt, epochs=4, scheduler=StepLR(opt, 1, 0.5), callbacks=[LR()], progress=False)
    assert seen == pytest.approx([0.4, 0.2, 0.1, 0.05])
    assert opt.lr == pytest.approx(0.025)


def test_fit_with_progress_bar_runs(capsys):
    x, y = blobs(n_per_class=5)
    model = models.mlp([2, 3], seed=0)
    hist = fit(model, batches(x, y, 5), SGD(model.parameters(), lr=0.01), epochs=2, progress=True)
    assert hist.epochs == [1, 2]


# --------------------------------------------------------------- evaluate
def test_evaluate_values_and_mode_restored():
    x, y = blobs(n_per_class=15)
    model = nn.Sequential(nn.Linear(2, 16, seed=0), nn.ReLU(), nn.Dropout(0.5, seed=0), nn.Linear(16, 3, seed=1))
    model.train()
    result = evaluate(model, batches(x, y, 7))
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    z = model(x).data.astype(np.float64)               # eval mode: dropout off
    ce = -np.mean(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1)))
    assert set(result) == {"loss", "accuracy"}
    assert result["loss"] == pytest.approx(ce, rel=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(z.argmax(axis=1) == y))
    again = evaluate(model, (x, y))                    # an (x, y) pair works too
    assert again == pytest.approx(result)
    assert not model.training and not any(m.training for m in model.modules())


def test_evaluate_builds_no_graph_and_rejects_empty_data():
    model = models.mlp([2, 3], seed=0)
    x, y = blobs(n_per_class=3)
    evaluate(model, (x, y))
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match=r"evaluate\(\): data must be"):
        evaluate(model, [])


# -------------------------------------------------------------- regression
def test_mse_regression_with_flat_targets():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((128, 3)).astype(np.float32)
    w_true = np.array([1.5, -2.0, 0.5], np.float32)
    y = (x @ w_true + 0.3).astype(np.float32)          # shape (N,), the model outputs (N, 1)
    model = models.mlp([3, 1], seed=0)
    hist = fit(model, batches(x, y, 16), SGD(model.parameters(), lr=0.05, momentum=0.5), epochs=30,
               loss="mse", val_loader=batches(x, y, 64), progress=False)
    assert set(hist.history) == {"loss", "val_loss"}
    assert hist["loss"][-1] < 1e-4 < hist["loss"][0]
    np.testing.assert_allclose(model[0].weight.data[0], w_true, atol=0.01)
    assert model[0].bias.data[0] == pytest.approx(0.3, abs=0.01)
    res = evaluate(model, (x, y), loss="mse")
    assert set(res) == {"loss"}
    pred = x @ model[0].weight.data.T + model[0].bias.data
    assert res["loss"] == pytest.approx(np.mean((pred[:, 0] - y) ** 2), rel=1e-4, abs=1e-9)


def test_custom_loss_callable():
    x, y = blobs(n_per_class=10)
    model = models.mlp([2, 3], seed=0)
    hist = fit(model, batches(x, y, 10), SGD(model.parameters(), lr=0.1), epochs=2,
               loss=lambda pred, target: F.cross_entropy(pred, target) * 2.0, progress=False)
    assert set(hist.history) == {"loss"}


# ------------------------------------------------------------------ errors
def test_unknown_loss_name():
    model = models.mlp([2, 3], seed=0)
    x, y = blobs(n_per_class=3)
    w = model[0].weight.data.copy()
    with pytest.raises(ValueError, match="loss must be") as err:
        fit(model, batches(x, y, 3), SGD(model.parameters(), lr=0.1), epochs=1, loss="hinge", progress=False)
    assert "hinge" in str(err.value) and "cross_entropy" in str(err.value)
    np.testing.assert_array_equal(model[0].weight.data, w)   # refused before training
    with pytest.raises(ValueError, match="loss must be"):
        evaluate(model, (x, y), loss="crossentropy")


def test_bad_epochs():
    model = models.mlp([2, 3], seed=0)
    with pytest.raises(ValueError, match="epochs must be"):
        fit(model, [], SGD(model.parameters(), lr=0.1), epochs=-1, progress=False)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to inf is the point
def test_diverging_learning_rate_raises_instead_of_nan():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, 4)).astype(np.float32) * 3
    y = x.sum(axis=1).astype(np.float32)
    model = models.mlp([4, 16, 1], seed=0)
    with pytest.raises(FloatingPointError, match="lr") as err:
        fit(model, batches(x, y, 16), SGD(model.parameters(), lr=10.0), epochs=50, loss="mse", progress=False)
    assert "10.0" in str(err.value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_an_update_that_overflows_on_the_last_step_is_reported():
    """The loss of the only step is finite, but the update it triggers overflows the weights."""
    x = np.ones((4, 2), np.float32)
    y = np.full(4, 1e15, np.float32)   # loss ~1e30 and its gradient ~1e15: huge but finite in float32
    model = models.mlp([2, 1], seed=0)
    with pytest.raises(FloatingPointError, match=r"'0\.(weight|bias)'.*non-finite.*epoch 0"):
        fit(model, [(x, y)], SGD(model.parameters(), lr=1e30), epochs=1, loss="mse", progress=False)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_diverging_classifier_raises_too():
    x, y = blobs()
    model = models.mlp([2, 32, 3], seed=0)
    with pytest.raises(FloatingPointError):
        fit(model, batches(x * 100, y, 30), SGD(model.parameters(), lr=1e4, momentum=0.9), epochs=50,
            progress=False)
