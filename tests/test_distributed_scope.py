"""prunekit.distributed: ``scope="tensor"`` of TopK and DGC (each tensor keeps its own top fraction),
checked against a NumPy reference that takes each tensor's own top-k; exact byte counts; DGC's
residual conserved; clipping by the number of gradients summed."""
import numpy as np
import pytest

from prunekit import distributed as dist

# a layer-shaped layout with small tensors that a global top-k would starve
LAYOUT = dist.Layout([("w1", (60, 40)), ("b1", (40,)), ("w2", (40, 10)), ("b2", (10,)), ("w3", (10, 3)), ("b3", (3,))])


def grads(n=3, seed=0, layout=LAYOUT):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, layout.size)).astype(np.float32)
    # make the big first tensor dominate, as in a real network: a global top-k takes nothing else
    g[:, :2400] *= 100
    return g


def per_tensor_reference(row, ratio, layout=LAYOUT):
    """Each tensor's own top max(1, round(ratio * size)) by |g|, via the readable sort-based top-k."""
    out = np.zeros_like(row)
    for _, _, off, size in layout.entries:
        k = max(1, min(size, int(round(ratio * size))))
        out[off:off + size] = dist.topk_reference(row[off:off + size], k)
    return out


def k_total(ratio, layout=LAYOUT):
    return sum(max(1, min(s, int(round(ratio * s)))) for _, _, _, s in layout.entries)


def _f16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("ratio", [0.01, 0.05, 0.3])
@pytest.mark.parametrize("encoding", ["int32+float32", "gap16+float16"])
def test_topk_per_tensor_equals_each_tensors_own_topk_and_counts_bytes(ratio, encoding):
    g = grads()
    c = dist.TopK(ratio, encoding=encoding, scope="tensor").bind(3, LAYOUT)
    msg = c.compress(g)
    out = msg.decompress()
    want = np.stack([per_tensor_reference(row, ratio) for row in g])
    np.testing.assert_array_equal(out, want if encoding == "int32+float32" else _f16(want))
    k = k_total(ratio)
    per_entry = 8 if encoding == "int32+float32" else 4          # 2,883 values: no gap escapes
    assert list(msg.nbytes) == [len(b) for b in msg["buffers"]] == [per_entry * k + 4] * 3
    # every tensor is represented, where the global top-k of the same size takes only w1
    for _, _, off, size in LAYOUT.entries:
        assert (out[:, off:off + size] != 0).any(axis=1).all()
    glob = dist.TopK(ratio, encoding=encoding).bind(3, LAYOUT).compress(g).decompress()
    assert not glob[:, 2400:].any()


def test_dgc_per_tensor_first_step_and_bytes():
    g = grads(seed=1)
    c = dist.DGC(0.05, momentum=0.9, scope="tensor").bind(3, LAYOUT)
    msg = c.compress(g)                                # u = v = g at the first step
    want = np.stack([per_tensor_reference(row, 0.05) for row in g])
    np.testing.assert_array_equal(msg.decompress(), want)
    assert list(msg.nbytes) == [8 * k_total(0.05) + 4] * 3
    np.testing.assert_array_equal(c.v, g - want)       # v keeps exactly what was not sent
    np.testing.assert_array_equal(c.u, np.where(want != 0, 0, g))   # momentum masked where sent


def test_dgc_per_tensor_second_step_selects_from_the_accumulation():
    g0, g1 = grads(seed=2), grads(seed=3)
    c = dist.DGC(0.05, momentum=0.5, scope="tensor", encoding="gap16+float16").bind(3, LAYOUT)
    s0 = c.compress(g0).decompress()
    u = np.where(s0 != 0, 0, g0)                       # after masking
    v = g0 - s0
    u = 0.5 * u + g1
    v = v + u
    want = np.stack([per_tensor_reference(row, 0.05) for row in v])
    np.testing.assert_allclose(c.compress(g1).decompress(), _f16(want), rtol=0, atol=0)


@pytest.mark.parametrize("encoding", ["int32+float32", "gap16+float16"])
def test_dgc_per_tensor_conserves_the_residual(encoding):
    # momentum 0: the accumulation is the sum of the gradients; sent + kept must equal it
    c = dist.DGC(0.02, momentum=0.0, scope="tensor", encoding=encoding).bind(4, LAYOUT)
    sent, total = np.zeros((4, LAYOUT.size)), np.zeros((4, LAYOUT.size))
    for s in range(15):
        g = grads(4, seed=10 + s)
        sent += c.exchange(g, dist.Network()).sent
        total += g
    np.testing.assert_allclose(sent + c.v, total, rtol=1e-6, atol=1e-3)   # float32 sums of values up to ~400
    if encoding == "int32+float32":                    # values sent whole: every step's top-k left v exactly
        assert np.count_nonzero(c.v) < c.v.size


