"""The int8 layers' fused kernels, each with the NumPy reference it is tested against.

Why fused (issue 12): at batch 1 an int8 LeNet layer does a few microseconds of
arithmetic, but the step-by-step path (int8 matmul kernel, ``+ bias``, :func:`requantize`
with its argument checks, and for a convolution also ``np.pad``, im2col and a transpose)
spent most of its time in the Python and NumPy calls between the steps. Here each
layer is one kernel call that reads int8 and writes int8:

* :func:`linear_requantize_kernel`: ``clamp(MBQM(x_q W_q^T + bias, m, shift) + z_y, lo, hi)``;
* :func:`conv_requantize_kernel`: the same for a convolution, computed directly on the
  input (padded with ``z_x`` in a small buffer, no im2col matrix), NCHW in and out;
* :func:`quantize_input_kernel`: the model's float -> int8 input step.

The references are the unfused steps themselves (the code a learner reads in
:mod:`~prunekit.quant.modules`' docstring); the integers are the same bit for bit.
Under ``pk.backend("numpy")`` the references run. The kernels are single-threaded:
the layers use them below :data:`~prunekit.quant.modules.SERIAL_MATMUL_WORK`
multiply-adds and the parallel int8 matmul above it.
"""
from __future__ import annotations

import numpy as np

from .. import _conv_kernels
from .._jit import njit
from .fixed_point import requantize_reference, requantize_value

__all__ = ["linear_requantize_reference", "linear_requantize_kernel", "conv_requantize_reference",
           "conv_requantize_kernel", "quantize_input_reference", "quantize_input_kernel"]


# --------------------------------------------------------------------------- linear


def linear_requantize_reference(xq, wq, bias, multiplier, shift, zero_point, qmin, qmax, out):
    """``out = requantize(xq @ wq.T + bias)``: int8 (B, K) and (C, K), int32 bias (C,) -> int8 (B, C)."""
    from ..sparse.kernels import int8_matmul_int32_reference

    acc = int8_matmul_int32_reference(xq, wq) + bias  # int32, wraps like the kernel's accumulator
    requantize_reference(acc, multiplier, shift, zero_point, qmin, qmax, out)


@njit(reference=linear_requantize_reference)
def linear_requantize_kernel(xq, wq, bias, multiplier, shift, zero_point, qmin, qmax, out):
    """int8 matmul, int32 bias and per-channel requantization in one pass (one thread)."""
    n_b, n_k = xq.shape
    for b in range(n_b):
        x = xq[b]
        for i in range(wq.shape[0]):
            w = wq[i]
            acc = np.int32(0)
            for k in range(n_k):
                acc += np.int32(x[k]) * np.int32(w[k])
            out[b, i] = requantize_value(np.int32(acc + bias[i]), multiplier[i], shift[i], zero_point, qmin, qmax)


# --------------------------------------------------------------------------- convolution


def conv_requantize_reference(xq, wq, bias, in_zero_point, kh, kw, sh, sw, ph, pw, multiplier, shift,
                              zero_point, qmin, qmax, out):
    """Pad ``xq`` (N, C, H, W) with ``in_zero_point``, im2col, :func:`linear_requantize_reference`, back to NCHW.

    ``wq`` is the (O, C*kh*kw) int8 weight (``weight.reshape(O, -1)``); ``out`` (N, O, OH, OW) int8.
    """
    n, o, oh, ow = out.shape
    xp = np.pad(xq, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=in_zero_point)
    cols = np.ascontiguousarray(_conv_kernels.im2col_reference(xp, kh, kw, sh, sw, 0, 0).T)  # (N*OH*OW, C*kh*kw)
    y = np.empty((cols.shape[0], o), out.dtype)
    linear_requantize_reference(cols, wq, bias, multiplier, shift, zero_point, qmin, qmax, y)
    out[...] = y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)


