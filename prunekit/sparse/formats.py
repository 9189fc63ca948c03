"""Sparse and quantized weight containers: CSR, BSR, N:M and int8.

Each container is built from a dense (pruned) 2-D weight matrix of shape
``(out_features, in_features)`` with ``from_dense`` and turned back with
``to_dense``. They all answer the same questions a learner asks about a
compressed layer:

* ``nnz``      how many weights are stored (non-zeros; for blocks, every entry of a kept block)
* ``nbytes``   how many bytes the arrays take (this is what a batch-1 kernel must read)
* ``density``  ``nnz / (rows * cols)``
* ``shape``    the dense shape

Layouts (all arrays C-contiguous):

CSR (compressed sparse row): ``data[k]`` is the k-th non-zero in row-major order,
``indices[k]`` its column, and row ``i`` owns ``data[indptr[i]:indptr[i+1]]``.
Column indices use ``uint16`` when the matrix has at most 65536 columns
(2 bytes per non-zero instead of 4), ``int32`` otherwise.

BSR (block sparse row): the matrix is cut into ``R x C`` tiles; only tiles that
hold a non-zero are kept. ``blocks[k]`` is the k-th kept tile (shape ``(R, C)``),
``indices[k]`` its block column, ``indptr`` as in CSR but over block rows.
One index per tile instead of one per weight; every FLOP in a tile is a dense
one, which is what a SIMD unit wants.

N:M: every group of ``m`` consecutive weights in a row holds at most ``n``
non-zeros (NVIDIA's 2:4). ``values`` has shape ``(rows, cols // m * n)`` and
``positions`` (uint8) says where in its group each value sits.

Int8Weight: symmetric per-row quantization ``w ~= scale[i] * q[i, j]`` with
``q`` in [-127, 127] (int8) and ``scale[i] = max_j |w[i, j]| / 127``.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_array, check_int, fail

__all__ = ["CSR", "BSR", "NM", "Int8Weight", "SparseFormat", "Workspace"]

_FLOAT_DTYPES = (np.float32, np.float64)


def _check_weight(name, a):
    """A 2-D float32/float64 ndarray (any memory layout)."""
    check_array(name, a, ndim=2)
    if a.dtype not in _FLOAT_DTYPES:
        fail(name, "an array of dtype float32 or float64", str(a.dtype), TypeError)
    return a


def _index_dtype(n):
    """Narrowest unsigned/signed index type able to hold 0..n-1."""
    return np.uint16 if n <= 65536 else np.int32


def _ptr_dtype(n):
    return np.int32 if n < 2**31 else np.int64


class Workspace:
    """Scratch buffers and prepared kernel calls kept with one weight matrix.

    The hot paths of :mod:`prunekit.sparse.kernels` allocate nothing: buffers
    (a transposed input, int8 activations, accumulators) are made on first use
    for a given key (batch size, dtype, kernel) and reused. ``packed`` is the
    int8 SIMD panel layout of an :class:`Int8Weight`; ``gemv`` its prepared
    batch-1 call (see ``kernels.int8_linear``). Not thread-safe: one weight's
    buffers serve one call at a time.
    """

    __slots__ = ("_buffers", "packed", "gemv")

    def __init__(self):
        self._buffers = {}
        self.packed = None
        self.gemv = None

    def get(self, key, make):
        """The buffer(s) stored under ``key``, made by ``make()`` the first time."""
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = make()
        return buf

    def keys(self):
        return list(self._buffers)

    def __repr__(self):
        return f"Workspace({len(self._buffers)} buffers, packed={self.packed is not None}, gemv={self.gemv is not None})"


class SparseFormat:
    """Shared behaviour: shape, nnz, density, nbytes, repr, linear(); a :class:`Workspace` for the kernels."""

    shape: tuple

    def __new__(cls, *args, **kwargs):
        # here rather than in each constructor: ``from_dense`` builds objects with ``cls.__new__(cls)``
        self = super().__new__(cls)
        self.workspace = Workspace()
        return self

    @property
    def nnz(self) -> int:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        raise NotImplementedError

    @property
    def density(self) -> float:
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the same matrix stored dense in float32 (the usual baseline)."""
        return 4 * self.shape[0] * self.shape[1]

    def linear(self, x, bias=None, out=None):
        """``x @ W.T (+ bias)`` for ``x`` of shape ``(in,)`` or ``(B, in)`` (numba kernels, or their NumPy
        references under the ``"numpy"`` backend)."""
        from . import kernels

        return kernels.linear(self, x, bias=bias, out=out)

    def _repr_extra(self):
        return ""

    def __repr__(self):
        extra = self._repr_extra()
        return (
            f"{type(self).__name__}(shape={self.shape}, nnz={self.nnz}, "
            f"density={self.density:.3f}, nbytes={self.nbytes}{extra})"
        )


