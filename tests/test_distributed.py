"""prunekit.distributed: collectives against the plain sum, compressors against readable
references and hand-counted bytes, error feedback's conservation, and the trainer against
single-process training on the global batch."""
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit as pk
from prunekit import distributed as dist

RNG = np.random.default_rng(0)


def grads(n=4, d=50, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# ------------------------------------------------------------------ communicator
@settings(max_examples=15)
@given(n=st.integers(1, 9), d=st.integers(1, 40), seed=st.integers(0, 99))
def test_every_collective_equals_the_plain_sum(n, d, seed):
    a = np.random.default_rng(seed).standard_normal((n, d))
    net = dist.Network()
    for fn in (dist.ring_allreduce, dist.tree_allreduce, dist.parameter_server):
        r = fn(a, net)
        np.testing.assert_allclose(r.result, dist.plain_sum(a), rtol=1e-12, atol=1e-12, err_msg=fn.__name__)
        assert r.bytes_sent.shape == (n,)


def test_ring_sums_each_chunk_in_ring_order():
    # With integers the order does not matter; with float32 1e8 + 1 - 1e8 it does: the ring's
    # chunk 0 starts at worker 1 (1e8), then worker 2 (-1e8), then worker 0 (+1) -> exactly 1.
    a = np.zeros((3, 3), dtype=np.float32)
    a[:, 0] = [1.0, 1e8, -1e8]                      # three chunks of one value; chunk 0 holds these
    assert dist.ring_allreduce(a, dist.Network()).result[0] == 1.0
    assert dist.parameter_server(a, dist.Network()).result[0] == 0.0   # (1 + 1e8) - 1e8 in float32


def test_cost_model_by_hand():
    net = dist.Network(latency_s=1e-3, bandwidth_Bps=1e6)
    a = np.zeros((4, 1000), dtype=np.float32)       # 4000 bytes per worker
    ring = dist.ring_allreduce(a, net)
    assert ring.time_s == pytest.approx(2 * 3 * (1e-3 + 1000 / 1e6))
    assert list(ring.bytes_sent) == [6000] * 4        # 2 (N-1) / N * 4000
    tree = dist.tree_allreduce(a, net)
    assert tree.time_s == pytest.approx(2 * 2 * (1e-3 + 4000 / 1e6))
    assert list(tree.bytes_sent) == [8000, 8000, 4000, 4000]   # worker 0: two children; 1: parent + child 3
    ps = dist.parameter_server(a, net)
    assert ps.time_s == pytest.approx(2 * (1e-3 + 4 * 4000 / 1e6))
    # d2l's worked example: ring bytes per worker do not grow with N, the server's do.
    for n in (2, 8, 64):
        assert dist.allreduce_time("ring", n, 4e6, net) < 2 * (n * 1e-3 + 8.0)
    assert dist.allreduce_time("parameter_server", 64, 4e6, net) > 60 * dist.allreduce_time("ring", 64, 4e6, net) / 2


def test_allgather_of_sparse_messages():
    g = grads(3, 20)
    msg = dist.TopK(0.2).compress(g)
    r = dist.allgather(msg, dist.Network(latency_s=0, bandwidth_Bps=1))
    np.testing.assert_allclose(r.result, dist.plain_sum(msg.decompress()), rtol=1e-6)
    m = 4 * 8 + 4
    assert list(r.bytes_sent) == [2 * m] * 3     # forwards every message but its successor's
    assert r.time_s == 2 * m                     # two steps, each one message long


# ------------------------------------------------------------------ compressors
@pytest.mark.parametrize("ratio", [0.02, 0.1, 0.5, 1.0])
def test_topk_matches_reference_and_counts_bytes(ratio):
    g = grads(5, 200)
    k = max(1, round(ratio * 200))
    msg = dist.TopK(ratio).compress(g)
    out = msg.decompress()
    for i in range(5):
        np.testing.assert_array_equal(out[i], dist.topk_reference(g[i], k))
    assert list(msg.nbytes) == [k * 8 + 4] * 5
    assert not dist.TopK.allreduce_compatible


def test_topk_sampled_selection_is_exact_on_large_vectors():
    g = np.random.default_rng(2).standard_normal((3, 20000)).astype(np.float32)
    g[2] = 1e-3
    g[2, ::100] = 10.0                       # the sample sees only big values: the fallback path
    for k in (50, 1000):
        out = dist.TopK(k / 20000).compress(g).decompress()
        for i in range(3):
            kept = np.flatnonzero(out[i])
            assert len(kept) == k
            assert np.abs(g[i, kept]).min() >= np.sort(np.abs(g[i]))[-k]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 700), cap=st.integers(1, 60), q=st.floats(0.5, 1.0), seed=st.integers(0, 99))
