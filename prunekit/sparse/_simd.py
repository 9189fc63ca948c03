"""Explicit 16-lane float32 SIMD for the batch-1 sparse kernels (gather-based).

Imported lazily by :mod:`prunekit.sparse.kernels` (it imports numba at the top);
``import prunekit`` never touches it.

Why?
----
A CSR row is a dot product between the row's values and ``x`` gathered at the
row's column indices. Written as a scalar loop, every non-zero costs an index
load, an ``x`` load, a value load and a multiply-add: ~1.5-2 cycles, and the
kernel is bound by instruction count, not by memory. LLVM would vectorize it
with a *gather* instruction only if it may reorder the sum (``fastmath``).
We do not want the compiler to choose our summation order, so we choose it
ourselves: 16 lanes, lane ``l`` sums the non-zeros ``l, l + 16, l + 32, ...`` of
the row, and the 16 lane sums are added in a fixed tree at the end. The
result is deterministic and needs no fastmath; each step is one 16-wide
gather, one 16-wide load, one multiply and one add.

numba has no SIMD types, so we add one, ``f32x16`` (an LLVM ``<16 x float>``),
and a handful of intrinsics built only from *generic* LLVM operations
(vector load, ``llvm.masked.gather``, ``fmul``, ``fadd``, shuffles): LLVM lowers
them to AVX-512/AVX2 on x86 (``vgatherdps``) and to plain scalar code where the
CPU has no gather. Multiply and add stay separate (no fused multiply-add), as
in the scalar kernels.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .._jit import njit
from .kernels import CHAIN_CSR, chain_layer, fused_chain_reference, nm_columns

__all__ = ["csr_spmv", "nm_spmv", "fused_chain", "LANES"]

LANES = 16
_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I1 = ir.IntType(1)
_FV = ir.VectorType(_F32, LANES)
_IV = ir.VectorType(_I32, LANES)
_MV = ir.VectorType(_I1, LANES)


class F32x16(types.Type):
    """16 float32 lanes held in registers."""

    def __init__(self):
        super().__init__(name="f32x16")


f32x16 = F32x16()


@register_model(F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _FV)


class _VectorGEP(ir.Instruction):
    """``getelementptr`` with a vector of indices (llvmlite's builder only takes scalars)."""

    def __init__(self, parent, ptr, idx, name=""):
        super().__init__(parent, ir.VectorType(ptr.type, idx.type.count), "getelementptr", [ptr, idx], name=name)

    def descr(self, buf):
        p, i = self.operands
        buf.append(f"getelementptr inbounds {p.type.pointee}, {p.type} {p.get_reference()}, "
                   f"{i.type} {i.get_reference()}\n")


def _data(context, builder, arrty, arr):
    return context.make_array(arrty)(context, builder, arr).data


def _splat(builder, value, vty):
    vec = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, ir.Constant(vty, ir.Undefined), ir.Constant(_IV, None))


def _lane_mask(builder, n):
    """Lanes ``l < n`` (``n`` an i64)."""
    n32 = builder.trunc(n, _I32)
    return builder.icmp_signed("<", ir.Constant(_IV, list(range(LANES))), _splat(builder, n32, _IV))


def _index_vector(builder, context, arrty, arr, k, n):
    """Load ``arr[k : k + 16]`` (first ``n`` lanes if ``n`` is given) as 16 int32."""
    p = builder.gep(_data(context, builder, arrty, arr), [k])
    ity = p.type.pointee
    vty = ir.VectorType(ity, LANES)
    vp = builder.bitcast(p, vty.as_pointer())
    if n is None:
        iv = builder.load(vp, align=1)
    else:
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vp.type, _I32, _MV, vty]),
            f"llvm.masked.load.v{LANES}i{ity.width}.p0")
        iv = builder.call(fn, [vp, ir.Constant(_I32, 1), _lane_mask(builder, n), ir.Constant(vty, None)])
    if ity.width < 32:
        iv = builder.zext(iv, _IV)
    elif ity.width > 32:
        iv = builder.trunc(iv, _IV)
    return iv


def _gather(builder, context, xty, x, iv, mask):
    g = _VectorGEP(builder.block, _data(context, builder, xty, x), iv)
    builder._insert(g)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_FV, [g.type, _I32, _MV, _FV]), f"llvm.masked.gather.v{LANES}f32.v{LANES}p0")
    return builder.call(fn, [g, ir.Constant(_I32, 4), mask, ir.Constant(_FV, None)])


_ALL = ir.Constant(_MV, [1] * LANES)