# --------------------------------------------------------------------------- CSR


class CSR(SparseFormat):
    """Compressed sparse row matrix (see module docstring)."""

    def __init__(self, data, indices, indptr, shape):
        check_array("data", data, ndim=1)
        if data.dtype not in _FLOAT_DTYPES:
            fail("data", "an array of dtype float32 or float64", str(data.dtype), TypeError)
        check_array("indices", indices, ndim=1, dtype_kind="iu")
        check_array("indptr", indptr, ndim=1, dtype_kind="iu")
        if not (isinstance(shape, tuple) and len(shape) == 2):
            fail("shape", "a tuple of two ints", shape, TypeError)
        n_rows = check_int("shape[0]", shape[0], low=0)
        n_cols = check_int("shape[1]", shape[1], low=0)
        if indptr.shape[0] != n_rows + 1:
            fail("indptr", f"an array of length shape[0] + 1 = {n_rows + 1}", f"length {indptr.shape[0]}")
        if indices.shape[0] != data.shape[0]:
            fail("indices", f"an array of the same length as 'data' ({data.shape[0]})", f"length {indices.shape[0]}")
        if indptr[0] != 0 or indptr[-1] != data.shape[0] or np.any(np.diff(indptr.astype(np.int64)) < 0):
            fail("indptr", f"non-decreasing, starting at 0 and ending at nnz = {data.shape[0]}", indptr)
        if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
            fail("indices", f"column indices in [0, {n_cols})", f"range [{indices.min()}, {indices.max()}]")
        self.data = np.ascontiguousarray(data)
        self.indices = np.ascontiguousarray(indices)
        self.indptr = np.ascontiguousarray(indptr)
        self.shape = (int(n_rows), int(n_cols))

    @classmethod
    def from_dense(cls, a, index_dtype=None):
        """Keep the non-zeros of the 2-D array ``a`` (float32 or float64)."""
        _check_weight("a", a)
        n_rows, n_cols = a.shape
        if index_dtype is None:
            index_dtype = _index_dtype(n_cols)
        index_dtype = np.dtype(index_dtype)
        if index_dtype not in (np.dtype(np.uint16), np.dtype(np.int32), np.dtype(np.int64)):
            fail("index_dtype", "one of uint16, int32, int64", str(index_dtype), TypeError)
        if index_dtype == np.uint16 and n_cols > 65536:
            fail("index_dtype", f"wide enough for {n_cols} columns (uint16 holds 65536)", "uint16")
        rows, cols = np.nonzero(a)
        counts = np.bincount(rows, minlength=n_rows)
        indptr = np.zeros(n_rows + 1, dtype=_ptr_dtype(rows.size))
        np.cumsum(counts, out=indptr[1:])
        self = cls.__new__(cls)
        self.data = np.ascontiguousarray(a[rows, cols])
        self.indices = cols.astype(index_dtype)
        self.indptr = indptr
        self.shape = (int(n_rows), int(n_cols))
        return self

    def to_dense(self):
        out = np.zeros(self.shape, dtype=self.data.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices] = self.data
        return out

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def nnz(self):
        return int(self.data.shape[0])

    @property
    def nbytes(self):
        return int(self.data.nbytes + self.indices.nbytes + self.indptr.nbytes)

    def _repr_extra(self):
        return f", dtype={self.data.dtype}, index_dtype={self.indices.dtype}"


