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