def test_scope_global_is_unchanged_and_scope_is_validated_and_shown():
    g = grads()
    a = dist.DGC(0.01).bind(3, LAYOUT).compress(g).decompress()
    k = max(1, round(0.01 * LAYOUT.size))
    np.testing.assert_array_equal(a, np.stack([dist.topk_reference(row, k) for row in g]))
    assert "scope" not in repr(dist.DGC(0.01)) and "scope='tensor'" in repr(dist.DGC(0.01, scope="tensor"))
    assert "scope='tensor'" in repr(dist.TopK(0.01, scope="tensor"))
    with pytest.raises(ValueError, match=r"DGC\(\): scope must be one of \{'global', 'tensor'\}, got 'layer'"):
        dist.DGC(0.01, scope="layer")
    with pytest.raises(ValueError, match=r"TopK\(\): scope must be one of"):
        dist.TopK(0.01, scope=None)
    with pytest.raises(ValueError, match=r"compress\(\): grads must be rows of the 2,883 values"):
        dist.TopK(0.01, scope="tensor").bind(3, LAYOUT).compress(np.zeros((3, 10), np.float32))


def test_trainer_binds_the_model_layout_for_per_tensor_selection():
    import prunekit as pk

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 20)).astype(np.float32)
    y = (x[:, :3].sum(1) > 0).astype(np.int64)
    comp = dist.DGC(0.02, momentum=0.9, scope="tensor", encoding="gap16+float16")
    t = dist.DataParallelTrainer(lambda: pk.models.mlp([20, 32, 2], seed=0), lambda ps: pk.optim.SGD(ps, lr=0.1),
                                 dist.Cluster(4), compressor=comp)
    run = t.fit((x, y), epochs=2, batch_size=64)
    sizes = [20 * 32, 32, 32 * 2, 2]
    k = sum(max(1, round(0.02 * s)) for s in sizes)
    assert [e[3] for e in comp.layout.entries] == sizes
    assert list(run.message_bytes) == [8 * (4 * k + 4)] * 4        # 2 epochs x 4 steps, no escapes


def test_dgc_clips_by_the_number_of_gradients_summed():
    # 4 workers bound, 2 waited for (backup workers): the limit is clip_norm / sqrt(2), not / sqrt(4)
    c = dist.DGC(ratio=1.0, momentum=0.0, clip_norm=1.0).bind(4, dist.Layout.flat(3))
    out = c.compress(np.array([[3.0, 4.0, 0.0]] * 2, np.float32), workers=[0, 2]).decompress()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1 / np.sqrt(2), rtol=1e-6)


def test_dgc_nesterov_by_hand_and_on_the_copying_path():
    # u <- m u + g; v <- v + g + m u (PyTorch's Nesterov), then top-k of v; u masked where sent
    c = dist.DGC(ratio=0.5, momentum=0.5, nesterov=True).bind(1, dist.Layout.flat(2))
    g = np.array([[1.0, 0.5]], np.float32)
    np.testing.assert_array_equal(c.compress(g).decompress(), [[1.5, 0.0]])    # v = 1.5 g -> index 0
    np.testing.assert_array_equal(c.u, [[0.0, 0.5]])
    np.testing.assert_array_equal(c.v, [[0.0, 0.75]])
    # u = [1, 0.75], v = [0, 0.75] + [1, 0.5] + 0.5 [1, 0.75] = [1.5, 1.625] -> index 1
    np.testing.assert_array_equal(c.compress(g).decompress(), [[0.0, 1.625]])
    np.testing.assert_array_equal(c.v, [[1.5, 0.0]])
    full = dist.DGC(0.05, momentum=0.9, nesterov=True).bind(4, dist.Layout.flat(300))
    rows = dist.DGC(0.05, momentum=0.9, nesterov=True).bind(4, dist.Layout.flat(300))
    for s in range(4):
        g = np.random.default_rng(s).standard_normal((4, 300)).astype(np.float32)
        a = full.compress(g).decompress()
        b = np.concatenate([rows.compress(g[w], workers=w).decompress() for w in (np.array([0, 1]), np.array([2, 3]))])
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(full.v, rows.v)
    assert "nesterov=True" in repr(full) and "nesterov" not in repr(dist.DGC(0.05))
    with pytest.raises(ValueError, match=r"DGC\(\): nesterov must be False when momentum is 0"):
        dist.DGC(0.05, momentum=0.0, nesterov=True)
