"""prunekit.sparse.formats: CSR, BSR, N:M and int8 containers, checked against plain NumPy."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.sparse import BSR, CSR, NM, Int8Weight


def sparse_matrix(rng, shape, density, dtype=np.float32):
    w = rng.standard_normal(shape).astype(dtype)
    return w * (rng.random(shape) < density)


shapes = st.tuples(st.integers(1, 40), st.integers(1, 70))
densities = st.sampled_from([0.0, 0.05, 0.3, 1.0])
dtypes = st.sampled_from([np.float32, np.float64])


@settings(max_examples=40)
@given(shape=shapes, density=densities, dtype=dtypes, seed=st.integers(0, 2**16))
def test_csr_round_trip_and_counts(shape, density, dtype, seed):
    w = sparse_matrix(np.random.default_rng(seed), shape, density, dtype)
    c = CSR.from_dense(w)
    np.testing.assert_array_equal(c.to_dense(), w)
    assert c.to_dense().dtype == dtype
    assert c.nnz == np.count_nonzero(w)
    assert c.density == pytest.approx(np.count_nonzero(w) / w.size)
    assert c.indices.dtype == np.uint16  # at most 65536 columns
    assert c.indptr.dtype == np.int32
    assert c.nbytes == c.data.nbytes + c.indices.nbytes + c.indptr.nbytes
    assert c.nbytes == c.nnz * (np.dtype(dtype).itemsize + 2) + 4 * (shape[0] + 1)
    # row i owns data[indptr[i]:indptr[i+1]], columns ascending, as scipy.sparse does
    for i in range(shape[0]):
        cols = c.indices[c.indptr[i]:c.indptr[i + 1]]
        np.testing.assert_array_equal(cols, np.flatnonzero(w[i]))


def test_csr_index_width_follows_the_column_count():
    w = np.zeros((2, 65537), dtype=np.float32)
    w[0, 65536] = 1.0
    w[1, 3] = 2.0
    c = CSR.from_dense(w)
    assert c.indices.dtype == np.int32  # uint16 cannot hold column 65536
    np.testing.assert_array_equal(c.to_dense(), w)
    assert CSR.from_dense(w[:, :65536]).indices.dtype == np.uint16
    assert CSR.from_dense(w[:, :10], index_dtype=np.int32).indices.dtype == np.int32
    with pytest.raises(ValueError, match="index_dtype must be"):
        CSR.from_dense(w, index_dtype=np.uint16)


def test_csr_from_non_contiguous_view():
    rng = np.random.default_rng(0)
    big = sparse_matrix(rng, (30, 40), 0.3)
    view = big[::2, 1::3]
    np.testing.assert_array_equal(CSR.from_dense(view).to_dense(), view)


def test_csr_constructor_checks_its_arrays():
    data = np.array([1.0, 2.0], dtype=np.float32)
    good = CSR(data, np.array([0, 2], dtype=np.uint16), np.array([0, 1, 2], dtype=np.int32), (2, 3))
    np.testing.assert_array_equal(good.to_dense(), [[1, 0, 0], [0, 0, 2]])
    with pytest.raises(ValueError, match="indptr must be"):
        CSR(data, np.array([0, 2], dtype=np.uint16), np.array([0, 2], dtype=np.int32), (2, 3))
    with pytest.raises(ValueError, match="indices must be"):
        CSR(data, np.array([0, 3], dtype=np.uint16), np.array([0, 1, 2], dtype=np.int32), (2, 3))
    with pytest.raises(ValueError, match="indptr must be"):
        CSR(data, np.array([0, 2], dtype=np.uint16), np.array([0, 2, 1], dtype=np.int32), (2, 3))


@settings(max_examples=30)
@given(block=st.sampled_from([(4, 4), (8, 8), (16, 16), (4, 8), (1, 2)]), nb=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       density=densities, dtype=dtypes, seed=st.integers(0, 2**16))
def test_bsr_round_trip_and_counts(block, nb, density, dtype, seed):
    rng = np.random.default_rng(seed)
    r, c = block
    tiles = rng.random(nb) < density
    w = rng.standard_normal((nb[0] * r, nb[1] * c)).astype(dtype) * np.kron(tiles, np.ones(block, bool))
    b = BSR.from_dense(w, block)
    np.testing.assert_array_equal(b.to_dense(), w)
    assert b.block_size == block
    kept = np.any(w.reshape(nb[0], r, nb[1], c) != 0, axis=(1, 3))
    assert b.nnzb == kept.sum()
    assert b.nnz == kept.sum() * r * c
    assert b.blocks.shape == (b.nnzb, r, c)
    assert b.nbytes == b.blocks_t.nbytes + b.indices.nbytes + b.indptr.nbytes


def test_bsr_block_size_must_divide_the_shape():
    w = np.ones((12, 20), dtype=np.float32)
    with pytest.raises(ValueError, match=r"block_size must be a block size dividing the matrix shape \(12, 20\), got 8."):
        BSR.from_dense(w, 8)
    with pytest.raises(ValueError, match="block_size must be"):
        BSR.from_dense(w, (4, 8))
    with pytest.raises(ValueError, match="block_size must be"):
        BSR.from_dense(w, 0)
    with pytest.raises(TypeError, match="block_size must be"):
        BSR.from_dense(w, 2.5)
    assert BSR.from_dense(w, (4, 5)).block_size == (4, 5)


def nm_matrix(rng, rows, groups, n, m, dtype=np.float32):
    w = rng.standard_normal((rows, groups, m)).astype(dtype)
    drop = np.argsort(rng.random(w.shape), axis=2)[:, :, n:]
    np.put_along_axis(w, drop, 0, axis=2)
    return w.reshape(rows, groups * m)


@settings(max_examples=30)
@given(nm=st.sampled_from([(2, 4), (1, 4), (2, 8), (4, 8), (3, 4), (1, 1)]), rows=st.integers(1, 20),
       groups=st.integers(1, 12), dtype=dtypes, sparser=st.booleans(), seed=st.integers(0, 2**16))
def test_nm_round_trip(nm, rows, groups, dtype, sparser, seed):
    n, m = nm
    rng = np.random.default_rng(seed)
    w = nm_matrix(rng, rows, groups, n, m, dtype)
    if sparser:  # fewer than n non-zeros in some groups is allowed (padding slots)
        w = w * (rng.random(w.shape) < 0.5)
    f = NM.from_dense(w, n, m)
    np.testing.assert_array_equal(f.to_dense(), w)
    assert f.values.shape == (rows, groups * n) and f.positions.dtype == np.uint8
    assert f.nnz == rows * groups * n
    assert f.nbytes == f.values.nbytes + f.positions.nbytes


def test_nm_refuses_an_array_without_the_pattern():
    w = np.zeros((3, 8), dtype=np.float32)
    w[1, 4:7] = 1.0  # three non-zeros in one group of 4
    with pytest.raises(ValueError, match=r"a must be an array with at most 2 non-zeros.*row 1, columns 4..7"):
        NM.from_dense(w, 2, 4)
    with pytest.raises(ValueError, match="m must be"):
        NM.from_dense(np.zeros((2, 6), np.float32), 2, 4)
    with pytest.raises(ValueError, match="n must be"):
        NM.from_dense(np.zeros((2, 8), np.float32), 5, 4)


@settings(max_examples=30)
@given(shape=shapes, density=densities, dtype=dtypes, seed=st.integers(0, 2**16))
def test_int8_weight_per_row_symmetric(shape, density, dtype, seed):
    w = sparse_matrix(np.random.default_rng(seed), shape, density, dtype)
    q = Int8Weight.from_dense(w)
    assert q.q.dtype == np.int8 and q.q.min() >= -127
    amax = np.abs(w).max(axis=1)
    np.testing.assert_allclose(q.scales, amax / 127, rtol=1e-6)
    # every weight within half a quantization step of its row
    err = np.abs(q.to_dense().astype(np.float64) - w)
    assert np.all(err <= q.scales[:, None] * 0.5 * (1 + 1e-5) + 1e-30)
    assert q.to_dense().dtype == dtype
    np.testing.assert_array_equal(q.row_sums, q.q.astype(np.int64).sum(axis=1))
    assert q.nbytes == w.size + 4 * shape[0]  # one byte per weight plus a float32 scale per row
    assert q.nnz == np.count_nonzero(q.q)


def test_int8_zero_rows_stay_zero():
    w = np.zeros((3, 5), np.float32)
    w[1] = [1, -2, 3, 0, 0.5]
    q = Int8Weight.from_dense(w)
    assert q.scales[0] == 0 and np.all(q.q[0] == 0)
    np.testing.assert_array_equal(q.q[1], [42, -85, 127, 0, 21])
    assert np.all(np.isfinite(q.to_dense()))


@pytest.mark.parametrize("make", [CSR.from_dense, lambda a: BSR.from_dense(a, 1), lambda a: NM.from_dense(a, 1, 1),
                                  Int8Weight.from_dense])
def test_bad_weight_arrays_name_the_argument(make):
    with pytest.raises(TypeError, match=r"a must be an array of dtype float32 or float64, got int64."):
        make(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="a must be an array with ndim 2"):
        make(np.ones(4, dtype=np.float32))
    with pytest.raises(TypeError, match="a must be a numpy.ndarray"):
        make([[1.0, 2.0]])


def test_repr_names_format_and_size():
    w = np.eye(16, dtype=np.float32)
    assert repr(CSR.from_dense(w)).startswith("CSR(shape=(16, 16), nnz=16, density=0.062")
    assert "block_size=(4, 4)" in repr(BSR.from_dense(w, 4))
    assert "pattern=2:4" in repr(NM.from_dense(w, 2, 4))
    assert "int8" in repr(Int8Weight.from_dense(w))