def test_topk_candidate_kernel_matches_its_numpy_reference(n, cap, q, seed):
    """Lengths on and off the 64-value blocks, caps below and above the count, ties at the cut."""
    from prunekit.distributed.compress import _candidates_kernel, _candidates_reference

    row = np.round(np.random.default_rng(seed).standard_normal(n), 1).astype(np.float32)
    cut = np.float32(np.quantile(np.abs(row), q)) if n else np.float32(1.0)
    a, b = np.full(cap, -1, np.intp), np.full(cap, -1, np.intp)
    found = _candidates_kernel(row, cut, a)
    assert found == _candidates_reference(row, cut, b) == int((np.abs(row) >= cut).sum())
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("nesterov", [False, True])
def test_dgc_accumulate_kernel_equals_its_numpy_reference_exactly(nesterov):
    from prunekit.distributed.compress import _dgc_accumulate_kernel, _dgc_accumulate_reference

    rng = np.random.default_rng(int(nesterov))
    u, v, g = (rng.standard_normal(1001).astype(np.float32) for _ in range(3))
    u2, v2 = u.copy(), v.copy()
    _dgc_accumulate_kernel(u, v, g, np.float32(0.9), nesterov)
    _dgc_accumulate_reference(u2, v2, g, np.float32(0.9), nesterov)
    np.testing.assert_array_equal(u, u2)
    np.testing.assert_array_equal(v, v2)
    assert not np.array_equal(u, g)                  # it did something


def test_randomk_shares_indices_and_is_allreducible():
    g = grads(4, 100)
    c = dist.RandomK(0.1, seed=3)
    msg = c.compress(g)
    out = msg.decompress()
    kept = out != 0
    assert (kept == kept[0]).all() and kept[0].sum() == 10      # same 10 indices on every worker
    np.testing.assert_array_equal(out[kept], g[kept])
    assert list(msg.nbytes) == [10 * 4 + 8] * 4
    again = dist.RandomK(0.1, seed=3).compress(g)
    np.testing.assert_array_equal(again["indices"], msg["indices"])
    ex = c.exchange(g, dist.Network())
    np.testing.assert_allclose(ex.total, ex.sent.sum(0), rtol=1e-6)


def test_threshold_counts_vary_per_worker():
    g = np.array([[0.5, -2.0, 0.1, 3.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, -1.0]], np.float32)
    msg = dist.Threshold(1.0).compress(g)
    np.testing.assert_array_equal(msg.decompress(), np.where(np.abs(g) >= 1.0, g, 0))
    assert list(msg.nbytes) == [2 * 8 + 4, 4, 4 * 8 + 4]


def test_qsgd_is_unbiased_and_on_the_grid():
    g = grads(2, 30)
    c = dist.QSGD(levels=4, bucket_size=None, seed=0)
    outs = np.stack([c.compress(g).decompress() for _ in range(2000)])
    norms = np.linalg.norm(g, axis=1)
    steps = outs / (norms[None, :, None] / 4)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)           # multiples of ||g|| / s
    assert np.all(np.sign(outs) * np.sign(g) >= 0)                           # sign kept (or zero)
    np.testing.assert_allclose(outs.mean(0), g, atol=4 * norms.max() / 4 / np.sqrt(2000))
    assert list(c.compress(g).nbytes) == [math.ceil(30 * 4 / 8) + 4] * 2    # 1 sign + 3 level bits
    assert np.all(c.compress(np.zeros((1, 5), np.float32)).decompress() == 0)
    b = dist.QSGD(levels=2, bucket_size=8, seed=0).compress(g)           # 4 buckets, each its own norm
    assert b["norms"].shape == (2, 4) and list(b.nbytes) == [math.ceil(30 * 3 / 8) + 4 * 4] * 2
    np.testing.assert_allclose(b["norms"][:, 0], np.linalg.norm(g[:, :8], axis=1), rtol=1e-6)
    assert np.all(np.abs(b.decompress()[:, 24:]) <= np.linalg.norm(g[:, 24:], axis=1)[:, None] + 1e-6)


