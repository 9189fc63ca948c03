"""int8 matrix products with x86 integer dot-product instructions.

This module imports numba at the top, so it is only imported (by
:mod:`prunekit.sparse.kernels`) the first time an int8 product runs or
``int8_kernels()`` asks what the CPU has. ``import prunekit`` never touches it.

Why explicit instructions?
--------------------------
A float32 FMA does 8 (AVX2) or 16 (AVX-512) multiply-adds per instruction.
The plain int8 dot product that LLVM vectorizes by itself (``pmaddwd``: int16
pairs into int32) does no better once the int8 -> int16 widening is paid, so
on its own int8 would *not* beat float32 BLAS on compute. Two instruction
sequences do:

* **AVX-512 VNNI** ``vpdpbusd`` multiplies 64 unsigned-8-bit by signed-8-bit
  pairs and adds them, four at a time, into 16 int32 lanes: 64 multiply-adds
  per instruction, exact in int32.
* **AVX2** (every x86-64 CPU since 2013) has no such instruction; the standard
  replacement is three: ``vpmaddubsw`` (32 u8 x s8 products, added in pairs
  into int16), ``vpmaddwd`` against ones (pairs of int16 into int32) and an
  add. ``vpmaddubsw`` saturates at 32767, and 255 * 127 * 2 does not fit, so
  the unsigned operand must stay below 128. The *sign trick* makes that exact:
  ``x * w = |x| * (sign(x) w)``, and ``vpsignb`` applies the sign of the
  activation to the weight; ``|x| <= 128`` and ``|w| <= 127`` keep each pair
  sum within 2 * 128 * 127 = 32512. (It needs ``w != -128``, whose negation
  does not fit in int8; :class:`~prunekit.sparse.Int8Weight` never holds -128.)
  Four instructions for 32 multiply-adds: no more per instruction than a
  float32 FMA on 8 lanes, so at batch 64 (compute-bound) AVX2 int8 only
  edges out float32 BLAS; at batch 1 (memory-bound) it wins by moving a
  quarter of the bytes.

The same story as 2:4 sparsity: a format pays only where the hardware has an
instruction for it.

numba has no SIMD types, so we add some: ``i32x16`` (an LLVM ``<16 x i32>``
value: one AVX-512 register, or a pair of AVX2 registers) and a few tiny
intrinsics (zero, load 64 bytes, broadcast 4 activation bytes, dot product,
store). The kernels below read like C with intrinsics, and the *same* kernel
source serves both instruction sets: the broadcast of a **uint8** activation
array gives the VNNI flavour (activations shifted by +128, undone with
``row_sums``), the broadcast of an **int8** array gives the AVX2 flavour (the
sign trick, no shift); numba compiles one specialization per dtype.

Data layout
-----------
* VNNI: activations are quantized to int8 ``q`` and shifted to uint8
  ``u = q + 128`` (``vpdpbusd`` wants one unsigned operand); the shift is
  undone exactly with ``acc - 128 * row_sums[i]`` where
  ``row_sums[i] = sum_k wq[i, k]``. AVX2: activations stay int8.
* Weights are packed in panels of 16 output rows, grouped by 4: byte
  ``wp[g, kq, p, 4*j + t] = wq[64*g + 16*p + j, 4*kq + t]``. One 64-byte load
  holds 4 consecutive k of 16 outputs, exactly what one ``vpdpbusd`` (or two
  AVX2 sequences) consumes against a broadcast of 4 activation bytes; the 4
  panels of a group sit side by side, so a task reads its weights as one
  sequential stream (what the hardware prefetcher likes best, and batch 1 is
  all about memory).
"""
from __future__ import annotations

import os
import platform

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .._jit import njit
from .kernels import quantize_rows_rows

__all__ = ["available", "pack_weights", "activation_format", "gemm", "gemv", "matmul_int32", "PANEL", "GROUP",
           "ROW_TILE"]

PANEL = 16  # output rows per packed panel (one int32 lane each)
GROUP = 4  # panels per group: 64 outputs, stored side by side for each k-quad (256 contiguous bytes)
ROW_TILE = 2  # activation rows per GEMM tile -> 2 rows x 4 panels = 8 accumulator registers


