"""numba kernels for sparse and int8 layers, each next to a plain NumPy reference.

Every kernel computes what a ``Linear`` layer computes, ``y = x @ W.T + b``,
with ``W`` of shape ``(out, in)`` stored in one of the formats of
:mod:`prunekit.sparse.formats`. The ``*_reference`` functions compute the same
thing with NumPy only; the tests hold each kernel against its reference.

Why these kernels look the way they do
--------------------------------------
* Batch 1 (``x`` is one vector) is *memory-bound*: each weight is read once
  and used for one multiply-add. Dense float32 reads 4 bytes per weight; CSR
  at density ``d`` reads ``d * (4 + 2)`` bytes per weight with uint16 column
  indices, so its best speed-up is ``4 / (6 d) = 1 / (1.5 d)``
  (``1 / (2 d)`` with int32 indices).
* To get near that limit the row loop must not be the bottleneck. The scalar
  kernels here keep 8 partial sums (so the CPU is not waiting on one chain of
  dependent additions); for float32 the kernels of :mod:`prunekit.sparse._simd`
  go further with 16-lane gathers, 2-3x faster again.
* Batch B > 1: each weight is used B times, the work becomes compute-bound.
  We transpose ``x`` once to ``xt`` (shape ``(in, B)``) so that one weight
  ``w[i, j]`` multiplies a *contiguous* row ``xt[j, :]``: the inner loop over
  the batch is a plain SIMD loop (``acc[:] += w * xt[j, :]``).
* int8: quantize x per row, multiply int8 x int8 into int32 sums, dequantize.
  It beats float32 only with int8 dot-product instructions (AVX-512 VNNI, or
  the AVX2 sign trick: :mod:`prunekit.sparse._int8_simd`); the portable kernel
  here is the reference design and the fallback.
* ``fastmath`` stays off: results do not depend on how LLVM feels like
  re-associating sums (partial sums are explicit, so the summation order is
  fixed and the same on every run), and multiply and add are not fused.
* Starting threads costs microseconds; products smaller than
  ``prunekit._jit.PARALLEL_MIN_WORK`` multiply-adds run on one thread: every
  public op calls ``kernel.for_work(work)`` (the one serial-vs-parallel idiom of
  prunekit), which is the parallel kernel or its single-thread twin, through
  :func:`_for_work`, which also takes the twin when no core is free (below).
* A parallel kernel needs every thread it starts: when another process holds a
  core, the thread placed there waits for the scheduler (up to milliseconds) and
  the whole product waits for it. Measured on the 2-core machine (shared, load
  5-11), parallel vs serial twin, medians of 5 interleaved runs of 60 calls, with
  ``taskset -c 1 python -c "while 1: pass"`` running: CSR 1024 x 1024 at 90%,
  batch 1, 1.2-1.9 ms on two threads against 37-54 us on one; batch 16,
  1.7-2.5 ms against 0.12 ms; 4096 x 4096, batch 1, 0.3-4.6 ms against 0.6-0.7 ms.
  Fewer threads per call (``numba.set_num_threads``) would need the same "is a
  core free?" test and is per-thread state, so the rule is simply: parallel only
  while a core is free (:class:`_FreeCores`, which reads the kernel's count of
  running tasks, ours taken off, at most every 50 ms). The price, when other
  processes leave no core free but would not have stalled us: 1024 x 1024 at
  batch 1 ran in 37 us instead of 21 us.
* Hot paths do not allocate scratch: pass ``out=`` to reuse an output buffer;
  scratch buffers live in the weight's :class:`~prunekit.sparse.formats.Workspace`.
* Backends (:mod:`prunekit._backend`): under ``"numpy"`` every public op here
  runs its ``*_reference`` and numba is never imported (the SIMD modules import
  it, so they are not even loaded). int8 results are bit-identical between the
  backends (integer sums, then the same float32 operations in the same order);
  float results agree to round-off (the kernels fix their own summation order).

Kernels are compiled lazily (``prunekit._jit.njit``) on their first call;
:func:`prunekit.sparse.warmup` compiles them ahead for float32.
"""
from __future__ import annotations

import os
import platform
import time
import warnings

import numpy as np

from .. import _backend, _jit
from .._jit import njit
from .._validate import check_array, check_int, fail
from .formats import BSR, CSR, NM, Int8Weight, SparseFormat

prange = range  # swapped for numba.prange when a parallel kernel is compiled

# The ``*_rows`` kernels are compiled with parallel=True although they have no
# prange: numba's parallel pipeline then drops the reference-count updates that
# a plain @njit does for every row (atomic operations, ~10 ns each; measured 2-3x
# slower on LeNet-sized layers). numba warns that nothing was parallelized; for
# our kernels that is the intent, so that one warning is silenced (ours only).
warnings.filterwarnings(
    "ignore", message=r"(?s).*parallel=True' was specified but no transformation.*prunekit[/\\]sparse[/\\]")

__all__ = [
    "linear",
    "csr_spmv", "csr_spmm", "bsr_spmm", "nm_spmm", "int8_linear",
    "csr_spmv_reference", "csr_spmm_reference", "bsr_spmm_reference", "nm_spmm_reference",
    "int8_linear_reference", "quantize_rows_reference", "int8_matmul_int32_reference",
    "int8_matmul_int32", "quantize_rows", "has_vnni", "int8_kernels", "fused_chain_reference",
]

ROWS_PER_TASK = 16  # output rows handed to one thread at a time in the batched kernels
CHUNK = 64  # output rows per task in the batch-1 kernels


# =========================================================================== serial or parallel