def test_signsgd_and_fp16():
    g = np.array([[1.0, -3.0, 0.0, 2.0, -2.0, 1.0, 1.0, 1.0, 1.0]], np.float32)
    msg = dist.SignSGD().compress(g)
    np.testing.assert_allclose(msg.decompress(), [[s * 12 / 9 for s in (1, -1, 1, 1, -1, 1, 1, 1, 1)]], rtol=1e-6)
    assert list(msg.nbytes) == [2 + 4]                   # 9 bits -> 2 bytes, plus the scale
    h = dist.FP16().compress(grads(2, 10))
    np.testing.assert_array_equal(h.decompress(), grads(2, 10).astype(np.float16).astype(np.float32))
    assert list(h.nbytes) == [20, 20] and dist.FP16.allreduce_compatible
    with pytest.raises(ValueError, match="float16's range"):
        dist.FP16().compress(np.array([[1e5]], np.float32))


def test_registry():
    assert {"topk", "randomk", "threshold", "qsgd", "signsgd", "fp16", "dgc", "powersgd"} <= set(
        dist.available_compressors())
    assert isinstance(dist.get_compressor("topk"), dist.TopK)

    @dist.register_compressor("halve_test")
    class Halve(dist.Compressor):
        allreduce_compatible = True

        def compress(self, grads, *, workers=None):
            return dist.Message(self, grads.shape, grads.shape[1] * 4, values=grads / 2)

        def decompress(self, message):
            return message["values"]

    ex = dist.get_compressor("halve_test").exchange(grads(3, 8), dist.Network())
    np.testing.assert_allclose(ex.total, grads(3, 8).sum(0) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="new compressor name"):
        dist.register_compressor("halve_test", Halve)
    with pytest.raises(ValueError, match="compressor must be"):
        dist.get_compressor("nope")


# ------------------------------------------------------------------ memory
@pytest.mark.parametrize("comp", [dist.TopK(0.1), dist.RandomK(0.2), dist.Threshold(0.8)])
def test_error_feedback_conserves_exactly_for_sparsifiers(comp):
    mem = dist.ErrorFeedback(4, 60)
    for step in range(5):
        g = grads(4, 60, seed=step)
        old = mem.residual.copy()
        corrected = mem.compensate(g)
        sent = comp.exchange(corrected, dist.Network()).sent
        mem.update(corrected, sent)
        assert np.array_equal(sent + mem.residual, g + old)          # bit for bit
        assert np.count_nonzero(mem.residual) > 0


@pytest.mark.parametrize("comp", [dist.QSGD(2), dist.SignSGD(), dist.FP16()])
def test_error_feedback_conserves_quantisers_to_rounding(comp):
    mem = dist.ErrorFeedback()
    for step in range(5):
        g = grads(3, 40, seed=step)
        old = np.zeros_like(g) if mem.residual is None else mem.residual.copy()
        corrected = mem.compensate(g)
        sent = comp.exchange(corrected, dist.Network()).sent
        mem.update(corrected, sent)
        np.testing.assert_allclose(sent + mem.residual, g + old, rtol=1e-6, atol=1e-6)


def test_error_feedback_eventually_sends_everything():
    # A constant gradient through top-1 with EF: within 10 steps every coordinate was sent,
    # and the sum of what was sent plus the residual is exactly 10 times the gradient.
    g = np.array([[4.0, 3.0, 2.0, 1.0]], np.float32)
    mem, c, total = dist.ErrorFeedback(), dist.TopK(0.25), np.zeros(4, np.float32)
    for _ in range(10):
        corrected = mem.compensate(g)
        sent = c.compress(corrected).decompress()
        mem.update(corrected, sent)
        total += sent[0]
    assert (total != 0).all()
    np.testing.assert_array_equal(total + mem.residual[0], 10 * g[0])


def test_dgc_momentum_correction_and_masking_by_hand():
    c = dist.DGC(ratio=0.5, momentum=0.5).bind(1, dist.Layout.flat(2))
    g = np.array([[1.0, 0.5]], np.float32)
    m1 = c.compress(g).decompress()                   # u = v = g -> send index 0
    np.testing.assert_array_equal(m1, [[1.0, 0.0]])
    np.testing.assert_array_equal(c.u, [[0.0, 0.5]])  # masked where sent
    m2 = c.compress(g).decompress()                   # u = [1, 0.75], v = [1, 1.25] -> send index 1
    np.testing.assert_array_equal(m2, [[0.0, 1.25]])
    np.testing.assert_array_equal(c.v, [[1.0, 0.0]])