def _cpu_has(need) -> bool:
    """True when numba compiles for an x86-64 CPU with all the features in ``need``."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    name = numba.config.CPU_NAME
    if name not in (None, "", "host"):
        # numba targets a named CPU (e.g. for a portable cache): trust only its explicit features
        feats = numba.config.CPU_FEATURES or ""
        return all(f"+{f}" in feats for f in need)
    import llvmlite.binding as ll

    host = ll.get_host_cpu_features()
    return all(host.get(f, False) for f in need)


def available() -> tuple:
    """The instruction sets these kernels can use on this CPU, fastest first: a subset of ``("vnni", "avx2")``.

    Set ``PRUNEKIT_NO_VNNI=1`` to leave out VNNI (the AVX2 kernels then run on
    a VNNI machine), ``PRUNEKIT_NO_INT8_SIMD=1`` to leave out both (portable kernels only).
    """
    if os.environ.get("PRUNEKIT_NO_INT8_SIMD", "") not in ("", "0"):
        return ()
    out = []
    if os.environ.get("PRUNEKIT_NO_VNNI", "") in ("", "0") and _cpu_has(("avx512f", "avx512bw", "avx512vnni")):
        out.append("vnni")
    if _cpu_has(("avx2",)):
        out.append("avx2")
    return tuple(out)


# ----------------------------------------------------------------------------- SIMD type


class I32x16(types.Type):
    """One 512-bit register seen as 16 int32 lanes."""

    def __init__(self):
        super().__init__(name="i32x16")


i32x16 = I32x16()
_VEC = ir.VectorType(ir.IntType(32), 16)


@register_model(I32x16)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _elem_ptr(context, builder, arrty, arr, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [idx])


@intrinsic
def vzero(typingctx):
    """A register of zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_VEC, None)
    return i32x16(), codegen


@intrinsic
def vload(typingctx, arr, idx):
    """Load 64 bytes starting at element ``idx`` of the 1-D array ``arr``."""
    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(p, _VEC.as_pointer()), align=1)
    return i32x16(arr, idx), codegen


class Quads(types.Type):
    """4 activation bytes broadcast to all 16 lanes; ``signed`` picks the instruction set of :func:`vdot`."""

    def __init__(self, signed):
        self.signed = signed
        super().__init__(name="s8quads" if signed else "u8quads")


u8quads, s8quads = Quads(False), Quads(True)


@register_model(Quads)
class _QuadsModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def activation_format(flavour):
    """``(dtype, offset)`` of the activations that select ``flavour``: uint8 shifted by 128 for "vnni",
    int8 unshifted for "avx2". Inside the kernels, :func:`activation_offset` reads the same offset off the dtype."""
    return (np.uint8, 128) if flavour == "vnni" else (np.int8, 0)


def _quads_of(arr):
    if isinstance(arr, types.Array) and arr.dtype == types.uint8:
        return u8quads
    if isinstance(arr, types.Array) and arr.dtype == types.int8:
        return s8quads
    return None


@intrinsic
def vbroadcast4(typingctx, arr, idx):
    """Broadcast the 4 bytes at element ``idx`` of the uint8 or int8 array ``arr`` to all 16 lanes."""
    quads = _quads_of(arr)
    if quads is None:
        return None

    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        v = builder.load(builder.bitcast(p, ir.IntType(32).as_pointer()), align=1)
        zero = ir.Constant(ir.IntType(32), 0)
        vec = builder.insert_element(ir.Constant(_VEC, ir.Undefined), v, zero)
        return builder.shuffle_vector(vec, ir.Constant(_VEC, ir.Undefined), ir.Constant(_VEC, None))
    return quads(arr, idx), codegen


@intrinsic
def activation_offset(typingctx, arr):
    """128 for a uint8 (VNNI, shifted) activation array, 0 for an int8 (AVX2) one: a compile-time constant."""
    quads = _quads_of(arr)
    if quads is None:
        return None

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(32), 0 if quads.signed else 128)
    return types.int32(arr), codegen


_I8x32 = ir.VectorType(ir.IntType(8), 32)
_I16x16 = ir.VectorType(ir.IntType(16), 16)
_I32x8 = ir.VectorType(ir.IntType(32), 8)


def _call(builder, name, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def _avx2_dot(builder, acc, x, w):
    """acc + (4-byte dot products of x and w) with AVX2 only: the sign trick on each 256-bit half."""
    ones = ir.Constant(_I16x16, [1] * 16)
    halves = []
    for h in range(2):
        idx = ir.Constant(_I32x8, list(range(8 * h, 8 * h + 8)))
        xh = builder.bitcast(builder.shuffle_vector(x, ir.Constant(_VEC, ir.Undefined), idx), _I8x32)
        wh = builder.bitcast(builder.shuffle_vector(w, ir.Constant(_VEC, ir.Undefined), idx), _I8x32)
        ax = _call(builder, "llvm.x86.avx2.psign.b", _I8x32, [xh, xh])  # |x|, read as unsigned (-128 -> 128)
        sw = _call(builder, "llvm.x86.avx2.psign.b", _I8x32, [wh, xh])  # sign(x) * w, 0 where x == 0
        p16 = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _I16x16, [ax, sw])  # |pair| <= 2 * 128 * 127: exact
        halves.append(_call(builder, "llvm.x86.avx2.pmadd.wd", _I32x8, [p16, ones]))
    both = builder.shuffle_vector(halves[0], halves[1], ir.Constant(_VEC, list(range(16))))
    return builder.add(acc, both)