class _FreeCores:
    """Is a core free for our worker threads right now? (Linux: ``/proc``; elsewhere: assume so.)

    The fourth field of ``/proc/loadavg`` counts the tasks running or ready to run at
    this instant, machine-wide; our own running threads (``/proc/self/task``: the
    caller, and workers still spinning after the previous kernel) are taken off, so
    what is left is other processes. A core is free for our workers when those leave
    at least two of the cores this process may use (one for the caller, one more).
    Read at most every ``interval`` seconds (a few tens of microseconds per read), so
    the answer follows the machine within 50 ms.
    """

    def __init__(self, interval=0.05):
        self.interval = interval
        self._checked = -float("inf")
        self._free = True
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            self._free = self._read()
        return self._free

    def _read(self) -> bool:
        if self.cores < 2:
            return False
        others = self._running_elsewhere()
        return True if others is None else others <= self.cores - 2

    @staticmethod
    def _running_elsewhere(proc="/proc"):
        """Tasks of other processes running or runnable right now, or None where ``/proc`` does not say."""
        try:
            with open(f"{proc}/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            tids = os.listdir(f"{proc}/self/task")
        except (OSError, ValueError, IndexError):
            return None
        own = 0
        for tid in tids:
            try:
                with open(f"{proc}/self/task/{tid}/stat") as f:
                    own += f.read().rsplit(")", 1)[1].split()[0] == "R"
            except (OSError, IndexError):  # a thread that just ended
                pass
        return max(running - own, 0)


_free_cores = _FreeCores()


def _for_work(kernel, work):
    """``kernel.for_work(work)``: the parallel kernel for ``work >= _jit.PARALLEL_MIN_WORK`` multiply-adds, its
    single-thread twin below; and the twin too while no core is free (see the module docstring)."""
    chosen = kernel.for_work(work)
    if chosen is kernel and kernel.options.get("parallel") and not _free_cores():
        return kernel.serial
    return chosen


# =========================================================================== helpers


@njit
def _row_dot(start, stop, indices, data, x):
    """sum_k data[k] * x[indices[k]] for k in [start, stop), with 8 partial sums.

    Eight independent partial sums let the CPU overlap eight multiply-adds
    instead of waiting ~4 cycles for each addition of a single running sum.
    The order of the additions is fixed, so the result is deterministic.
    ``k`` is unsigned: numba then skips its negative-index wraparound test on
    every access (measured 1.3-2x faster on short rows, same results).
    """
    s0 = x.dtype.type(0)
    s1 = s0
    s2 = s0
    s3 = s0
    s4 = s0
    s5 = s0
    s6 = s0
    s7 = s0
    one = np.uint64(1)
    k = np.uint64(start)
    end = np.uint64(stop)
    while k + np.uint64(8) <= end:
        s0 += data[k] * x[indices[k]]
        s1 += data[k + one] * x[indices[k + one]]
        s2 += data[k + np.uint64(2)] * x[indices[k + np.uint64(2)]]
        s3 += data[k + np.uint64(3)] * x[indices[k + np.uint64(3)]]
        s4 += data[k + np.uint64(4)] * x[indices[k + np.uint64(4)]]
        s5 += data[k + np.uint64(5)] * x[indices[k + np.uint64(5)]]
        s6 += data[k + np.uint64(6)] * x[indices[k + np.uint64(6)]]
        s7 += data[k + np.uint64(7)] * x[indices[k + np.uint64(7)]]
        k += np.uint64(8)
    while k < end:
        s0 += data[k] * x[indices[k]]
        k += one
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(parallel=True)
def transpose_kernel(x, xt):
    """xt[j, b] = x[b, j], in tiles of 64 columns (one tile per task)."""
    n_b, n = x.shape
    for t in prange((n + 63) // 64):
        j0 = t * 64
        j1 = min(j0 + 64, n)
        for b in range(n_b):
            row = x[b]
            for j in range(j0, j1):
                xt[j, b] = row[j]


# =========================================================================== CSR


def csr_spmv_reference(data, indices, indptr, shape, x, bias=None):
    """NumPy reference: scatter the non-zeros into a dense matrix, then ``W @ x (+ b)``."""
    w = np.zeros(shape, dtype=np.result_type(data, x))
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    w[rows, indices] = data
    y = w @ x
    return y if bias is None else y + bias


def csr_spmm_reference(data, indices, indptr, shape, x, bias=None):
    """NumPy reference for the batched product ``x @ W.T (+ b)``, ``x`` of shape ``(B, in)``."""
    w = np.zeros(shape, dtype=np.result_type(data, x))
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    w[rows, indices] = data
    y = x @ w.T
    return y if bias is None else y + bias


@njit(parallel=True)
def csr_spmv_rows(r0, r1, indptr, indices, data, x, bias, y):
    """y[i] = sum over row i of data[k] * x[indices[k]]  (+ bias[i] if bias is not empty), r0 <= i < r1."""
    has_bias = bias.shape[0] > 0
    for i in range(r0, r1):
        s = _row_dot(indptr[i], indptr[i + 1], indices, data, x)
        if has_bias:
            s += bias[i]
        y[i] = s


@njit(parallel=True)
def csr_spmv_kernel(indptr, indices, data, x, bias, y):
    """All rows of :func:`csr_spmv_rows`, chunks of CHUNK rows split over the threads."""
    n = y.shape[0]
    for t in prange((n + CHUNK - 1) // CHUNK):
        csr_spmv_rows(t * CHUNK, min(t * CHUNK + CHUNK, n), indptr, indices, data, x, bias, y)


@njit(inline="always")
def _row_times_xt(start, stop, cols, vals, xt, acc):
    """acc[b] += sum_{start <= k < stop} vals[k] * xt[cols[k], b] over the batch b, two non-zeros per step
    (half the loads and stores of ``acc``)."""
    n_b = acc.shape[0]
    k = start
    while k + 2 <= stop:
        v0 = vals[k]
        v1 = vals[k + 1]
        x0 = xt[cols[k]]
        x1 = xt[cols[k + 1]]
        for b in range(n_b):
            acc[b] += v0 * x0[b] + v1 * x1[b]
        k += 2
    if k < stop:
        v0 = vals[k]
        x0 = xt[cols[k]]
        for b in range(n_b):
            acc[b] += v0 * x0[b]


@njit(inline="always")
def _store_tile(tile, r0, r1, bias, y):
    """y[b, r0:r1] = tile (rows r0..r1, batch along the second axis) transposed, + bias."""
    has_bias = bias.shape[0] > 0
    for b in range(y.shape[0]):
        yb = y[b]
        for i in range(r0, r1):
            s = tile[i - r0, b]
            if has_bias:
                s += bias[i]
            yb[i] = s


@njit(inline="always")
def nm_columns(p, n, m, cols):
    """cols[s] = absolute column of slot s of an N:M row: group * m + position (counters, no division)."""
    g = 0
    t_in_group = 0
    for s in range(cols.shape[0]):
        cols[s] = g + p[s]
        t_in_group += 1
        if t_in_group == n:
            t_in_group = 0
            g += m


@njit(parallel=True)
def csr_spmm_rows(r0, r1, indptr, indices, data, xt, bias, y):
    """y[b, i] = sum over row i of data[k] * xt[indices[k], b]  (+ bias[i]), r0 <= i < r1.

    ``xt`` is x transposed, shape ``(in, B)``: the inner loop runs over the
    batch, contiguous in memory, and LLVM vectorizes it. The rows go into a
    (rows, B) tile, two non-zeros per step (half the loads and stores of the
    tile), then the tile is written transposed into y.
    """
    tile = np.zeros((r1 - r0, y.shape[0]), dtype=y.dtype)
    for i in range(r0, r1):
        _row_times_xt(indptr[i], indptr[i + 1], indices, data, xt, tile[i - r0])
    _store_tile(tile, r0, r1, bias, y)


@njit(parallel=True)
def csr_spmm_kernel(indptr, indices, data, xt, bias, y):
    """All rows of :func:`csr_spmm_rows`, ROWS_PER_TASK rows per task."""
    n = y.shape[1]
    for t in prange((n + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        r0 = t * ROWS_PER_TASK
        csr_spmm_rows(r0, min(r0 + ROWS_PER_TASK, n), indptr, indices, data, xt, bias, y)


def csr_spmv(w: CSR, x, bias=None, out=None, simd=None):
    """``W @ x (+ b)`` for a CSR matrix and a vector ``x`` of length ``in``.

    float32 runs on the 16-lane gather kernels of :mod:`prunekit.sparse._simd`
    (``simd=False`` forces the scalar kernels above, e.g. to compare them).
    """
    x = _as_input(x, w, ndim=1)
    out = _as_output(out, (w.shape[0],), w.dtype)
    b = _bias(bias, w)
    mod = _simd_module(w.dtype, simd)
    if not _backend.use_numba():
        out[...] = csr_spmv_reference(w.data, w.indices, w.indptr, w.shape, x, _or_none(b))
        return out
    kernel = csr_spmv_kernel if mod is None else mod.csr_spmv
    _for_work(kernel, w.nnz)(w.indptr, w.indices, w.data, x, b, out)
    return out


def csr_spmm(w: CSR, x, bias=None, out=None, simd=None):
    """``x @ W.T (+ b)`` for a CSR matrix and ``x`` of shape ``(B, in)``."""
    x = _as_input(x, w, ndim=2)
    out = _as_output(out, (x.shape[0], w.shape[0]), w.dtype)
    b = _bias(bias, w)
    mod = _simd_module(w.dtype, simd)
    if not _backend.use_numba():
        out[...] = csr_spmm_reference(w.data, w.indices, w.indptr, w.shape, x, _or_none(b))
        return out
    work = w.nnz * x.shape[0]
    if mod is None:
        _for_work(csr_spmm_kernel, work)(w.indptr, w.indices, w.data, _transposed(x, w), b, out)
    else:
        xt, ldx = _transposed_padded(x, w)
        _for_work(mod.csr_spmm, work)(w.indptr, w.indices, w.data, xt, ldx, b, out)
    return out


# =========================================================================== BSR


def bsr_spmm_reference(blocks, indices, indptr, shape, x, bias=None):
    """NumPy reference: place each ``(R, C)`` block, then ``x @ W.T (+ b)`` (x 1-D or 2-D)."""
    r, c = blocks.shape[1], blocks.shape[2]
    n_br, n_bc = shape[0] // r, shape[1] // c
    tiles = np.zeros((n_br, n_bc, r, c), dtype=np.result_type(blocks, x))
    block_row = np.repeat(np.arange(n_br), np.diff(indptr))  # the block row of each kept block
    tiles[block_row, indices] = blocks
    w = tiles.transpose(0, 2, 1, 3).reshape(shape)
    y = x @ w.T
    return y if bias is None else y + bias


@njit(parallel=True)
def bsr_spmv_rows(r0, r1, indptr, indices, blocks_t, x, bias, y):
    """Block rows r0..r1 of y = W @ x for BSR with column-major blocks ``blocks_t[k, c, i]``.

    For each block column ``c`` the R outputs of the block row are updated
    together, ``y[rows] += blocks_t[k, c, :] * x[c0 + c]``, a short SIMD loop.
    """
    n_cols_blk = blocks_t.shape[1]
    n_rows_blk = blocks_t.shape[2]
    has_bias = bias.shape[0] > 0
    for br in range(r0, r1):
        y0 = br * n_rows_blk
        acc = y[y0:y0 + n_rows_blk]
        for i in range(n_rows_blk):
            acc[i] = bias[y0 + i] if has_bias else 0
        for k in range(indptr[br], indptr[br + 1]):
            c0 = indices[k] * n_cols_blk
            blk = blocks_t[k]
            for c in range(n_cols_blk):
                xv = x[c0 + c]
                col = blk[c]
                for i in range(n_rows_blk):
                    acc[i] += col[i] * xv


@njit(parallel=True)
def bsr_spmv_kernel(indptr, indices, blocks_t, x, bias, y):
    n = indptr.shape[0] - 1
    step = max(1, CHUNK // blocks_t.shape[2])
    for t in prange((n + step - 1) // step):
        bsr_spmv_rows(t * step, min(t * step + step, n), indptr, indices, blocks_t, x, bias, y)


@njit(parallel=True)
def bsr_spmm_rows(r0, r1, indptr, indices, blocks_t, xt, bias, y):
    """Block rows r0..r1 of y = x @ W.T for BSR; ``xt`` is x transposed, shape ``(in, B)``.

    Each block row accumulates in an (R, B) tile: for every weight of a kept
    block, ``tile[i, :] += w[i, c] * xt[c0 + c, :]`` (contiguous over the
    batch), two block columns per step.
    """
    n_cols_blk = blocks_t.shape[1]
    n_rows_blk = blocks_t.shape[2]
    n_b = y.shape[0]
    has_bias = bias.shape[0] > 0
    tile = np.empty((n_rows_blk, n_b), dtype=y.dtype)
    for br in range(r0, r1):
        tile[:] = 0
        for k in range(indptr[br], indptr[br + 1]):
            c0 = indices[k] * n_cols_blk
            blk = blocks_t[k]
            c = 0
            while c + 2 <= n_cols_blk:
                x0 = xt[c0 + c]
                x1 = xt[c0 + c + 1]
                for i in range(n_rows_blk):
                    w0 = blk[c, i]
                    w1 = blk[c + 1, i]
                    acc = tile[i]
                    for b in range(n_b):
                        acc[b] += w0 * x0[b] + w1 * x1[b]
                c += 2
            if c < n_cols_blk:
                x0 = xt[c0 + c]
                for i in range(n_rows_blk):
                    w0 = blk[c, i]
                    acc = tile[i]
                    for b in range(n_b):
                        acc[b] += w0 * x0[b]
        y0 = br * n_rows_blk
        for b in range(n_b):
            yb = y[b]
            for i in range(n_rows_blk):
                s = tile[i, b]
                if has_bias:
                    s += bias[y0 + i]
                yb[y0 + i] = s


@njit(parallel=True)
def bsr_spmm_kernel(indptr, indices, blocks_t, xt, bias, y):
    n = indptr.shape[0] - 1
    for br in prange(n):
        bsr_spmm_rows(br, br + 1, indptr, indices, blocks_t, xt, bias, y)


def bsr_spmm(w: BSR, x, bias=None, out=None):
    """``x @ W.T (+ b)`` for a BSR matrix; ``x`` of shape ``(in,)`` or ``(B, in)``."""
    x = _as_input(x, w, ndim=(1, 2))
    b = _bias(bias, w)
    out = _as_output(out, x.shape[:-1] + (w.shape[0],), w.dtype)
    if not _backend.use_numba():
        out[...] = bsr_spmm_reference(w.blocks, w.indices, w.indptr, w.shape, x, _or_none(b))
    elif x.ndim == 1:
        _for_work(bsr_spmv_kernel, w.nnz)(w.indptr, w.indices, w.blocks_t, x, b, out)
    else:
        _for_work(bsr_spmm_kernel, w.nnz * x.shape[0])(w.indptr, w.indices, w.blocks_t, _transposed(x, w), b, out)
    return out


# =========================================================================== N:M


def nm_spmm_reference(values, positions, shape, n, m, x, bias=None):
    """NumPy reference: rebuild the dense matrix from the packed N:M slots, then ``x @ W.T``."""
    rows, cols = shape
    g = cols // m
    w = np.zeros((rows, g, m), dtype=np.result_type(values, x))
    r_idx = np.arange(rows)[:, None, None]
    g_idx = np.arange(g)[None, :, None]
    np.add.at(w, (r_idx, g_idx, positions.reshape(rows, g, n).astype(np.intp)), values.reshape(rows, g, n))
    y = x @ w.reshape(rows, cols).T
    return y if bias is None else y + bias


@njit(parallel=True)
def nm_spmv_rows(r0, r1, values, positions, n, m, x, bias, y):
    """y[i] = sum_s values[i, s] * x[(s // n) * m + positions[i, s]]  (+ bias[i]), r0 <= i < r1.

    Like a CSR row whose column index is rebuilt from the group number and a
    1-byte position; the groups alternate between two partial sums.
    """
    n_groups = values.shape[1] // n
    has_bias = bias.shape[0] > 0
    for i in range(r0, r1):
        v = values[i]
        p = positions[i]
        s0 = x.dtype.type(0)
        s1 = s0
        s = 0
        for gi in range(n_groups):
            g = gi * m
            acc = x.dtype.type(0)
            for t in range(n):
                acc += v[s + t] * x[g + p[s + t]]
            if gi & 1:
                s1 += acc
            else:
                s0 += acc
            s += n
        r = s0 + s1
        if has_bias:
            r += bias[i]
        y[i] = r


@njit(parallel=True)
def nm_spmv_kernel(values, positions, n, m, x, bias, y):
    rows = y.shape[0]
    for t in prange((rows + CHUNK - 1) // CHUNK):
        nm_spmv_rows(t * CHUNK, min(t * CHUNK + CHUNK, rows), values, positions, n, m, x, bias, y)


@njit(parallel=True)
def nm_spmm_rows(r0, r1, values, positions, n, m, xt, bias, y):
    """Rows r0..r1 of the batched N:M product, ``xt`` = x transposed (see :func:`csr_spmm_rows`)."""
    tile = np.zeros((r1 - r0, y.shape[0]), dtype=y.dtype)
    cols = np.empty(values.shape[1], dtype=np.int64)
    for i in range(r0, r1):
        nm_columns(positions[i], n, m, cols)
        _row_times_xt(0, cols.shape[0], cols, values[i], xt, tile[i - r0])
    _store_tile(tile, r0, r1, bias, y)


@njit(parallel=True)
def nm_spmm_kernel(values, positions, n, m, xt, bias, y):
    rows = y.shape[1]
    for t in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        r0 = t * ROWS_PER_TASK
        nm_spmm_rows(r0, min(r0 + ROWS_PER_TASK, rows), values, positions, n, m, xt, bias, y)


def nm_spmm(w: NM, x, bias=None, out=None, simd=None):
    """``x @ W.T (+ b)`` for an N:M matrix; ``x`` of shape ``(in,)`` or ``(B, in)``."""
    x = _as_input(x, w, ndim=(1, 2))
    b = _bias(bias, w)
    mod = _simd_module(w.dtype, simd)
    out = _as_output(out, x.shape[:-1] + (w.shape[0],), w.dtype)
    if not _backend.use_numba():
        out[...] = nm_spmm_reference(w.values, w.positions, w.shape, w.n, w.m, x, _or_none(b))
    elif x.ndim == 1:
        if mod is not None and w.n in (1, 2, 4, 8, 16):
            _for_work(mod.nm_spmv, w.nnz)(w.values, w.positions, w.n.bit_length() - 1, w.m, x, b, out)
        else:
            _for_work(nm_spmv_kernel, w.nnz)(w.values, w.positions, w.n, w.m, x, b, out)
    else:
        work = w.nnz * x.shape[0]
        if mod is None:
            _for_work(nm_spmm_kernel, work)(w.values, w.positions, w.n, w.m, _transposed(x, w), b, out)
        else:
            xt, ldx = _transposed_padded(x, w)
            _for_work(mod.nm_spmm, work)(w.values, w.positions, w.n, w.m, xt, ldx, b, out)
    return out


# =========================================================================== int8


def quantize_rows_reference(x):
    """Symmetric per-row int8 quantization: ``x[b] ~= scale[b] * q[b]``, ``scale = max|x[b]| / 127``."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    scale = (amax / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale


def int8_matmul_int32_reference(xq, wq):
    """Exact integer product ``xq @ wq.T`` (int8 inputs, computed in int64, returned as int32)."""
    return (xq.astype(np.int64) @ wq.astype(np.int64).T).astype(np.int32)


def int8_linear_reference(w: Int8Weight, x, bias=None):
    """Quantize x per row, multiply in integers, dequantize: ``float32(acc[b, i]) * (sx[b] * sw[i]) (+ b[i])``.

    Every step after the exact integer sums is one float32 operation, in the
    kernels' own order, so the kernels give bit-identical results.
    """
    squeeze = np.ndim(x) == 1
    xq, sx = quantize_rows_reference(np.asarray(x, dtype=np.float32))
    acc = int8_matmul_int32_reference(xq, w.q)
    y = acc.astype(np.float32) * (sx[:, None] * w.scales[None, :])
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float32)
    y = y.astype(w.dtype)
    return y[0] if squeeze else y


@njit(parallel=True)
def quantize_rows_rows(r0, r1, x, q, scale, offset):
    """q[b, j] = rint(x[b, j] / scale[b]) + offset, scale[b] = max_j |x[b, j]| / 127, for r0 <= b < r1.

    ``offset`` is 0 for int8 output, 128 for the uint8 input of the VNNI kernel
    (columns of q beyond x's width are filled with ``offset``, i.e. zero).
    """
    n = x.shape[1]
    for b in range(r0, r1):
        row = x[b]
        amax = np.float32(0)
        for j in range(n):
            a = np.float32(abs(row[j]))
            if a > amax:
                amax = a
        s = amax / np.float32(127.0)
        scale[b] = s
        safe = s if s > 0 else np.float32(1.0)
        qb = q[b]
        for j in range(n):
            v = np.rint(np.float32(row[j]) / safe)
            if v > 127:
                v = 127
            elif v < -127:
                v = -127
            qb[j] = np.int32(v) + offset
        for j in range(n, qb.shape[0]):
            qb[j] = offset


@njit(parallel=True)
def quantize_rows_kernel(x, q, scale, offset):
    """All rows of :func:`quantize_rows_rows`, one row per task."""
    for b in prange(x.shape[0]):
        quantize_rows_rows(b, b + 1, x, q, scale, offset)


@njit(parallel=True)
def int8_gemm_kernel(xq, wq, sx, sw, bias, y):
    """Portable int8 GEMM: acc = sum_k int32(xq[b, k]) * int32(wq[i, k]); y = acc * sx[b] * sw[i] (+ bias).

    A plain dot product over contiguous k: LLVM turns it into ``pmaddwd``
    (int16 pairs multiplied and added into int32 lanes). Used when the CPU has
    neither AVX2 nor VNNI; see :mod:`prunekit.sparse._int8_simd` for the fast paths.
    """
    n_b, n_k = xq.shape
    has_bias = bias.shape[0] > 0
    for i in prange(wq.shape[0]):
        w = wq[i]
        for b in range(n_b):
            x = xq[b]
            acc = np.int32(0)
            for k in range(n_k):
                acc += np.int32(x[k]) * np.int32(w[k])
            r = np.float32(acc) * (sx[b] * sw[i])
            if has_bias:
                r += bias[i]
            y[b, i] = r


@njit(parallel=True)
def int8_matmul_int32_kernel(xq, wq, out):
    """Exact int32 accumulators ``out = xq @ wq.T`` (portable path; for tests and teaching)."""
    n_b, n_k = xq.shape
    for i in prange(wq.shape[0]):
        w = wq[i]
        for b in range(n_b):
            x = xq[b]
            acc = np.int32(0)
            for k in range(n_k):
                acc += np.int32(x[k]) * np.int32(w[k])
            out[b, i] = acc


_INT8_KERNELS = None


INT8_KERNEL_NAMES = ("vnni", "avx2", "portable")


def int8_kernels() -> tuple:
    """The int8 kernels this CPU can run, fastest first, e.g. ``("avx2", "portable")``.

    ``"vnni"``: AVX-512 VNNI ``vpdpbusd``; ``"avx2"``: ``vpmaddubsw`` with the sign
    trick; ``"portable"``: plain numba loops (any CPU). ``kernel=None`` in
    :func:`int8_linear` takes the first. Under the ``"numpy"`` backend the answer is
    ``("portable",)`` (the reference runs; numba is not imported to ask the CPU).
    Environment switches, read once:
    ``PRUNEKIT_NO_VNNI=1`` leaves out ``"vnni"`` (AVX2 then runs on a VNNI CPU),
    ``PRUNEKIT_NO_INT8_SIMD=1`` leaves only ``"portable"``.
    """
    global _INT8_KERNELS
    if not _backend.use_numba():
        return ("portable",)
    if _INT8_KERNELS is None:
        from . import _int8_simd

        _INT8_KERNELS = _int8_simd.available() + ("portable",)
    return _INT8_KERNELS


def has_vnni() -> bool:
    """True if the int8 kernels use the AVX-512 VNNI instruction ``vpdpbusd`` on this machine."""
    return "vnni" in int8_kernels()


def _int8_simd_flavour(kernel):
    """None for the portable kernel, else "vnni" or "avx2" (the instruction set of prunekit.sparse._int8_simd).

    Under the ``"numpy"`` backend any of the names is accepted (the reference runs for all).
    """
    if not _backend.use_numba():
        if kernel is not None and kernel not in INT8_KERNEL_NAMES:
            fail("kernel", f"None or one of {INT8_KERNEL_NAMES}", kernel)
        return None
    avail = int8_kernels()
    if kernel is None:
        kernel = avail[0]
    elif kernel not in avail:
        fail("kernel", f"None or one of {avail} (the int8 kernels this CPU can run)", kernel)
    return None if kernel == "portable" else kernel


def _int8_packed(w: Int8Weight):
    """``(packed panels, n_panels, n_quads)`` of the SIMD kernels, built once per weight (kept in its workspace)."""
    ws = w.workspace
    if ws.packed is None:
        from . import _int8_simd

        ws.packed = _int8_simd.pack_weights(w.q)
    return ws.packed


def quantize_rows(x, offset=0, width=None):
    """numba version of :func:`quantize_rows_reference`; ``offset=128`` gives the uint8 VNNI input.

    Returns ``(q, scale)``; ``q`` has ``width`` columns (default ``x.shape[1]``), the extra ones set to ``offset``.
    """
    x = np.ascontiguousarray(np.atleast_2d(x))
    if x.ndim != 2 or x.dtype.kind != "f":
        fail("x", "a 1-D or 2-D floating-point array", f"shape {x.shape}, dtype {x.dtype}")
    check_int("offset", offset, low=0, high=128)
    width = x.shape[1] if width is None else check_int("width", width, low=x.shape[1])
    q = np.empty((x.shape[0], width), dtype=np.uint8 if offset else np.int8)
    if not _backend.use_numba():
        q8, scale = quantize_rows_reference(x)
        q[:, : x.shape[1]] = q8.astype(np.int16) + offset
        q[:, x.shape[1]:] = offset
        return q, scale
    scale = np.empty(x.shape[0], dtype=np.float32)
    _for_work(quantize_rows_kernel, x.size)(x, q, scale, offset)
    return q, scale


def _simd_activations(flavour, rows, k4):
    """Zeroed activation scratch for the SIMD kernels: uint8 holding 128 (= int8 0 shifted) for VNNI, int8 0 for AVX2."""
    from . import _int8_simd

    dtype, offset = _int8_simd.activation_format(flavour)
    return np.full((rows, k4), offset, dtype=dtype)


def int8_matmul_int32(xq, w: Int8Weight, kernel=None):
    """Exact int32 accumulators ``xq @ w.q.T`` for int8 ``xq`` of shape (B, in); ``kernel`` as in :func:`int8_linear`."""
    check_array("xq", xq, ndim=2)
    if xq.dtype != np.int8:
        fail("xq", "an array of dtype int8", str(xq.dtype), TypeError)
    if xq.shape[1] != w.shape[1]:
        fail("xq", f"an array with {w.shape[1]} columns (in_features)", f"shape {xq.shape}")
    n_b = xq.shape[0]
    flavour = _int8_simd_flavour(kernel)
    if not _backend.use_numba():
        return int8_matmul_int32_reference(xq, w.q)
    if flavour is not None:
        from . import _int8_simd

        wp, n_panels, n_quads = _int8_packed(w)
        xu = _simd_activations(flavour, n_b, 4 * n_quads)
        xu[:, : w.shape[1]] = xq.astype(np.int16) + _int8_simd.activation_format(flavour)[1]
        acc = np.zeros(n_b * n_panels * _int8_simd.PANEL, dtype=np.int32)
        _for_work(_int8_simd.matmul_int32, n_b * w.q.size)(xu.reshape(-1), 4 * n_quads, n_b, wp, n_panels, n_quads,
                                                          w.row_sums, acc)
        return acc.reshape(n_b, n_panels * _int8_simd.PANEL)[:, : w.shape[0]].copy()
    out = np.empty((n_b, w.shape[0]), dtype=np.int32)
    int8_matmul_int32_kernel(np.ascontiguousarray(xq), w.q, out)
    return out


def int8_linear(w: Int8Weight, x, bias=None, out=None, kernel=None):
    """``x @ W.T (+ b)`` with int8 weights: quantize x per row, multiply in int8 with int32 sums, dequantize.

    ``kernel=None`` picks the fastest kernel this CPU has (see :func:`int8_kernels`);
    ``"vnni"``, ``"avx2"`` or ``"portable"`` asks for one. All give the same result
    up to float32 rounding of the final scale (the integer sums are exact).
    """
    call = w.workspace.gemv
    if (call is not None and kernel is None and bias is None and type(x) is np.ndarray and x.dtype == np.float32
            and x.shape == call.in_shape and x.flags.c_contiguous and _backend._current == "numba"):
        # the hot batch-1 call (a GEMV at memory speed): as few Python steps as possible, since they run on
        # a cache that the previous call's 16 MB weight stream has just flushed (~1 us each, measured)
        y = np.empty(w.shape[0], np.float32) if out is None else _as_output(out, (w.shape[0],), np.float32)
        call.kernel(x, *call.args, y)
        return y
    x = _as_input(x, w, ndim=(1, 2))
    squeeze = x.ndim == 1
    flavour = _int8_simd_flavour(kernel)
    if not _backend.use_numba():
        b = _bias(bias, w)
        y = int8_linear_reference(w, x, _or_none(b))
        if out is None:
            return y
        out = _as_output(out, y.shape, w.dtype)
        out[...] = y
        return out
    if squeeze and w.dtype == np.float32 and flavour is not None:
        return _int8_gemv_simd(w, flavour, x, _bias(bias, w), _as_output(out, (w.shape[0],), w.dtype),
                               cache=kernel is None)
    x2 = x.reshape(1, -1) if squeeze else x
    n_b = x2.shape[0]
    b = _bias(bias, w)
    if out is None:
        y = np.empty((n_b, w.shape[0]), dtype=w.dtype)
    else:
        out = _as_output(out, (w.shape[0],) if squeeze else (n_b, w.shape[0]), w.dtype)
        y = out.reshape(n_b, w.shape[0])
    if w.dtype != np.float32:
        y32 = np.empty((n_b, w.shape[0]), dtype=np.float32)
    else:
        y32 = y
    bias32 = b.astype(np.float32) if b.dtype != np.float32 else b
    if flavour is not None:
        from . import _int8_simd

        wp, n_panels, n_quads = _int8_packed(w)
        k4 = 4 * n_quads
        rows = -(-n_b // _int8_simd.ROW_TILE) * _int8_simd.ROW_TILE if n_b > 1 else 1
        xu, sx, acc = w.workspace.get((flavour, rows), lambda: (
            _simd_activations(flavour, rows, k4), np.zeros(rows, np.float32),
            np.empty(rows * n_panels * _int8_simd.PANEL, np.int32)))
        if n_b == 1:
            _for_work(_int8_simd.gemv, w.q.size)(x2[0], xu[0], wp, n_panels, n_quads, w.row_sums, sx, w.scales, bias32,
                                                 acc, y32[0])
        else:
            _for_work(quantize_rows_kernel, x2.size)(x2, xu[:n_b], sx[:n_b], _int8_simd.activation_format(flavour)[1])
            _for_work(_int8_simd.gemm, n_b * w.q.size)(xu.reshape(-1), k4, wp, n_panels, n_quads, w.row_sums, sx,
                                                       w.scales, bias32, acc, y32)
    else:
        xq, sx = w.workspace.get(("portable", n_b), lambda: (
            np.empty((n_b, w.shape[1]), np.int8), np.empty(n_b, np.float32)))
        _for_work(quantize_rows_kernel, x2.size)(x2, xq, sx, 0)
        _for_work(int8_gemm_kernel, n_b * w.q.size)(xq, w.q, sx, w.scales, bias32, y32)
    if y32 is not y:
        y[...] = y32
    if out is not None:
        return out
    return y[0] if squeeze else y


class _PreparedGemv:
    """The batch-1 SIMD int8 call of one weight, prepared once: its compiled kernel and scratch buffers.

    ``gemv(x, xu, wp, n_panels, n_quads, row_sums, sx, scales, bias, acc, y)``: ``args``
    holds the arguments between ``x`` and ``y`` (with an empty bias), in that order, so
    the short path of :func:`int8_linear` calls ``kernel(x, *args, y)`` with little
    Python work in between.
    """

    __slots__ = ("in_shape", "lazy_kernel", "work", "parallel", "serial", "xu", "packed", "n_panels", "n_quads", "row_sums", "sx", "scales", "acc",
                 "args")

    def __init__(self, w: Int8Weight, flavour):
        from . import _int8_simd

        self.packed, self.n_panels, self.n_quads = _int8_packed(w)
        self.in_shape = (w.shape[1],)
        self.lazy_kernel = _int8_simd.gemv
        self.work = w.q.size
        self.parallel, self.serial = _int8_simd.gemv.compiled(), _int8_simd.gemv.serial.compiled()
        self.xu = _simd_activations(flavour, 1, 4 * self.n_quads)[0]  # x quantized (scratch)
        self.row_sums, self.scales = w.row_sums, w.scales
        self.sx = np.zeros(1, np.float32)  # x's scale (scratch)
        self.acc = np.empty(self.n_panels * _int8_simd.PANEL, np.int32)  # int32 sums (scratch)
        self.args = (self.xu, self.packed, self.n_panels, self.n_quads, self.row_sums, self.sx, self.scales,
                     _bias(None, w), self.acc)

    @property
    def kernel(self):
        """The compiled kernel for this call: parallel or single-thread, as :func:`_for_work` decides."""
        return self.parallel if _for_work(self.lazy_kernel, self.work) is self.lazy_kernel else self.serial

    def __call__(self, x, bias32, y):
        self.kernel(x, self.xu, self.packed, self.n_panels, self.n_quads, self.row_sums, self.sx, self.scales,
                    bias32, self.acc, y)
        return y


def _int8_gemv_simd(w: Int8Weight, flavour, x, bias32, y, cache):
    """Batch 1, float32, SIMD kernel: one kernel call (quantize, multiply, dequantize) on buffers kept with ``w``.

    With ``cache`` (the default kernel was asked for), the prepared call is also kept as
    ``w.workspace.gemv`` for the short path in :func:`int8_linear`.
    """
    call = w.workspace.get(("gemv", flavour), lambda: _PreparedGemv(w, flavour))
    if cache:
        w.workspace.gemv = call
    return call(x, bias32, y)


# =========================================================================== fused Linear/ReLU chain


@njit
def _dense_dot(off, n, vals, x):
    """sum_j vals[off + j] * x[j] for j < n, with 8 partial sums (a dense row inside a fused chain)."""
    s0 = x.dtype.type(0)
    s1 = s0
    s2 = s0
    s3 = s0
    s4 = s0
    s5 = s0
    s6 = s0
    s7 = s0
    j = 0
    while j + 8 <= n:
        s0 += vals[off + j] * x[j]
        s1 += vals[off + j + 1] * x[j + 1]
        s2 += vals[off + j + 2] * x[j + 2]
        s3 += vals[off + j + 3] * x[j + 3]
        s4 += vals[off + j + 4] * x[j + 4]
        s5 += vals[off + j + 5] * x[j + 5]
        s6 += vals[off + j + 6] * x[j + 6]
        s7 += vals[off + j + 7] * x[j + 7]
        j += 8
    while j < n:
        s0 += vals[off + j] * x[j]
        j += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


# ``meta`` of a fused chain: meta[0] = number of layers, then CHAIN_FIELDS int64 per layer, at
# 1 + CHAIN_FIELDS * layer; these are the offsets of the fields inside a layer's record (shared by
# FusedChain, which writes them, and by the kernels and the reference, which read them).
CHAIN_KIND = 0  # CHAIN_CSR or CHAIN_DENSE
CHAIN_N_IN = 1  # input features
CHAIN_N_OUT = 2  # output features
CHAIN_WHERE = 3  # CSR: index in meta of the layer's indptr (offsets into vals/cols); dense: offset of W in vals
CHAIN_BIAS = 4  # offset of the bias in vals, or -1 for none
CHAIN_RELU = 5  # 1 if a ReLU follows
CHAIN_FIELDS = 6
CHAIN_CSR = 0
CHAIN_DENSE = 1


def chain_record(layer):
    """Index in ``meta`` of the record of ``layer`` (its fields are at ``+ CHAIN_KIND`` ... ``+ CHAIN_RELU``)."""
    return 1 + CHAIN_FIELDS * layer


def _chain_layer(meta, layer):
    """``(kind, n_in, n_out, where, bias offset, relu)`` of ``layer``, read at the CHAIN_* offsets of its record."""
    d = 1 + CHAIN_FIELDS * layer  # chain_record(layer)
    return (meta[d + CHAIN_KIND], meta[d + CHAIN_N_IN], meta[d + CHAIN_N_OUT], meta[d + CHAIN_WHERE],
            meta[d + CHAIN_BIAS], meta[d + CHAIN_RELU])


# the same function for the kernels (inlined) and, under the numpy backend, as plain Python
chain_layer = njit(inline="always", reference=_chain_layer)(_chain_layer)


def fused_chain_reference(x, vals, cols, meta, work, out):
    """NumPy reference of :func:`fused_chain_kernel` (same arguments): unpack each layer, then ``x @ W.T + b``, ReLU."""
    a = x
    for layer in range(int(meta[0])):
        kind, n_in, n_out, where, bias0, relu = (int(v) for v in _chain_layer(meta, layer))
        if kind == CHAIN_CSR:
            indptr = meta[where:where + n_out + 1]  # offsets into vals/cols
            k0, k1 = int(indptr[0]), int(indptr[-1])
            w = np.zeros((n_out, n_in), dtype=vals.dtype)
            w[np.repeat(np.arange(n_out), np.diff(indptr)), cols[k0:k1]] = vals[k0:k1]
        else:
            w = vals[where:where + n_out * n_in].reshape(n_out, n_in)
        a = a @ w.T
        if bias0 >= 0:
            a = a + vals[bias0:bias0 + n_out]
        if relu:
            a = np.maximum(a, vals.dtype.type(0))
    out[...] = a


@njit(reference=fused_chain_reference)
def fused_chain_kernel(x, vals, cols, meta, work, out):
    """Run a whole chain of Linear(+ReLU) layers on each row of ``x`` in one call.

    Small layers at batch 1 are ruled by call overhead, not arithmetic: one
    kernel call per layer plus NumPy glue costs more than the multiply-adds.
    So the chain is packed (by :class:`prunekit.sparse.modules.FusedChain`)
    into four flat arrays and run here in one go:

    * ``vals``: every CSR layer's values, then dense layers' weights and all biases
    * ``cols``: every CSR layer's column indices (same order as their values)
    * ``meta`` (int64): ``meta[0]`` = number of layers L, then one record of
      ``CHAIN_FIELDS`` numbers per layer (the ``CHAIN_*`` offsets above: kind,
      n_in, n_out, where, bias offset or -1, relu); then the CSR indptrs.
    * ``work``: scratch of twice the widest hidden layer (layers ping-pong).
    """
    n_layers = meta[0]
    half = work.shape[0] // 2
    zero = vals.dtype.type(0)
    for b in range(x.shape[0]):
        src = x[b]
        for layer in range(n_layers):
            kind, n_in, n_out, where, bias0, relu = chain_layer(meta, layer)
            if layer == n_layers - 1:
                dst = out[b]
            else:
                h = (layer % 2) * half
                dst = work[h:h + n_out]
            for i in range(n_out):
                if kind == CHAIN_CSR:
                    s = _row_dot(meta[where + i], meta[where + i + 1], cols, vals, src)
                else:
                    s = _dense_dot(where + i * n_in, n_in, vals, src)
                if bias0 >= 0:
                    s += vals[bias0 + i]
                if relu and s < zero:
                    s = zero
                dst[i] = s
            src = dst


# =========================================================================== dispatch and helpers


_X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def _simd_module(dtype, simd=None):
    """The explicit-SIMD kernels (float32 on x86-64), or None for the scalar ones (and under the numpy backend)."""
    ok = dtype == np.float32 and _X86_64
    if simd is None:
        simd = ok
    elif simd and not ok:
        fail("simd", "False or None (the SIMD kernels need float32 on x86-64)", simd)
    if not simd or not _backend.use_numba():
        return None
    from . import _simd

    return _simd


def linear(w: SparseFormat, x, bias=None, out=None):
    """``x @ W.T (+ b)`` for any format; ``x`` of shape ``(in,)`` or ``(B, in)``."""
    if not isinstance(w, (CSR, BSR, NM, Int8Weight)):
        fail("w", "a CSR, BSR, NM or Int8Weight", type(w).__name__, TypeError)
    if isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[0] == 1 and not isinstance(w, Int8Weight):
        # one row: the batch-1 (memory-bound) kernels, not the batched ones with 15 idle lanes
        flat = None if out is None else _as_output(out, (1, w.shape[0]), w.dtype).reshape(-1)
        return linear(w, x.reshape(-1), bias, flat).reshape(1, -1)
    if isinstance(w, CSR):
        x = _as_input(x, w, ndim=(1, 2))
        return csr_spmv(w, x, bias, out) if x.ndim == 1 else csr_spmm(w, x, bias, out)
    if isinstance(w, BSR):
        return bsr_spmm(w, x, bias, out)
    if isinstance(w, NM):
        return nm_spmm(w, x, bias, out)
    return int8_linear(w, x, bias, out)


def _as_input(x, w, ndim):
    """Validate ``x`` against the weight and return a C-contiguous array of the compute dtype."""
    if not isinstance(x, np.ndarray):
        fail("x", "a numpy.ndarray", type(x).__name__, TypeError)
    if x.dtype.kind != "f":
        fail("x", "a floating-point array (float32 or float64)", str(x.dtype), TypeError)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if x.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        fail("x", f"a {want} array", f"shape {x.shape}")
    if x.shape[-1] != w.shape[1]:
        fail("x", f"an array whose last dimension is in_features = {w.shape[1]}", f"shape {x.shape}")
    dtype = np.float32 if isinstance(w, Int8Weight) else w.dtype
    return np.ascontiguousarray(x, dtype=dtype)


def _as_output(out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        fail("out", "a numpy.ndarray or None", type(out).__name__, TypeError)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        fail("out", f"a C-contiguous array of shape {shape} and dtype {np.dtype(dtype)}",
             f"shape {out.shape}, dtype {out.dtype}")
    return out


_EMPTY = {}


def _bias(bias, w):
    dtype = np.dtype(np.float32 if isinstance(w, Int8Weight) else w.dtype)
    if bias is None:
        e = _EMPTY.get(dtype)
        if e is None:
            e = _EMPTY[dtype] = np.zeros(0, dtype=dtype)
        return e
    if not isinstance(bias, np.ndarray) or bias.ndim != 1 or bias.shape[0] != w.shape[0]:
        got = f"shape {bias.shape}" if isinstance(bias, np.ndarray) else type(bias).__name__
        fail("bias", f"None or a 1-D array of length out_features = {w.shape[0]}", got)
    if bias.dtype.kind != "f":
        fail("bias", "a floating-point array", str(bias.dtype), TypeError)
    return np.ascontiguousarray(bias, dtype=dtype)


def _or_none(bias):
    """The references take ``None`` for no bias; the kernels an empty array (see :func:`_bias`)."""
    return bias if bias.shape[0] else None


def _transposed(x, w):
    """x (B, in) -> xt (in, B) in a scratch buffer cached on ``w``."""
    n_b, n = x.shape
    xt = w.workspace.get(("xt", n_b, x.dtype.str), lambda: np.empty((n, n_b), dtype=x.dtype))
    _transpose_into(x, xt)
    return xt


def _transposed_padded(x, w):
    """x (B, in) -> flat xt with ``xt[j * ldx + b] = x[b, j]``, ``ldx`` = B rounded up to 16 (zero lanes)."""
    n_b, n = x.shape
    ldx = -(-n_b // 16) * 16
    xt = w.workspace.get(("xtp", n_b, x.dtype.str), lambda: np.zeros((n, ldx), dtype=x.dtype))
    _transpose_into(x, xt)  # writes the first n_b lanes; the padding lanes stay zero
    return xt.reshape(-1), ldx


def _transpose_into(x, xt):
    """xt[:, :B] = x.T: NumPy's copy below PARALLEL_MIN_WORK elements (no thread start-up), the parallel tiles above."""
    n_b, n = x.shape
    if n_b * n < _jit.PARALLEL_MIN_WORK:
        xt[:, :n_b] = x.T
    else:
        _for_work(transpose_kernel, n_b * n)(x, xt)