def test_dgc_warmup_and_clipping():
    c = dist.DGC(ratio=0.001, warmup_steps=4)
    assert c.density(0) == 0.25 and c.density(4) == 0.001
    assert c.density(0) > c.density(1) > c.density(2) > c.density(3) > 0.001
    clip = dist.DGC(ratio=1.0, momentum=0.0, clip_norm=1.0).bind(4, dist.Layout.flat(3))
    out = clip.compress(np.array([[3.0, 4.0, 0.0]] * 4, np.float32)).decompress()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 0.5, rtol=1e-6)   # 1 / sqrt(4)


def _rank_r(n, m, r, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, r)) @ rng.standard_normal((r, m))).astype(np.float32)


def test_powersgd_exact_on_low_rank_sums_and_keeps_its_residual():
    layout = dist.Layout([("w", (20, 30)), ("b", (30,))])
    c = dist.PowerSGD(rank=2, seed=0).bind(3, layout)
    low = [np.concatenate([_rank_r(20, 30, 1, s).ravel(), np.full(30, s, np.float32)]) for s in range(3)]
    # the same rank-1 matrix on every worker: the sum has rank 1, recovered exactly
    g = np.stack([low[0]] * 3)
    ex = c.exchange(g, dist.Network())
    np.testing.assert_allclose(ex.total, g.sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ex.sent + c.residual, g, rtol=1e-5, atol=1e-5)   # EF conserves
    np.testing.assert_array_equal(ex.total[600:], g[:, 600:].sum(0))             # bias sent dense
    assert list(ex.message_bytes) == [4 * (30 + 20 * 2 + 30 * 2)] * 3
    st_ = c.compression_stats()
    assert (st_.numel_before, st_.numel_after) == (600, 100) and st_.rate == 6.0


def test_powersgd_warm_start_converges_by_power_iteration():
    # A fixed full-rank gradient: with a warm start, P Q^T approaches the best rank-1 approximation.
    rng = np.random.default_rng(1)
    u, _, vt = np.linalg.svd(rng.standard_normal((12, 10)))
    mat = (u[:, :10] * np.array([10, 3, 1, .5, .4, .3, .2, .1, .1, .1])) @ vt
    best = 10 * np.outer(u[:, 0], vt[0])
    c = dist.PowerSGD(rank=1, seed=0).bind(1, dist.Layout([("w", (12, 10))]))
    for _ in range(6):
        c.residual[...] = 0                          # look at the approximation alone
        total = c.exchange(mat.reshape(1, -1).astype(np.float32), dist.Network()).total
    np.testing.assert_allclose(total.reshape(12, 10), best, atol=1e-3)


def test_powersgd_ddp_rule_skips_small_matrices():
    c = dist.PowerSGD(rank=4).bind(1, dist.Layout([("a", (8, 8)), ("b", (100, 50))]))
    assert [spec[1:3] for spec in c.matrices] == [[100, 50]]       # (8 + 8) 4 = 64 is not < 64


# ------------------------------------------------------------------ trainer
def _data(n=512, d=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x[:, :3].sum(1) > 0).astype(np.int64) + 2 * (x[:, 3] > 0)
    return x, y


def _mf():
    return pk.models.mlp([20, 32, 4], seed=0)


def _sgd(ps):
    return pk.optim.SGD(ps, lr=0.1, momentum=0.9)


@pytest.mark.parametrize("collective,fuse", [("ring", False), ("tree", False), ("parameter_server", False),
                                             ("ring", True)])
