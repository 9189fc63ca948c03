"""Grouped per-worker gradients (prunekit/distributed/_grouped.py): one forward/backward pass
must give every worker the gradient its own shard pass gives, and the trainer must fall back
to shard by shard, saying why, wherever that does not hold.

Float64 models: the grouped and the shard-by-shard paths then differ only by the float32
rounding of the gradient buffer and of the shard weights n_i / R (about 1e-7 relative)."""
import numpy as np
import pytest

import prunekit as pk
from prunekit import distributed as dist
from prunekit import nn


class Recorder(dist.Compressor):
    """Sends every gradient as it is and keeps a copy of what each step handed it."""

    allreduce_compatible = True

    def __init__(self):
        self.seen = []

    def compress(self, grads, *, workers=None):
        self.seen.append(np.array(grads))
        return dist.Message(self, grads.shape, grads.shape[1] * 4, values=np.array(grads))

    def decompress(self, message):
        return message["values"]


def _float64(model):
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    return model


def _lenet():
    return _float64(pk.models.lenet_300_100(seed=0))


def _conv():
    """Both conv2d paths (direct: 1 channel, stride 1; im2col: stride 2), a Linear without bias, pooling."""
    rng = np.random.default_rng(1)
    return _float64(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, rng=rng), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 3 * 3, 8, bias=False, rng=rng), nn.ReLU(), nn.Linear(8, 3, rng=rng)))


def _twice():
    """The same Linear applied twice: its gradient is the sum of both uses."""
    rng = np.random.default_rng(2)
    shared = nn.Linear(6, 6, rng=rng)
    return _float64(nn.Sequential(nn.Linear(10, 6, rng=rng), nn.ReLU(), shared, nn.Tanh(), shared, nn.ReLU(),
                                  nn.Linear(6, 3, rng=rng)))


def _data(model_fn, n, seed=0):
    rng = np.random.default_rng(seed)
    shape = {"_lenet": (784,), "_conv": (1, 14, 14), "_twice": (10,)}[model_fn.__name__]
    x = rng.standard_normal((n,) + shape)
    y = rng.integers(0, 10 if model_fn is _lenet else 3, n)
    return x, y


def _sgd(ps):
    return pk.optim.SGD(ps, lr=0.05, momentum=0.9)


SETUPS = {"equal": {}, "proportional": {"shards": "proportional"}, "backup workers": {"backup_workers": 3},
          "proportional + backups": {"shards": "proportional", "backup_workers": 2}}


@pytest.mark.parametrize("model_fn", [_lenet, _conv, _twice])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_grouped_gradients_equal_shard_by_shard(model_fn, setup):
    x, y = _data(model_fn, 120)
    seen, paths = [], []
    for group in ("auto", False):
        rec = Recorder()
        cluster = dist.Cluster(8, speeds=dist.RandomSpeeds(0.2, 1.0, seed=3))
        t = dist.DataParallelTrainer(model_fn, _sgd, cluster, compressor=rec, group_shards=group, **SETUPS[setup])
        t.fit((x, y), epochs=1, batch_size=40)       # 3 steps; the speeds (and so shards, drops) vary by step
        seen.append(rec.seen)
        paths.append(t.gradient_path)
    assert paths == ["grouped", "shard by shard (group_shards=False)"]
    for grouped, by_shard in zip(*seen):
        assert grouped.shape == by_shard.shape and np.abs(by_shard).max() > 0
        np.testing.assert_allclose(grouped, by_shard, rtol=1e-5, atol=1e-6 * np.abs(by_shard).max())


def test_grouped_gradients_with_the_mse_loss():
    """mse is a mean over samples and outputs: a worker's share is still n_i / R of its own mean."""
    x, _ = _data(_twice, 60)
    target = np.random.default_rng(4).standard_normal((60, 3))
    seen = []
    for group in ("auto", False):
        rec = Recorder()
        t = dist.DataParallelTrainer(_twice, _sgd, dist.Cluster(8), compressor=rec, group_shards=group, loss="mse",
                                     shards="proportional")
        assert t.grouped == (group == "auto")
        t.fit((x, target), epochs=2, batch_size=30)
        seen.append(np.array(rec.seen))
    assert seen[0].shape == (4, 8, seen[0].shape[2])
    np.testing.assert_allclose(seen[0], seen[1], rtol=1e-5, atol=1e-6 * np.abs(seen[1]).max())