@intrinsic
def vdot(typingctx, acc, x, w):
    """acc[l] += sum_{t<4} x[4l+t] * s8(w[4l+t]) for the 16 lanes l.

    ``x`` from a uint8 array: one AVX-512 VNNI ``vpdpbusd``. ``x`` from an
    int8 array: the AVX2 sign trick (see the module docstring), also exact.
    """
    if not isinstance(x, Quads):
        return None

    def codegen(context, builder, sig, args):
        if x.signed:
            return _avx2_dot(builder, *args)
        return _call(builder, "llvm.x86.avx512.vpdpbusd.512", _VEC, list(args))
    return i32x16(i32x16, x, i32x16), codegen


@intrinsic
def vadd(typingctx, a, b):
    """Lane-wise int32 a + b (wrapping)."""
    def codegen(context, builder, sig, args):
        return builder.add(*args)
    return i32x16(i32x16, i32x16), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):
    """Store the 16 int32 lanes of ``v`` at element ``idx`` of the int32 array ``arr``."""
    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(p, _VEC.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.void(arr, idx, i32x16), codegen


# ----------------------------------------------------------------------------- packing


def pack_weights(q):
    """(N, K) int8 -> (flat packed weights, n_panels, n_quads); zero padding to whole groups and k-quads."""
    n, k = q.shape
    n_groups = -(-n // (PANEL * GROUP))
    n_quads = -(-k // 4)
    padded = np.zeros((n_groups * GROUP * PANEL, n_quads * 4), dtype=np.int8)
    padded[:n, :k] = q
    wp = padded.reshape(n_groups, GROUP, PANEL, n_quads, 4).transpose(0, 3, 1, 2, 4)
    return np.ascontiguousarray(wp).reshape(-1), n_groups * GROUP, n_quads


# ----------------------------------------------------------------------------- kernels


@njit(inline="always")
def _dequant_lanes(acc, a0, off, row_sums, sxb, sw, bias, has_bias, yb, o0, n_out):
    """y[o] = float32(acc[a0 + j] - off * row_sums[o]) * (sx[b] * sw[o]) (+ bias[o]) for the 16 lanes."""
    for j in range(PANEL):
        o = o0 + j
        if o < n_out:
            r = np.float32(np.int32(acc[a0 + j] - off * row_sums[o])) * (sxb * sw[o])  # int32 wraparound, as acc
            if has_bias:
                r += bias[o]
            yb[o] = r


@njit(parallel=True)
def gemm(xu, k4, wp, n_panels, n_quads, row_sums, sx, sw, bias, acc, y):
    """y = dequant(xu @ wq.T) for B = y.shape[0] rows; xu is (Bp * k4,) uint8 (VNNI) or int8 (AVX2), Bp a multiple of 2.

    One task = 2 activation rows x 1 group of 4 panels (64 outputs): 8 accumulator
    registers; per 4 k, 4 weight loads, 2 broadcasts, 8 vdot. Consecutive
    tasks share a group, so its 256 KB of weights stay in L2 while the rows go by.
    ``acc`` is int32 scratch (Bp * 16 * n_panels). With int8 ``xu`` (AVX2) the
    8 accumulators fill all 16 AVX2 registers, so some live in L1 instead.
    """
    off = activation_offset(xu)
    n_b, n_out = y.shape
    n_row_tiles = (n_b + ROW_TILE - 1) // ROW_TILE
    n_groups = n_panels // GROUP
    ld = n_panels * PANEL
    has_bias = bias.shape[0] > 0
    for t in numba.prange(n_groups * n_row_tiles):
        g = t // n_row_tiles
        b0 = (t % n_row_tiles) * ROW_TILE
        w = g * n_quads * 256
        x0 = b0 * k4
        x1 = x0 + k4
        a00 = vzero()
        a01 = vzero()
        a02 = vzero()
        a03 = vzero()
        a10 = vzero()
        a11 = vzero()
        a12 = vzero()
        a13 = vzero()
        for kq in range(n_quads):
            c = w + 256 * kq
            c0 = vload(wp, c)
            c1 = vload(wp, c + 64)
            c2 = vload(wp, c + 128)
            c3 = vload(wp, c + 192)
            v = vbroadcast4(xu, x0 + 4 * kq)
            a00 = vdot(a00, v, c0)
            a01 = vdot(a01, v, c1)
            a02 = vdot(a02, v, c2)
            a03 = vdot(a03, v, c3)
            v = vbroadcast4(xu, x1 + 4 * kq)
            a10 = vdot(a10, v, c0)
            a11 = vdot(a11, v, c1)
            a12 = vdot(a12, v, c2)
            a13 = vdot(a13, v, c3)
        o0 = g * GROUP * PANEL
        vstore(acc, b0 * ld + o0, a00)
        vstore(acc, b0 * ld + o0 + PANEL, a01)
        vstore(acc, b0 * ld + o0 + 2 * PANEL, a02)
        vstore(acc, b0 * ld + o0 + 3 * PANEL, a03)
        vstore(acc, (b0 + 1) * ld + o0, a10)
        vstore(acc, (b0 + 1) * ld + o0 + PANEL, a11)
        vstore(acc, (b0 + 1) * ld + o0 + 2 * PANEL, a12)
        vstore(acc, (b0 + 1) * ld + o0 + 3 * PANEL, a13)
        for b in range(b0, min(b0 + ROW_TILE, n_b)):
            for p in range(GROUP):
                _dequant_lanes(acc, b * ld + o0 + p * PANEL, off, row_sums, sx[b], sw, bias, has_bias, y[b],
                               o0 + p * PANEL, n_out)


@njit(parallel=True)
def gemv(x, xu, wp, n_panels, n_quads, row_sums, sx, sw, bias, acc, y):
    """y = dequant(wq @ quant(x)) for one float32 activation row ``x``, in one call.

    First (one thread, about a microsecond) ``x`` is quantized into the scratch
    ``xu`` (length 4 * n_quads; uint8 for VNNI, int8 for AVX2) and its scale
    ``sx[0]``; then one task = 1 group (64 outputs): per 4 k, 1 broadcast,
    4 weight loads from one sequential stream, 4 vdot. At batch 1 every weight
    byte is used once, so this runs at memory speed, and a separate quantization
    call would cost more than the quantization itself.
    """
    off = activation_offset(xu)
    quantize_rows_rows(0, 1, x.reshape(1, x.shape[0]), xu.reshape(1, xu.shape[0]), sx, off)
    n_out = y.shape[0]
    has_bias = bias.shape[0] > 0
    sxb = sx[0]
    for g in numba.prange(n_panels // GROUP):
        w = g * n_quads * 256
        a0 = vzero()
        a1 = vzero()
        a2 = vzero()
        a3 = vzero()
        for kq in range(n_quads):
            c = w + 256 * kq
            v = vbroadcast4(xu, 4 * kq)
            a0 = vdot(a0, v, vload(wp, c))
            a1 = vdot(a1, v, vload(wp, c + 64))
            a2 = vdot(a2, v, vload(wp, c + 128))
            a3 = vdot(a3, v, vload(wp, c + 192))
        o0 = g * GROUP * PANEL
        vstore(acc, o0, a0)
        vstore(acc, o0 + PANEL, a1)
        vstore(acc, o0 + 2 * PANEL, a2)
        vstore(acc, o0 + 3 * PANEL, a3)
        for p in range(GROUP):
            _dequant_lanes(acc, o0 + p * PANEL, off, row_sums, sxb, sw, bias, has_bias, y, o0 + p * PANEL, n_out)


@njit(parallel=True)
def matmul_int32(xu, k4, n_b, wp, n_panels, n_quads, row_sums, acc):
    """Exact int32 ``xq @ wq.T`` (B x n_panels*16); the VNNI shift by 128 undone. For tests."""
    off = activation_offset(xu)
    ld = n_panels * PANEL
    for t in numba.prange(n_b * n_panels):
        b = t // n_panels
        p = t % n_panels
        a = vzero()
        w0 = ((p // GROUP) * n_quads * GROUP + p % GROUP) * 64
        for kq in range(n_quads):
            a = vdot(a, vbroadcast4(xu, b * k4 + 4 * kq), vload(wp, w0 + 256 * kq))
        vstore(acc, b * ld + p * PANEL, a)
    for t in numba.prange(n_b):
        for o in range(row_sums.shape[0]):
            acc[t * ld + o] -= off * row_sums[o]
