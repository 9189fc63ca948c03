"""prunekit.distributed.encoding: sparse messages as bytes (round trips, exact byte counts, escapes,
float16 range), the ``encoding=`` option of the sparsifiers, and error feedback computed from the
decoded values."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit import distributed as dist
from prunekit.distributed.encoding import ESCAPE

GAP16 = dist.get_encoding("gap16+float16")
INT32 = dist.get_encoding("int32+float32")


@st.composite
def sparse_messages(draw):
    size = draw(st.sampled_from([1, 7, 1000, 65535, 65536, 70000, 300000, 2**31 - 1]))
    k = draw(st.integers(0, min(size, 60)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if size < 10**6:
        idx = rng.choice(size, size=k, replace=False)
    else:                                         # rng.choice would build the whole range
        idx = np.unique(rng.integers(0, size, size=k))
        rng.shuffle(idx)
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 1e3, 6e4]))
    values = (rng.standard_normal(len(idx)) * scale).clip(-65504, 65504).astype(np.float32)
    return idx, values, size


def _escape_words(sorted_idx):
    """Hand count: one 0xFFFF word per whole 65535 in each gap (the first gap counted from 0)."""
    gaps = np.diff(np.concatenate([[0], sorted_idx]))
    return int((gaps // 65535).sum())


@settings(max_examples=150, deadline=None)
@given(sparse_messages())
def test_gap16_round_trip_indices_exact_values_float16_rounded(msg):
    idx, values, size = msg
    buf = GAP16.encode(idx, values, size)
    got_idx, got_val = GAP16.decode(buf)
    order = np.argsort(idx)
    np.testing.assert_array_equal(got_idx, idx[order])
    np.testing.assert_array_equal(got_val, values[order].astype(np.float16).astype(np.float32))
    assert got_val.dtype == np.float32 and got_idx.dtype == np.int64
    assert len(buf) == 4 + 4 * len(idx) + 2 * _escape_words(idx[order])
    assert len(buf) <= 4 + 4 * len(idx) + 2 * (size // 65535)     # escapes bounded by the vector's size


@settings(max_examples=60, deadline=None)
@given(sparse_messages())
def test_int32_round_trip_is_exact_and_keeps_the_order(msg):
    idx, values, size = msg
    buf = INT32.encode(idx, values, size)
    got_idx, got_val = INT32.decode(buf)
    np.testing.assert_array_equal(got_idx, idx)
    np.testing.assert_array_equal(got_val, values)
    assert len(buf) == 8 * len(idx) + 4


def test_gap16_escape_words_by_hand():
    v = np.ones(2, np.float32)
    words = lambda buf: np.frombuffer(buf[4 + 2 * 2:], dtype="<u2").tolist()  # noqa: E731
    assert words(GAP16.encode([3, 65537], v, 10**6)) == [3, 65534]             # gap 65534: no escape
    assert words(GAP16.encode([3, 65538], v, 10**6)) == [3, ESCAPE, 0]         # gap 65535: one escape, then 0
    assert words(GAP16.encode([0, 131070], v, 10**6)) == [0, ESCAPE, ESCAPE, 0]
    assert words(GAP16.encode([65535, 65536], v, 10**6)) == [ESCAPE, 0, 1]     # the first gap counts from 0
    assert GAP16.decode(GAP16.encode([0, 131070], v, 10**6))[0].tolist() == [0, 131070]
    assert len(GAP16.encode([], np.zeros(0, np.float32), 5)) == 4               # an empty message: the count
    assert INT32.decode(INT32.encode([], np.zeros(0, np.float32), 5))[0].size == 0


def test_float16_range_is_an_error_not_an_inf():
    ok = GAP16.decode(GAP16.encode([0, 1], np.array([65504, -65504], np.float32), 2))[1]
    assert ok.tolist() == [65504, -65504]
    for bad in (65505.0, -1e6, np.inf, np.nan):
        with pytest.raises(ValueError, match=r"values must be finite and within float16's range"):
            GAP16.encode([0, 1], np.array([1.0, bad], np.float32), 2)
        with pytest.raises(ValueError, match="float16's range"):
            GAP16.encode_values(np.array([bad], np.float32))
    big = INT32.decode(INT32.encode([0], np.array([1e30], np.float32), 1))[1]   # float32 carries it
    assert big[0] == np.float32(1e30)


def test_bad_messages_and_buffers():
    v = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="indices must be distinct"):
        GAP16.encode([4, 4], v, 10)
    with pytest.raises(ValueError, match=r"indices must be in \[0, size=10\)"):
        GAP16.encode([4, 10], v, 10)
    with pytest.raises(ValueError, match="indices must be in"):
        INT32.encode([-1, 3], v, 10)
    with pytest.raises(ValueError, match="values must be a 1-d float array as long as indices"):
        GAP16.encode([1, 2, 3], v, 10)
    with pytest.raises(ValueError, match="indices must be a 1-d array of integers"):
        INT32.encode(np.array([0.5, 1.5]), v, 10)
    buf = GAP16.encode([1, 5], v, 10)
    with pytest.raises(ValueError, match="buffer must be"):
        GAP16.decode(buf[:-2])                   # a gap word missing
    with pytest.raises(ValueError, match="buffer must be"):
        INT32.decode(INT32.encode([1, 5], v, 10)[:-1])
    with pytest.raises(ValueError, match="buffer must be at least the 4-byte count"):
        GAP16.decode(b"\x01")


def test_encoding_registry():
    assert dist.available_encodings()[:2] == ["int32+float32", "gap16+float16"]
    assert isinstance(dist.get_encoding("gap16+float16"), dist.Gap16Float16)
    with pytest.raises(ValueError, match=r"encoding must be an Encoding or one of \['int32\+float32', 'gap16"):
        dist.get_encoding("zip")
    with pytest.raises(TypeError, match="encoding must be"):
        dist.get_encoding(16)

    @dist.register_encoding("float64_test")
    class F64(dist.Int32Float32):
        value_dtype = np.dtype("<f8")

    e = dist.get_encoding("float64_test")
    assert e.decode_values(e.encode_values(np.ones(3, np.float32))).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="new encoding name"):
        dist.register_encoding("float64_test", F64)
    with pytest.raises(TypeError, match="cls must be"):
        dist.register_encoding("nope_test", dict)


# ------------------------------------------------------------------ the sparsifiers' encoding= option
def grads(n=4, d=300, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((n, d)) * scale).astype(np.float32)


def _f16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


SPARSIFIERS = [lambda e: dist.TopK(0.05, encoding=e), lambda e: dist.RandomK(0.1, seed=1, encoding=e),
               lambda e: dist.Threshold(1.5, encoding=e), lambda e: dist.DGC(0.05, momentum=0.9, encoding=e)]


@pytest.mark.parametrize("make", SPARSIFIERS)
def test_encoding_option_is_validated_and_shown(make):
    with pytest.raises(ValueError, match=r"\(\): encoding must be an Encoding or one of \['int32\+float32'"):
        make("gzip")
    c = make("gap16+float16")
    assert "encoding='gap16+float16'" in repr(c) and "encoding" not in repr(make("int32+float32"))
    assert make(dist.Gap16Float16()).encoding.name == "gap16+float16"


def test_gap16_halves_topk_messages_and_decodes_to_float16():
    g = grads(3, 5000)
    k = 250
    small = dist.TopK(k / 5000, encoding="gap16+float16").compress(g)
    big = dist.TopK(k / 5000).compress(g)
    assert list(big.nbytes) == [8 * k + 4] * 3
    assert list(small.nbytes) == [len(b) for b in small["buffers"]] == [4 * k + 4] * 3   # 5000 < 65535: no escape
    out = small.decompress()
    for i in range(3):
        np.testing.assert_array_equal(out[i], _f16(dist.topk_reference(g[i], k)))
    ex = dist.TopK(k / 5000, encoding="gap16+float16").exchange(g, dist.Network())
    assert list(ex.message_bytes) == [4 * k + 4] * 3 and list(ex.bytes_sent) == [2 * (4 * k + 4)] * 3


def test_gap16_randomk_threshold_and_dgc_bytes():
    g = grads(3, 1000)
    r = dist.RandomK(0.1, seed=2, encoding="gap16+float16").compress(g)
    assert list(r.nbytes) == [2 * 100 + 8] * 3                       # float16 values and the seed
    np.testing.assert_array_equal(r.decompress()[:, r["indices"]], _f16(g[:, r["indices"]]))
    t = dist.Threshold(2.0, encoding="gap16+float16").compress(g)
    counts = (np.abs(g) >= 2.0).sum(1)
    assert list(t.nbytes) == list(4 * counts + 4)
    np.testing.assert_array_equal(t.decompress(), _f16(np.where(np.abs(g) >= 2.0, g, 0)))
    d = dist.DGC(0.01, momentum=0.9, encoding="gap16+float16").compress(g)
    assert list(d.nbytes) == [4 * 10 + 4] * 3
    with pytest.raises(ValueError, match="float16's range"):
        dist.TopK(0.1, encoding="gap16+float16").compress(grads(2, 50, scale=1e5))


def _delivered_plus_residual(comp, steps=12, n=4, d=300):
    """Run ``steps`` exchanges with error feedback; return (sum of delivered + final residual, sum of gradients)."""
    keep = None if comp.keeps_residual else dist.ErrorFeedback(n, d)
    if comp.keeps_residual:
        comp.bind(n, dist.Layout.flat(d))
    delivered, total = np.zeros((n, d), np.float64), np.zeros((n, d), np.float64)
    for s in range(steps):
        g = grads(n, d, seed=s)
        corrected = g if keep is None else keep.compensate(g)
        sent = comp.exchange(corrected, dist.Network()).sent
        if keep is not None:
            keep.update(corrected, sent)
        delivered += sent
        total += g
    residual = comp.v if keep is None else keep.residual
    return delivered + residual, total


@pytest.mark.parametrize("make", [lambda: dist.TopK(0.03, encoding="gap16+float16"),
                                  lambda: dist.RandomK(0.05, seed=3, encoding="gap16+float16"),
                                  lambda: dist.Threshold(1.0, encoding="gap16+float16"),
                                  lambda: dist.DGC(0.03, momentum=0.0, encoding="gap16+float16")])
def test_error_feedback_keeps_what_the_decoded_message_did_not_deliver(make):
    got, want = _delivered_plus_residual(make())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)   # float32 sums of 12 steps


@pytest.mark.parametrize("make", [lambda: dist.TopK(1.0, encoding="gap16+float16"),
                                  lambda: dist.DGC(1.0, momentum=0.0, encoding="gap16+float16")])
def test_the_float16_rounding_is_fed_back(make):
    # Everything is sent, so all that stays behind is each value's float16 rounding error.
    g = grads(2, 64)
    comp = make()
    mem = None if comp.keeps_residual else dist.ErrorFeedback(2, 64)
    corrected = g if mem is None else mem.compensate(g)
    sent = comp.exchange(corrected, dist.Network()).sent
    if mem is not None:
        mem.update(corrected, sent)
    residual = comp.v if mem is None else mem.residual
    np.testing.assert_array_equal(sent, _f16(g))
    np.testing.assert_array_equal(residual, g - _f16(g))
    assert np.count_nonzero(residual) > 100


def test_trainer_with_gap16_topk_learns_and_sends_half_the_bytes():
    import prunekit as pk

    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 20)).astype(np.float32)
    y = (x[:, :3].sum(1) > 0).astype(np.int64) + 2 * (x[:, 3] > 0)
    runs = {}
    for enc in ("int32+float32", "gap16+float16"):
        t = dist.DataParallelTrainer(lambda: pk.models.mlp([20, 32, 4], seed=0),
                                     lambda ps: pk.optim.SGD(ps, lr=0.1, momentum=0.9), dist.Cluster(4),
                                     compressor=dist.TopK(0.05, encoding=enc), error_feedback=True)
        runs[enc] = t.fit((x, y), epochs=4, batch_size=64)
    k = round(0.05 * (20 * 32 + 32 + 32 * 4 + 4))
    steps = 4 * 8
    assert list(runs["int32+float32"].message_bytes) == [steps * (8 * k + 4)] * 4
    assert list(runs["gap16+float16"].message_bytes) == [steps * (4 * k + 4)] * 4
    assert runs["gap16+float16"].history["accuracy"][-1] > 0.75               # chance is 0.25
    assert abs(runs["gap16+float16"].history["accuracy"][-1] - runs["int32+float32"].history["accuracy"][-1]) < 0.05


# ------------------------------------------------------------------ in-place buffers
def test_error_feedback_updates_its_buffer_in_place_and_matches_the_copying_path():
    mem, ref = dist.ErrorFeedback(4, 300), dist.ErrorFeedback(4, 300)
    buffer = mem.residual
    comp = dist.TopK(0.05, encoding="gap16+float16")
    for s in range(4):
        g = grads(seed=s)
        corrected = mem.compensate(g)
        assert corrected is buffer                                # every worker: the residual buffer itself
        sent = comp.compress(corrected).decompress()
        mem.update(corrected, sent)
        halves = [np.array([0, 2]), np.array([1, 3])]             # the copying path, two rows at a time
        for w in halves:
            c = ref.compensate(g[w], w)
            assert c is not ref.residual
            ref.update(c, comp.compress(c).decompress(), w)
    assert mem.residual is buffer
    np.testing.assert_array_equal(mem.residual, ref.residual)


@pytest.mark.parametrize("enc", ["int32+float32", "gap16+float16"])
def test_dgc_updates_u_and_v_in_place_and_matches_the_copying_path(enc):
    full = dist.DGC(0.05, momentum=0.9, encoding=enc).bind(4, dist.Layout.flat(300))
    rows = dist.DGC(0.05, momentum=0.9, encoding=enc).bind(4, dist.Layout.flat(300))
    u, v = full.u, full.v
    for s in range(5):
        g = grads(seed=s)
        a = full.compress(g).decompress()
        b = np.zeros_like(a)
        for w in (np.array([0, 1]), np.array([2, 3])):            # as with backup workers: some rows only
            b[w] = rows.compress(g[w], workers=w).decompress()
        np.testing.assert_array_equal(a, b)
    assert full.u is u and full.v is v
    np.testing.assert_array_equal(full.u, rows.u)
    np.testing.assert_array_equal(full.v, rows.v)


def test_powersgd_residual_in_place_matches_the_copying_path():
    layout = dist.Layout([("w", (20, 30)), ("b", (30,))])
    full, rows = dist.PowerSGD(2, seed=0).bind(2, layout), dist.PowerSGD(2, seed=0).bind(2, layout)
    buffer = full.residual
    g = grads(2, 630)
    full.exchange(g, dist.Network())
    rows.exchange(g, dist.Network(), workers=np.array([1, 0]))    # not in order: the copying path
    assert full.residual is buffer
    np.testing.assert_allclose(full.residual, rows.residual[[1, 0]], rtol=1e-5, atol=1e-6)