def test_data_parallel_equals_single_process_large_batch(collective, fuse):
    x, y = _data()
    trainer = dist.DataParallelTrainer(_mf, _sgd, dist.Cluster(8), collective=collective, fuse_shards=fuse)
    assert trainer.fused == fuse
    run = trainer.fit((x, y), epochs=2, batch_size=100)          # 100 = shards of 13 and 12
    single = _mf()
    hist = pk.fit(single, pk.data.DataLoader(x, y, 100), _sgd(single.parameters()), epochs=2, progress=False)
    for (name, a), b in zip(single.state_dict().items(), trainer.model.state_dict().values()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(run.history["loss"], hist["loss"], rtol=1e-5)
    assert run.history["accuracy"] == hist["accuracy"]
    assert run.compression == 1.0 and run.timeline.n_steps == 12


def test_compressed_training_learns_and_counts_bytes():
    x, y = _data()
    base = dist.DataParallelTrainer(_mf, _sgd, dist.Cluster(4)).fit((x, y), epochs=4, batch_size=64)
    for comp, ef in [(dist.TopK(0.05), True), (dist.DGC(0.05, momentum=0.9), False), (dist.PowerSGD(2), False)]:
        opt = (lambda ps: pk.optim.SGD(ps, lr=0.1)) if comp.name == "dgc" else _sgd   # DGC has its own momentum
        run = dist.DataParallelTrainer(_mf, opt, dist.Cluster(4), compressor=comp, error_feedback=ef).fit(
            (x, y), epochs=4, batch_size=64)
        assert run.history["accuracy"][-1] > 0.75, comp          # chance is 0.25; dense reaches ~0.93
        assert run.compression > 3, comp
    assert base.history["accuracy"][-1] > 0.85
    steps = 4 * 8
    assert run.dense_message_bytes == steps * _mf().num_parameters() * 4


def test_topk_without_error_feedback_is_worse():
    x, y = _data(seed=1)
    acc = {}
    for ef in (False, True):
        t = dist.DataParallelTrainer(_mf, lambda ps: pk.optim.SGD(ps, lr=0.2), dist.Cluster(4),
                                     compressor=dist.TopK(0.01), error_feedback=ef)
        acc[ef] = t.fit((x, y), epochs=6, batch_size=64).history["accuracy"][-1]
    assert acc[True] > acc[False]


# ------------------------------------------------------------------ bad input
def test_bad_input_errors():
    with pytest.raises(ValueError, match="n_workers must be"):
        dist.Cluster(0)
    with pytest.raises(ValueError, match="ratio must be.*\\(0, 1\\]"):
        dist.TopK(1.5)
    with pytest.raises(ValueError, match="ratio must be"):
        dist.DGC(ratio=0)
    with pytest.raises(ValueError, match="rank must be"):
        dist.PowerSGD(rank=0)
    with pytest.raises(ValueError, match="backup_workers must be"):
        dist.DataParallelTrainer(_mf, _sgd, dist.Cluster(3), backup_workers=3)
    with pytest.raises(ValueError, match="node_ratio must be"):
        dist.DataParallelTrainer(_mf, _sgd, dist.Cluster(3), node_ratio=0)
    with pytest.raises(ValueError, match="error_feedback must be"):
        dist.DataParallelTrainer(_mf, _sgd, dist.Cluster(3), compressor="dgc", error_feedback=True)
    with pytest.raises(ValueError, match="speeds must be"):
        dist.Cluster(3, speeds=[1, 2])
    with pytest.raises(ValueError, match="speeds must be"):
        dist.Cluster(2, speeds=[1, 0])
    with pytest.raises(ValueError, match="collective must be"):
        dist.DataParallelTrainer(_mf, _sgd, dist.Cluster(3), collective="star")
    with pytest.raises(TypeError, match="cluster must be"):
        dist.DataParallelTrainer(_mf, _sgd, 4)


def test_import_does_not_import_dask():
    code = "import sys, prunekit.distributed as d; d.Cluster(2); print('dask' in sys.modules, 'distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------ stragglers and load balancing
def test_backup_workers_never_wait_for_the_slowest():
    x, y = _data()
    cluster = dist.Cluster(8, speeds=dist.RandomSpeeds(0.2, 1.0, seed=4))
    trainer = dist.DataParallelTrainer(_mf, _sgd, cluster, backup_workers=3)
    tl = trainer.fit((x, y), epochs=2, batch_size=64).timeline
    assert tl.used.sum(axis=1).tolist() == [5] * tl.n_steps
    for s in range(tl.n_steps):
        order = np.sort(tl.compute[s])
        assert tl.wait[s] == order[4]                                 # the 5th fastest
        assert np.all(tl.compute[s][~tl.used[s]] >= tl.wait[s])       # dropped = the slowest 3
    np.testing.assert_allclose(np.diff(tl.start), tl.wait[:-1] + tl.comm[:-1])
    full = dist.DataParallelTrainer(_mf, _sgd, cluster).fit((x, y), epochs=2, batch_size=64).timeline
    assert tl.wall_time_s < full.wall_time_s
    assert dist.DataParallelTrainer(_mf, _sgd, cluster, node_ratio=0.75).backup_workers == 2


def test_backup_step_equals_a_step_on_the_received_samples():
    x, y = _data(n=64)
    speeds = [1.0, 0.1, 1.0, 0.5]                                     # worker 1 is dropped
    trainer = dist.DataParallelTrainer(_mf, _sgd, dist.Cluster(4, speeds=speeds), backup_workers=1)
    trainer.fit((x, y), epochs=1, batch_size=64)
    keep = np.r_[0:16, 32:64]
    single = _mf()
    pk.fit(single, pk.data.DataLoader(x[keep], y[keep], 48), _sgd(single.parameters()), epochs=1, progress=False)
    by_shard = dist.DataParallelTrainer(_mf, _sgd, dist.Cluster(4, speeds=speeds), backup_workers=1,
                                        fuse_shards=False)
    by_shard.fit((x, y), epochs=1, batch_size=64)
    for a, b, c in zip(single.state_dict().values(), trainer.model.state_dict().values(),
                       by_shard.model.state_dict().values()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6)


def test_fused_shards_only_where_the_sum_is_all_that_matters():
    assert not dist.DataParallelTrainer(_mf, _sgd, dist.Cluster(2), compressor="topk").fused
    drop = lambda: pk.nn.Sequential(pk.nn.Linear(20, 4), pk.nn.Dropout(0.5))  # noqa: E731
    assert not dist.DataParallelTrainer(drop, _sgd, dist.Cluster(2)).fused
    with pytest.raises(ValueError, match="fuse_shards must be"):
        dist.DataParallelTrainer(drop, _sgd, dist.Cluster(2), fuse_shards=True)
    # the cost model charges the same bytes and time whether or not the shards are fused
    x, y = _data()
    runs = [dist.DataParallelTrainer(_mf, _sgd, dist.Cluster(4), fuse_shards=f).fit((x, y), batch_size=64)
            for f in (True, False)]
    assert np.array_equal(runs[0].bytes_sent, runs[1].bytes_sent)
    assert runs[0].wall_time_s == pytest.approx(runs[1].wall_time_s)


@settings(max_examples=25)
@given(n=st.integers(0, 500), speeds=st.lists(st.floats(0.01, 10), min_size=1, max_size=12))
def test_proportional_shards_cover_every_sample_once(n, speeds):
    sizes = dist.proportional_shards(n, speeds)
    assert sizes.sum() == n and (sizes >= 0).all()
    exact = n * np.array(speeds) / np.sum(speeds)
    assert np.all(np.abs(sizes - exact) < 1)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    covered = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))])
    np.testing.assert_array_equal(covered, np.arange(n))