@njit(reference=conv_requantize_reference)
def conv_requantize_kernel(xq, wq, bias, in_zero_point, kh, kw, sh, sw, ph, pw, multiplier, shift,
                           zero_point, qmin, qmax, out):
    """Direct int8 convolution + bias + requantization on a flat padded image (one thread).

    Each sample is copied once into a flat int32 buffer ``xp`` (C, Hp*Wp) padded with ``in_zero_point``.
    With positions ``p = row * Wp + col``, weight tap ``(a, b)`` of output position ``p`` reads
    ``xp[c, p + a*Wp + b]``: so every tap is one long loop over ``p`` that reads and writes memory in
    order (what makes it fast). The accumulators are computed at stride 1 on the padded width (the
    last ``kw - 1`` columns of each row are discarded), and the strided output positions are
    requantized from them.

    Four output channels share each pass over ``xp`` (the last group repeats the last channel and
    drops the copies): half the time of one channel per pass for LeNet-5's second conv (measured,
    15 vs 28 us), where the loop's own cost, once per tap, is most of the work.
    """
    n_, c_, h, w = xq.shape
    o_, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    hp, wp = h + 2 * ph, w + 2 * pw
    span = ((oh - 1) * sh + 1) * wp  # the stride-1 positions covering every output row
    xp = np.full((c_, hp * wp + kw), in_zero_point, np.int32)  # + kw: the discarded columns read past the end
    acc = np.empty((4, span), np.int32)
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    for n in range(n_):
        for c in range(c_):
            for y in range(h):
                for x in range(w):
                    xp[c, (y + ph) * wp + x + pw] = xq[n, c, y, x]
        for o0 in range(0, o_, 4):
            o1, o2, o3 = min(o0 + 1, o_ - 1), min(o0 + 2, o_ - 1), min(o0 + 3, o_ - 1)
            a0[:], a1[:], a2[:], a3[:] = bias[o0], bias[o1], bias[o2], bias[o3]
            for c in range(c_):
                xc = xp[c]
                for a in range(kh):
                    for b in range(kw):
                        k = (c * kh + a) * kw + b
                        w0, w1 = np.int32(wq[o0, k]), np.int32(wq[o1, k])
                        w2, w3 = np.int32(wq[o2, k]), np.int32(wq[o3, k])
                        xs = xc[a * wp + b:]  # (a slice: indexing it with p alone lets the loop vectorize)
                        for p in range(span):
                            v = xs[p]
                            a0[p] += w0 * v
                            a1[p] += w1 * v
                            a2[p] += w2 * v
                            a3[p] += w3 * v
            for g in range(min(4, o_ - o0)):
                o = o0 + g
                m, s, ag = multiplier[o], shift[o], acc[g]
                for i in range(oh):
                    arow, orow = ag[i * sh * wp:], out[n, o, i]
                    if sw == 1:  # (a separate loop: reading arow[j] in order lets it vectorize, 3x faster)
                        for j in range(ow):
                            orow[j] = requantize_value(arow[j], m, s, zero_point, qmin, qmax)
                    else:
                        for j in range(ow):
                            orow[j] = requantize_value(arow[j * sw], m, s, zero_point, qmin, qmax)


# --------------------------------------------------------------------------- input


def quantize_input_reference(x, scale, zero_point, out):
    """``out = clamp(rint(x / scale) + zero_point, -128, 127)`` in float32, as int8 (what
    :func:`~prunekit.quant.affine.quantize` computes); returns False if ``x`` holds a NaN or inf."""
    if not np.isfinite(x).all():
        return False
    out[...] = np.clip(np.rint(x / scale) + np.float32(zero_point), -128, 127)
    return True


@njit(reference=quantize_input_reference)
def quantize_input_kernel(x, scale, zero_point, out):
    """float32 ``x`` (1-D) -> int8 ``out`` with a float32 ``scale``; False (and ``out`` unfinished) on NaN/inf."""
    z = np.float32(zero_point)
    for i in range(x.shape[0]):
        if not np.isfinite(x[i]):
            return False
    for i in range(x.shape[0]):
        v = np.rint(x[i] / scale) + z
        if v < np.float32(-128):
            v = np.float32(-128)
        elif v > np.float32(127):
            v = np.float32(127)
        out[i] = np.int8(v)
    return True