# --------------------------------------------------------------------------- BSR


def _parse_block(block_size):
    if isinstance(block_size, (tuple, list)) and len(block_size) == 2:
        r, c = block_size
    else:
        r = c = block_size
    expected = "a positive int or a pair of positive ints, e.g. 16 or (16, 16)"
    for v in (r, c):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            fail("block_size", expected, block_size, TypeError)
        if v < 1:
            fail("block_size", expected, block_size)
    return int(r), int(c)


class BSR(SparseFormat):
    """Block sparse row matrix with ``R x C`` blocks (see module docstring).

    ``blocks`` has shape ``(nnzb, R, C)``. It is a transposed view of a
    contiguous ``(nnzb, C, R)`` buffer (``blocks_t``): the batch-1 kernel walks
    a block column by column and wants the R outputs of one column side by side.
    """

    def __init__(self, blocks, indices, indptr, shape):
        check_array("blocks", blocks, ndim=3)
        if blocks.dtype not in _FLOAT_DTYPES:
            fail("blocks", "an array of dtype float32 or float64", str(blocks.dtype), TypeError)
        check_array("indices", indices, ndim=1, dtype_kind="iu")
        check_array("indptr", indptr, ndim=1, dtype_kind="iu")
        if not (isinstance(shape, tuple) and len(shape) == 2):
            fail("shape", "a tuple of two ints", shape, TypeError)
        r, c = blocks.shape[1], blocks.shape[2]
        _check_divides(shape, (r, c))
        nbr, nbc = shape[0] // r, shape[1] // c
        if indptr.shape[0] != nbr + 1:
            fail("indptr", f"an array of length n_block_rows + 1 = {nbr + 1}", f"length {indptr.shape[0]}")
        if indices.shape[0] != blocks.shape[0]:
            fail("indices", f"one block column per block ({blocks.shape[0]})", f"length {indices.shape[0]}")
        if indptr[0] != 0 or indptr[-1] != blocks.shape[0] or np.any(np.diff(indptr.astype(np.int64)) < 0):
            fail("indptr", f"non-decreasing, from 0 to the number of blocks {blocks.shape[0]}", indptr)
        if indices.size and (indices.min() < 0 or indices.max() >= nbc):
            fail("indices", f"block columns in [0, {nbc})", f"range [{indices.min()}, {indices.max()}]")
        self.blocks_t = np.ascontiguousarray(blocks.transpose(0, 2, 1))
        self.indices = np.ascontiguousarray(indices)
        self.indptr = np.ascontiguousarray(indptr)
        self.shape = (int(shape[0]), int(shape[1]))
        self.block_size = (int(r), int(c))

    @classmethod
    def from_dense(cls, a, block_size=16):
        """Keep every ``R x C`` tile of ``a`` that holds at least one non-zero.

        ``block_size`` is an int (square tiles) or a pair ``(R, C)``; both must
        divide the matrix shape.
        """
        _check_weight("a", a)
        r, c = _parse_block(block_size)
        _check_divides(a.shape, (r, c), name="block_size", value=block_size)
        n_rows, n_cols = a.shape
        nbr, nbc = n_rows // r, n_cols // c
        tiles = a.reshape(nbr, r, nbc, c).transpose(0, 2, 1, 3)  # (nbr, nbc, r, c)
        keep = np.any(tiles != 0, axis=(2, 3))
        brow, bcol = np.nonzero(keep)
        counts = np.bincount(brow, minlength=nbr)
        indptr = np.zeros(nbr + 1, dtype=_ptr_dtype(brow.size))
        np.cumsum(counts, out=indptr[1:])
        self = cls.__new__(cls)
        # (nnzb, c, r): column-major tiles, see class docstring
        self.blocks_t = np.ascontiguousarray(tiles[brow, bcol].transpose(0, 2, 1))
        self.indices = bcol.astype(_index_dtype(nbc))
        self.indptr = indptr
        self.shape = (int(n_rows), int(n_cols))
        self.block_size = (r, c)
        return self

    @property
    def blocks(self):
        """The kept tiles, shape ``(nnzb, R, C)`` (a view)."""
        return self.blocks_t.transpose(0, 2, 1)

    def to_dense(self):
        r, c = self.block_size
        nbr, nbc = self.shape[0] // r, self.shape[1] // c
        tiles = np.zeros((nbr, nbc, r, c), dtype=self.blocks_t.dtype)
        brow = np.repeat(np.arange(nbr), np.diff(self.indptr))
        tiles[brow, self.indices] = self.blocks
        return np.ascontiguousarray(tiles.transpose(0, 2, 1, 3).reshape(self.shape))

    @property
    def dtype(self):
        return self.blocks_t.dtype

    @property
    def nnzb(self):
        """Number of stored blocks."""
        return int(self.blocks_t.shape[0])

    @property
    def nnz(self):
        """Stored weights (every entry of a kept block, zeros included)."""
        return int(self.blocks_t.size)

    @property
    def nbytes(self):
        return int(self.blocks_t.nbytes + self.indices.nbytes + self.indptr.nbytes)

    def _repr_extra(self):
        return f", block_size={self.block_size}, nnzb={self.nnzb}, dtype={self.dtype}"