def test_proportional_shards_balance_a_fixed_slow_node():
    x, y = _data()
    cluster = dist.Cluster(4, speeds=[1.0, 1.0, 1.0, 0.25])
    equal = dist.DataParallelTrainer(_mf, _sgd, cluster).fit((x, y), epochs=1, batch_size=128).timeline
    prop = dist.DataParallelTrainer(_mf, _sgd, cluster, shards="proportional").fit(
        (x, y), epochs=1, batch_size=128).timeline
    assert prop.wall_time_s < 0.6 * equal.wall_time_s
    assert prop.idle_fraction < equal.idle_fraction
    np.testing.assert_allclose(prop.compute[1:], 128 * 1e-4 / 3.25, rtol=0.05)   # balanced from step 1 on


def test_slow_node_appears_mid_run():
    x, y = _data()
    cluster = dist.Cluster(4, speeds=dist.SlowNode(worker=2, factor=0.1, start_step=3))
    tl = dist.DataParallelTrainer(_mf, _sgd, cluster, backup_workers=1).fit((x, y), epochs=1, batch_size=64).timeline
    assert np.all(tl.compute[3:, 2] == 10 * tl.compute[3:, 0])
    assert not tl.used[3:, 2].any()
    with pytest.raises(ValueError, match="speeds must be"):
        dist.Cluster(2, speeds=dist.SlowNode(worker=5))


def test_timeline_and_run_report_plot():
    import matplotlib
    matplotlib.use("Agg")
    x, y = _data()
    run = dist.DataParallelTrainer(_mf, _sgd, dist.Cluster(4, speeds=dist.RandomSpeeds(seed=0)),
                                   backup_workers=1).fit((x, y), epochs=2, batch_size=128, val_data=(x, y))
    ax = run.timeline.plot()
    assert "ms" in ax.get_xlabel() and ax.get_ylabel() == "worker"
    assert len(ax.patches) == 8 * (4 + 4)                      # 8 steps x (4 compute + 4 comm bars)
    ax2 = run.plot()
    assert ax2.get_ylabel() == "val_accuracy" and "s" in ax2.get_xlabel()
    assert "traffic" in repr(run) and "<table>" in run._repr_html_()
    assert run.history["wall_time_s"][-1] == pytest.approx(run.wall_time_s)