def test_empty_shards_get_a_zero_gradient_on_both_paths():
    x, y = _data(_twice, 5)                          # 5 samples for 8 workers: three shards are empty
    seen = []
    for group in ("auto", False):
        rec = Recorder()
        dist.DataParallelTrainer(_twice, _sgd, dist.Cluster(8), compressor=rec, group_shards=group).fit(
            (x, y), batch_size=5)
        seen.append(rec.seen[0])
    assert np.all(seen[0][5:] == 0) and np.all(np.abs(seen[0][:5]).max(axis=1) > 0)
    np.testing.assert_allclose(seen[0], seen[1], rtol=1e-5, atol=1e-9)


COMPRESSORS = {
    "top-k + EF": (lambda: dist.TopK(0.05), True, _sgd),
    "top-k + EF, gap16+float16": (lambda: dist.TopK(0.05, encoding="gap16+float16"), True, _sgd),
    "DGC": (lambda: dist.DGC(0.05, warmup_steps=2), False, lambda ps: pk.optim.SGD(ps, lr=0.05)),
    "PowerSGD": (lambda: dist.PowerSGD(2), False, _sgd),
}


@pytest.mark.parametrize("name", list(COMPRESSORS))
@pytest.mark.parametrize("setup", ["equal", "proportional + backups"])
def test_grouped_training_equals_shard_by_shard(name, setup):
    """Six steps of compressed training: same weights to 1e-6 (a top-k tie broken the other way
    by float rounding would show as a much larger difference), exactly the same bytes."""
    comp, ef, opt = COMPRESSORS[name]
    x, y = _data(_lenet, 240, seed=1)
    runs, models = [], []
    for group in ("auto", False):
        cluster = dist.Cluster(8, speeds=dist.RandomSpeeds(0.2, 1.0, seed=5))
        t = dist.DataParallelTrainer(_lenet, opt, cluster, compressor=comp(), error_feedback=ef, group_shards=group,
                                     **SETUPS[setup])
        runs.append(t.fit((x, y), epochs=1, batch_size=40))
        models.append(t.model)
    assert runs[0].timeline.n_steps == 6
    for (key, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(runs[0].bytes_sent, runs[1].bytes_sent)
    np.testing.assert_allclose(runs[0].history["loss"], runs[1].history["loss"], rtol=1e-6)


@pytest.mark.parametrize("encoding", ["int32+float32", "gap16+float16"])
def test_error_feedback_conserves_on_the_grouped_path(encoding):
    """sent + residual == gradient, with the gradient added straight into the (zero) residual:
    top-k sends k values per worker; what stays is the rest, plus float16's rounding error."""
    x, y = _data(_twice, 32)
    rec_t = dist.DataParallelTrainer(_twice, _sgd, dist.Cluster(4), compressor=Recorder())
    rec_t.fit((x, y), batch_size=32)
    grad = rec_t.compressor.seen[0].astype(np.float32)        # the step's per-worker gradients, uncompressed
    t = dist.DataParallelTrainer(_twice, _sgd, dist.Cluster(4), compressor=dist.TopK(0.1, encoding=encoding),
                                 error_feedback=True)
    assert t.grouped
    t.fit((x, y), batch_size=32)
    residual = t.memory.residual
    k = dist.compress._k(0.1, grad.shape[1])
    sent = np.zeros_like(grad)
    for i in range(4):
        top = np.argsort(np.abs(grad[i]), kind="stable")[-k:]
        value = grad[i, top].astype(np.float16).astype(np.float32) if encoding == "gap16+float16" else grad[i, top]
        sent[i, top] = value
    np.testing.assert_allclose(residual, grad - sent, rtol=1e-6, atol=1e-12)
    assert np.count_nonzero(sent) == 4 * k


@pytest.mark.parametrize("every", [True, False])
def test_error_feedback_update_from_entries_equals_the_dense_update(every):
    rng = np.random.default_rng(0)
    g = rng.standard_normal((3, 50)).astype(np.float32)
    entries = [(np.array([3, 7, 1]), np.array([0.5, -1.25, 2.0], np.float32)), (np.array([], int),
               np.array([], np.float32)), (np.array([49]), np.array([3.0], np.float32))]
    dense = np.zeros_like(g)
    for row, (idx, val) in zip(dense, entries):
        row[idx] = val
    workers = None if every else np.array([2, 0, 1])
    start = rng.standard_normal((3, 50)).astype(np.float32)
    out = []
    for sent in (dense, entries):
        mem = dist.ErrorFeedback(3, 50)
        mem.residual[:] = start
        corrected = mem.compensate(g, workers)
        mem.update(corrected, sent, workers)
        out.append(mem.residual.copy())
    np.testing.assert_array_equal(out[0], out[1])
    rows = slice(None) if every else workers
    np.testing.assert_array_equal(out[1][rows], (start[rows] + g) - dense)


def test_sparse_exchange_sums_like_the_plain_sum():
    g = np.random.default_rng(1).standard_normal((5, 3000)).astype(np.float32)
    for comp in (dist.TopK(0.05), dist.Threshold(1.5), dist.DGC(0.05)):
        ex = comp.exchange(g, dist.Network())
        assert ex.entries is not None and ex.sent.shape == g.shape
        np.testing.assert_array_equal(ex.total, dist.plain_sum(ex.sent))
        for row, (idx, val) in zip(ex.sent, ex.entries):
            assert np.count_nonzero(row) == len(idx) and np.array_equal(row[idx], val)


# ------------------------------------------------------------------ where it does not apply
class Scale(nn.Module):
    """A layer with a parameter that has no grouped backward."""

    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(np.ones(n))

    def forward(self, x):
        return x * self.gain


class NoisyLinear(nn.Linear):
    """A Linear whose forward is its own: the grouped op must not replace it."""

    def forward(self, x):
        return super().forward(x) * 1.0


class NotLocal:
    """A stand-in for a backend that runs shards elsewhere (as DaskBackend does)."""

    def gradients(self, trainer, shards, out):
        return pk.distributed.LocalBackend().gradients(trainer, shards, out)

    def close(self):
        pass


def _mlp():
    return pk.models.mlp([10, 8, 3], seed=0)


@pytest.mark.parametrize("model_fn,kwargs,reason", [
    (lambda: nn.Sequential(nn.Linear(10, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)), {}, "BatchNorm1d"),
    (lambda: nn.Sequential(nn.Linear(10, 8), nn.Dropout(0.5), nn.Linear(8, 3)), {}, "Dropout"),
    (lambda: nn.Sequential(nn.Linear(10, 8), Scale(8), nn.Linear(8, 3)), {}, "parameters in Scale (1)"),
    (lambda: nn.Sequential(NoisyLinear(10, 3)), {}, "NoisyLinear"),
    (_mlp, {"loss": lambda pred, y: pk.functional.cross_entropy(pred, y) * 2}, "custom loss"),
    (_mlp, {"backend": NotLocal()}, "NotLocal computes each shard"),
    (_mlp, {"group_shards": False}, "group_shards=False"),
])
def test_unsupported_models_fall_back_and_say_why(model_fn, kwargs, reason):
    t = dist.DataParallelTrainer(model_fn, _sgd, dist.Cluster(4), compressor="topk", error_feedback=True, **kwargs)
    assert not t.grouped and not t.fused
    assert t.gradient_path.startswith("shard by shard (") and reason in t.gradient_path
    assert reason in repr(t)
    x, y = _data(_twice, 32)
    t.fit((x.astype(np.float32), y), batch_size=16)  # and it still trains, shard by shard
    if "group_shards" not in kwargs:
        with pytest.raises(ValueError, match="group_shards must be False or 'auto'.*" + reason.split(" (")[0]):
            dist.DataParallelTrainer(model_fn, _sgd, dist.Cluster(4), compressor="topk", group_shards=True,
                                     **kwargs)


def test_paths_by_default():
    assert dist.DataParallelTrainer(_mlp, _sgd, dist.Cluster(4)).gradient_path == "fused"
    assert dist.DataParallelTrainer(_mlp, _sgd, dist.Cluster(4), fuse_shards=False).gradient_path == "grouped"
    t = dist.DataParallelTrainer(_mlp, _sgd, dist.Cluster(4), compressor="dgc")
    assert t.grouped and t.gradient_path == "grouped" and "gradient_path='grouped'" in repr(t)
    with pytest.raises(ValueError, match="group_shards must be one of"):
        dist.DataParallelTrainer(_mlp, _sgd, dist.Cluster(4), group_shards="yes")


def test_the_layers_get_their_own_forward_back():
    t = dist.DataParallelTrainer(_mlp, _sgd, dist.Cluster(4), compressor="topk", error_feedback=True)
    x, y = _data(_twice, 32)
    t.fit((x.astype(np.float32), y), batch_size=16, val_data=(x.astype(np.float32), y))
    layers = [m for m in t.model.modules() if isinstance(m, nn.Linear)]
    assert layers and all("forward" not in vars(m) for m in layers)
    out = t.model(x.astype(np.float32))
    assert out._op == "linear"                       # the library's own op, not the grouped one


class MixPairs(nn.Module):
    """Puts two samples side by side in one row: the rows a Linear sees are no longer the samples."""

    def forward(self, x):
        return x.reshape((x.shape[0] // 2, 2 * x.shape[1]))


class SplitPairs(nn.Module):
    def forward(self, x):
        return x.reshape((x.shape[0] * 2, x.shape[1] // 2))


def test_a_layer_that_does_not_see_the_batch_on_axis_0_is_a_clear_error():
    model_fn = lambda: nn.Sequential(MixPairs(), nn.Linear(20, 20, seed=0), SplitPairs(),   # noqa: E731
                                     nn.Linear(10, 3, seed=1))
    t = dist.DataParallelTrainer(model_fn, _sgd, dist.Cluster(4), compressor="topk")
    x, y = _data(_twice, 16)
    with pytest.raises(ValueError, match="batch on axis 0.*16 samples.*got 8 rows.*group_shards=False"):
        t.fit((x.astype(np.float32), y), batch_size=16)
    assert all("forward" not in vars(m) for m in t.model.modules())
    dist.DataParallelTrainer(model_fn, _sgd, dist.Cluster(4), compressor="topk", group_shards=False).fit(
        (x.astype(np.float32), y), batch_size=16)


def test_a_custom_loss_is_not_fused_unless_asked():
    """Fusing is right only for a mean of per-sample losses, which prunekit cannot check in a custom loss."""
    def loss(pred, y):                               # not per-sample: the square of the batch's mean logit
        return pk.functional.cross_entropy(pred, y) + pred.mean() ** 2

    x, y = _data(_twice, 32)
    x = x.astype(np.float32)
    auto = dist.DataParallelTrainer(_mlp, _sgd, dist.Cluster(4), loss=loss)
    shards = dist.DataParallelTrainer(_mlp, _sgd, dist.Cluster(4), loss=loss, fuse_shards=False, group_shards=False)
    forced = dist.DataParallelTrainer(_mlp, _sgd, dist.Cluster(4), loss=loss, fuse_shards=True)
    assert not auto.fused and auto.gradient_path.startswith("shard by shard (a custom loss") and forced.fused
    for t in (auto, shards, forced):
        t.fit((x, y), batch_size=16)
    for a, b, c in zip(auto.model.parameters(), shards.model.parameters(), forced.model.parameters()):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-7)
    assert max(np.abs(a.data - c.data).max() for a, c in zip(auto.model.parameters(), forced.model.parameters())) > 1e-4