def _check_divides(shape, block, name="block_size", value=None):
    r, c = block
    if shape[0] % r or shape[1] % c:
        fail(name, f"a block size dividing the matrix shape {tuple(shape)}",
             value if value is not None else (r, c))


# --------------------------------------------------------------------------- N:M


class NM(SparseFormat):
    """N:M structured sparse matrix: at most ``n`` non-zeros in every ``m`` consecutive weights of a row."""

    def __init__(self, values, positions, shape, n, m):
        check_int("n", n, low=1)
        check_int("m", m, low=1, high=255)
        if n > m:
            fail("n", f"an int no larger than m = {m}", n)
        check_array("values", values, ndim=2)
        if values.dtype not in _FLOAT_DTYPES:
            fail("values", "an array of dtype float32 or float64", str(values.dtype), TypeError)
        check_array("positions", positions, ndim=2, dtype_kind="u")
        if shape[1] % m:
            fail("m", f"a group size dividing the number of columns {shape[1]}", m)
        want = (shape[0], shape[1] // m * n)
        if values.shape != want or positions.shape != want:
            fail("values", f"arrays 'values' and 'positions' of shape {want}",
                 f"shapes {values.shape} and {positions.shape}")
        if positions.size and positions.max() >= m:
            fail("positions", f"positions in [0, {m})", int(positions.max()))
        self.values = np.ascontiguousarray(values)
        self.positions = np.ascontiguousarray(positions.astype(np.uint8))
        self.shape = (int(shape[0]), int(shape[1]))
        self.n, self.m = int(n), int(m)

    @classmethod
    def from_dense(cls, a, n=2, m=4):
        """Pack ``a``, which must already have the N:M pattern (e.g. from N:M pruning)."""
        _check_weight("a", a)
        check_int("n", n, low=1)
        check_int("m", m, low=1, high=255)
        if n > m:
            fail("n", f"an int no larger than m = {m}", n)
        rows, cols = a.shape
        if cols % m:
            fail("m", f"a group size dividing the number of columns {cols}", m)
        groups = a.reshape(rows, cols // m, m)
        nz = groups != 0
        per_group = nz.sum(axis=2)
        if per_group.size and per_group.max() > n:
            r, g = np.unravel_index(np.argmax(per_group), per_group.shape)
            fail("a", f"an array with at most {n} non-zeros in every group of {m} consecutive "
                 f"weights of a row ({n}:{m} pattern)",
                 f"{int(per_group[r, g])} non-zeros in row {r}, columns {g * m}..{g * m + m - 1}")
        # stable sort puts the non-zeros of each group first, in column order; the
        # first n slots are kept (padding slots hold a zero value)
        order = np.argsort(~nz, axis=2, kind="stable")[:, :, :n]
        vals = np.take_along_axis(groups, order, axis=2)
        self = cls.__new__(cls)
        self.values = np.ascontiguousarray(vals.reshape(rows, cols // m * n))
        self.positions = np.ascontiguousarray(order.reshape(rows, cols // m * n).astype(np.uint8))
        self.shape = (int(rows), int(cols))
        self.n, self.m = int(n), int(m)
        return self

    def to_dense(self):
        rows, cols = self.shape
        g = cols // self.m
        out = np.zeros((rows, g, self.m), dtype=self.values.dtype)
        pos = self.positions.reshape(rows, g, self.n).astype(np.intp)
        vals = self.values.reshape(rows, g, self.n)
        # add (not assign): should two slots of a group name the same position
        # (possible when built by hand), their values sum instead of one being lost
        r_idx = np.arange(rows)[:, None, None]
        g_idx = np.arange(g)[None, :, None]
        np.add.at(out, (r_idx, g_idx, pos), vals)
        return out.reshape(rows, cols)

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def nnz(self):
        """Stored slots (``rows * cols * n / m``; padding slots included)."""
        return int(self.values.size)

    @property
    def nbytes(self):
        return int(self.values.nbytes + self.positions.nbytes)

    def _repr_extra(self):
        return f", pattern={self.n}:{self.m}, dtype={self.dtype}"


# --------------------------------------------------------------------------- int8


class Int8Weight(SparseFormat):
    """Per-row symmetric int8 weights: ``w[i, j] ~= scales[i] * q[i, j]``, ``q`` in [-127, 127].

    ``row_sums[i] = sum_j q[i, j]`` (int32) is kept for the int8 x uint8 kernel,
    which shifts activations by +128 and subtracts ``128 * row_sums`` afterwards.
    """

    def __init__(self, q, scales, dtype=np.float32):
        check_array("q", q, ndim=2)
        if q.dtype != np.int8:
            fail("q", "an array of dtype int8", str(q.dtype), TypeError)
        check_array("scales", scales, ndim=1, dtype_kind="f")
        if scales.shape[0] != q.shape[0]:
            fail("scales", f"one scale per row ({q.shape[0]})", f"length {scales.shape[0]}")
        if q.size and q.min() < -127:
            fail("q", "int8 values in [-127, 127] (symmetric; -128 is not used)", int(q.min()))
        self.q = np.ascontiguousarray(q)
        self.scales = np.ascontiguousarray(scales, dtype=np.float32)
        self.shape = (int(q.shape[0]), int(q.shape[1]))
        self.out_dtype = np.dtype(dtype)
        self._finish()

    def _finish(self):
        self.row_sums = self.q.sum(axis=1, dtype=np.int32)

    @classmethod
    def from_dense(cls, a):
        """Quantize each row of ``a`` with scale ``max |row| / 127`` (round to nearest, ties to even)."""
        _check_weight("a", a)
        amax = np.abs(a).max(axis=1) if a.shape[1] else np.zeros(a.shape[0], a.dtype)
        scales = (amax / 127.0).astype(np.float32)
        safe = np.where(scales > 0, scales, 1.0).astype(a.dtype)
        q = np.clip(np.rint(a / safe[:, None]), -127, 127).astype(np.int8)
        self = cls.__new__(cls)
        self.q = np.ascontiguousarray(q)
        self.scales = scales
        self.shape = (int(a.shape[0]), int(a.shape[1]))
        self.out_dtype = a.dtype
        self._finish()
        return self

    def to_dense(self):
        return (self.q.astype(np.float32) * self.scales[:, None]).astype(self.out_dtype)

    @property
    def dtype(self):
        return self.out_dtype

    @property
    def nnz(self):
        return int(np.count_nonzero(self.q))

    @property
    def nbytes(self):
        return int(self.q.nbytes + self.scales.nbytes)

    def _repr_extra(self):
        return ", dtype=int8, scales=per-row"