@intrinsic
def vzero(typingctx):
    """16 zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_FV, None)
    return f32x16(), codegen


@intrinsic
def vload(typingctx, arr, k):
    """``arr[k : k + 16]`` (float32)."""
    def codegen(context, builder, sig, args):
        p = builder.gep(_data(context, builder, sig.args[0], args[0]), [args[1]])
        return builder.load(builder.bitcast(p, _FV.as_pointer()), align=4)
    return f32x16(arr, k), codegen


@intrinsic
def vload_n(typingctx, arr, k, n):
    """``arr[k : k + n]`` in the first ``n`` lanes (``n < 16``), zeros elsewhere; reads nothing past ``k + n``."""
    def codegen(context, builder, sig, args):
        p = builder.gep(_data(context, builder, sig.args[0], args[0]), [args[1]])
        vp = builder.bitcast(p, _FV.as_pointer())
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_FV, [vp.type, _I32, _MV, _FV]), f"llvm.masked.load.v{LANES}f32.p0")
        return builder.call(fn, [vp, ir.Constant(_I32, 4), _lane_mask(builder, args[2]), ir.Constant(_FV, None)])
    return f32x16(arr, k, types.int64), codegen


@intrinsic
def vgather(typingctx, x, idx, k):
    """``x[idx[k : k + 16]]``: one 16-wide gather."""
    def codegen(context, builder, sig, args):
        iv = _index_vector(builder, context, sig.args[1], args[1], args[2], None)
        return _gather(builder, context, sig.args[0], args[0], iv, _ALL)
    return f32x16(x, idx, k), codegen


@intrinsic
def vgather_n(typingctx, x, idx, k, n):
    """``x[idx[k : k + n]]`` in the first ``n`` lanes, zeros elsewhere."""
    def codegen(context, builder, sig, args):
        iv = _index_vector(builder, context, sig.args[1], args[1], args[2], args[3])
        return _gather(builder, context, sig.args[0], args[0], iv, _lane_mask(builder, args[3]))
    return f32x16(x, idx, k, types.int64), codegen


@intrinsic
def vgather_nm(typingctx, x, pos, k, base, shift, m):
    """N:M gather: lane ``l`` reads ``x[base + ((l + k0) >> shift) * m + pos[k + l]]``.

    ``k0 = k - row_start`` is folded into ``base`` by the caller, so lane ``l`` of
    slot ``s = k + l`` reads group ``s >> shift`` (``n = 2 ** shift`` slots per group).
    """
    def codegen(context, builder, sig, args):
        xa, pa, k, b, sh, mm = args
        iv = _index_vector(builder, context, sig.args[1], pa, k, None)
        lane = ir.Constant(_IV, list(range(LANES)))
        grp = builder.lshr(lane, _splat(builder, builder.trunc(sh, _I32), _IV))
        col = builder.add(builder.mul(grp, _splat(builder, builder.trunc(mm, _I32), _IV)), iv)
        col = builder.add(col, _splat(builder, builder.trunc(b, _I32), _IV))
        return _gather(builder, context, sig.args[0], xa, col, _ALL)
    return f32x16(x, pos, k, types.int64, types.int64, types.int64), codegen


@intrinsic
def vmuladd(typingctx, acc, a, b):
    """``acc + a * b`` lane by lane (a multiply, then an add: no fused multiply-add)."""
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], builder.fmul(args[1], args[2]))
    return f32x16(f32x16, f32x16, f32x16), codegen


@intrinsic
def vadd(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return f32x16(f32x16, f32x16), codegen


@intrinsic
def vsplat(typingctx, value):
    """16 copies of one float32."""
    def codegen(context, builder, sig, args):
        return _splat(builder, args[0], _FV)
    return f32x16(types.float32), codegen


@intrinsic
def vstore(typingctx, arr, k, v):
    """``arr[k : k + 16] = v``."""
    def codegen(context, builder, sig, args):
        p = builder.gep(_data(context, builder, sig.args[0], args[0]), [args[1]])
        builder.store(args[2], builder.bitcast(p, _FV.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(arr, k, f32x16), codegen


@intrinsic
def vsum(typingctx, v):
    """Sum of the 16 lanes in a fixed tree: (0..7 + 8..15), then (0..3 + 4..7), ..."""
    def codegen(context, builder, sig, args):
        x = args[0]
        w = LANES
        while w > 1:
            w //= 2
            lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, w), list(range(w))))
            hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, w), list(range(w, 2 * w))))
            x = builder.fadd(lo, hi)
        return builder.extract_element(x, ir.Constant(_I32, 0))
    return types.float32(f32x16), codegen


# ----------------------------------------------------------------------------- kernels


@njit(inline="always")
def row_dot(start, stop, indices, data, x):
    """sum_k data[k] * x[indices[k]] over [start, stop) in 16 lanes (2 accumulators)."""
    a0 = vzero()
    a1 = vzero()
    k = start
    while k + 2 * LANES <= stop:
        a0 = vmuladd(a0, vload(data, k), vgather(x, indices, k))
        a1 = vmuladd(a1, vload(data, k + LANES), vgather(x, indices, k + LANES))
        k += 2 * LANES
    if k + LANES <= stop:
        a0 = vmuladd(a0, vload(data, k), vgather(x, indices, k))
        k += LANES
    if k < stop:
        a1 = vmuladd(a1, vload_n(data, k, stop - k), vgather_n(x, indices, k, stop - k))
    return vsum(vadd(a0, a1))


# Every kernel below comes in two parts: ``*_rows(r0, r1, ...)``, a plain loop over
# output rows r0..r1, and a parallel wrapper that hands chunks of rows to the
# threads. Small products call ``*_rows`` over all rows directly: starting the
# threads costs a few microseconds (much more on a busy machine), more than a
# small layer's arithmetic. ``*_rows`` are compiled with parallel=True although
# they have no prange; see the note at the top of kernels.py.

CHUNK = 64  # rows per task in the batch-1 parallel wrappers


@njit(parallel=True)
def csr_spmv_rows(r0, r1, indptr, indices, data, x, bias, y):
    """y[i] = row i . x (+ bias[i]) for r0 <= i < r1; float32 only."""
    has_bias = bias.shape[0] > 0
    for i in range(r0, r1):
        s = row_dot(indptr[i], indptr[i + 1], indices, data, x)
        if has_bias:
            s += bias[i]
        y[i] = s


@njit(parallel=True)
def csr_spmv(indptr, indices, data, x, bias, y):
    n = y.shape[0]
    for t in numba.prange((n + CHUNK - 1) // CHUNK):
        csr_spmv_rows(t * CHUNK, min(t * CHUNK + CHUNK, n), indptr, indices, data, x, bias, y)


@njit(parallel=True)
def nm_spmv_rows(r0, r1, values, positions, shift, m, x, bias, y):
    """N:M with ``n = 2 ** shift`` slots per group; 16 slots (16 >> shift groups) per step."""
    n_slots = values.shape[1]
    has_bias = bias.shape[0] > 0
    step_cols = (LANES >> shift) * m
    for i in range(r0, r1):
        v = values[i]
        p = positions[i]
        a0 = vzero()
        k = 0
        base = 0
        while k + LANES <= n_slots:
            a0 = vmuladd(a0, vload(v, k), vgather_nm(x, p, k, base, shift, m))
            k += LANES
            base += step_cols
        s = vsum(a0)
        while k < n_slots:
            s += v[k] * x[(k >> shift) * m + p[k]]
            k += 1
        if has_bias:
            s += bias[i]
        y[i] = s


@njit(parallel=True)
def nm_spmv(values, positions, shift, m, x, bias, y):
    n = y.shape[0]
    for t in numba.prange((n + CHUNK - 1) // CHUNK):
        nm_spmv_rows(t * CHUNK, min(t * CHUNK + CHUNK, n), values, positions, shift, m, x, bias, y)


@njit(inline="always")
def dense_dot(off, n, vals, x):
    """sum_j vals[off + j] * x[j] for j < n in 16 lanes."""
    a0 = vzero()
    j = 0
    while j + LANES <= n:
        a0 = vmuladd(a0, vload(vals, off + j), vload(x, j))
        j += LANES
    if j < n:
        a0 = vmuladd(a0, vload_n(vals, off + j, n - j), vload_n(x, j, n - j))
    return vsum(a0)


@njit(parallel=True, reference=fused_chain_reference)  # no prange inside: see the note above csr_spmv_rows
def fused_chain(x, vals, cols, meta, work, out):
    """SIMD version of :func:`prunekit.sparse.kernels.fused_chain_kernel` (same arguments, float32)."""
    n_layers = meta[0]
    half = work.shape[0] // 2
    zero = np.float32(0)
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
                    s = row_dot(meta[where + i], meta[where + i + 1], cols, vals, src)
                else:
                    s = dense_dot(where + i * n_in, n_in, vals, src)
                if bias0 >= 0:
                    s += vals[bias0 + i]
                if relu and s < zero:
                    s = zero
                dst[i] = s
            src = dst


ROWS_PER_TASK = 16


@njit(inline="always")
def row_times_xt(start, stop, indices, data, xt, ldx, tile, out):
    """tile[out + b] = sum_k data[k] * xt[indices[k] * ldx + b] for every batch lane b < ldx.

    Groups of 64 lanes use four registers (one broadcast, four loads, four
    multiply-adds per non-zero), then at most one group of 32 and one of 16.
    """
    b0 = 0
    while b0 + 4 * LANES <= ldx:
        a0 = vzero()
        a1 = vzero()
        a2 = vzero()
        a3 = vzero()
        for k in range(start, stop):
            v = vsplat(data[k])
            j = np.int64(indices[k]) * ldx + b0
            a0 = vmuladd(a0, v, vload(xt, j))
            a1 = vmuladd(a1, v, vload(xt, j + LANES))
            a2 = vmuladd(a2, v, vload(xt, j + 2 * LANES))
            a3 = vmuladd(a3, v, vload(xt, j + 3 * LANES))
        vstore(tile, out + b0, a0)
        vstore(tile, out + b0 + LANES, a1)
        vstore(tile, out + b0 + 2 * LANES, a2)
        vstore(tile, out + b0 + 3 * LANES, a3)
        b0 += 4 * LANES
    if b0 + 2 * LANES <= ldx:
        a0 = vzero()
        a1 = vzero()
        for k in range(start, stop):
            v = vsplat(data[k])
            j = np.int64(indices[k]) * ldx + b0
            a0 = vmuladd(a0, v, vload(xt, j))
            a1 = vmuladd(a1, v, vload(xt, j + LANES))
        vstore(tile, out + b0, a0)
        vstore(tile, out + b0 + LANES, a1)
        b0 += 2 * LANES
    if b0 < ldx:
        a0 = vzero()
        for k in range(start, stop):
            a0 = vmuladd(a0, vsplat(data[k]), vload(xt, np.int64(indices[k]) * ldx + b0))
        vstore(tile, out + b0, a0)


@njit(inline="always")
def store_tile(tile, ldx, r0, r1, bias, y):
    """y[b, r0:r1] = tile rows (transposed back) + bias."""
    has_bias = bias.shape[0] > 0
    for b in range(y.shape[0]):
        yb = y[b]
        for i in range(r0, r1):
            s = tile[(i - r0) * ldx + b]
            if has_bias:
                s += bias[i]
            yb[i] = s


@njit(parallel=True)
def csr_spmm_rows(r0, r1, indptr, indices, data, xt, ldx, bias, y):
    """Rows r0..r1 of y = x @ W.T (+ bias) with the batch in SIMD lanes.

    ``xt`` is x transposed and flattened: ``xt[j * ldx + b] = x[b, j]``, ``ldx`` a
    multiple of 16 (padding lanes are zero). The rows go into a (rows, ldx)
    tile, written transposed into y at the end.
    """
    tile = np.empty((r1 - r0) * ldx, dtype=np.float32)
    for i in range(r0, r1):
        row_times_xt(indptr[i], indptr[i + 1], indices, data, xt, ldx, tile, (i - r0) * ldx)
    store_tile(tile, ldx, r0, r1, bias, y)


@njit(parallel=True)
def csr_spmm(indptr, indices, data, xt, ldx, bias, y):
    n = y.shape[1]
    for t in numba.prange((n + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        r0 = t * ROWS_PER_TASK
        csr_spmm_rows(r0, min(r0 + ROWS_PER_TASK, n), indptr, indices, data, xt, ldx, bias, y)


@njit(parallel=True)
def nm_spmm_rows(r0, r1, values, positions, n, m, xt, ldx, bias, y):
    """N:M version of :func:`csr_spmm_rows`: each row's columns are rebuilt from group and position."""
    n_slots = values.shape[1]
    tile = np.empty((r1 - r0) * ldx, dtype=np.float32)
    cols = np.empty(n_slots, dtype=np.int32)
    for i in range(r0, r1):
        nm_columns(positions[i], n, m, cols)
        row_times_xt(0, n_slots, cols, values[i], xt, ldx, tile, (i - r0) * ldx)
    store_tile(tile, ldx, r0, r1, bias, y)


@njit(parallel=True)
def nm_spmm(values, positions, n, m, xt, ldx, bias, y):
    n_rows = y.shape[1]
    for t in numba.prange((n_rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        r0 = t * ROWS_PER_TASK
        nm_spmm_rows(r0, min(r0 + ROWS_PER_TASK, n_rows), values, positions, n, m, xt, ldx, bias, y)
