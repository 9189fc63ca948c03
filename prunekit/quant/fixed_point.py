"""Requantization in integers: ``round(acc * M)`` with ``M = s_in * s_w / s_out`` and no float.

An int8 layer accumulates ``acc = sum (x_q - z_x) * w_q`` in int32. The real output
is ``s_x s_w acc``; in the output's own scale that is ``acc * M`` with the real number
``M = s_x s_w / s_y`` (almost always < 1). An integer-only runtime never multiplies by
a float: it writes ``M = m * 2^shift`` with ``m`` in [0.5, 1) stored as the int32
``m_fixed = round(m * 2^31)`` (Q31), and computes (Jacob et al. 2018, sec. 2.2):

    y = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc << max(shift, 0), m_fixed), max(-shift, 0))

* ``SaturatingRoundingDoublingHighMul(a, b)`` = ``round(a * b / 2^31)``, computed in 64
  bits, ties rounded up (nudge ``2^30`` or ``1 - 2^30`` then truncate); the one
  overflow, ``a = b = -2^31``, saturates to ``2^31 - 1``.
* ``RoundingDivideByPOT(x, e)`` = ``x / 2^e`` rounded to nearest, ties away from zero,
  with an arithmetic shift and a remainder test.

These are gemmlowp's functions, which TFLite calls ``MultiplyByQuantizedMultiplier``
and CMSIS-NN ``arm_nn_requantize`` (its default, double-rounding build; with
``CMSIS_NN_USE_SINGLE_ROUNDING`` it rounds once and can differ by 1 LSB on ties).
The result is at most one unit from ``round(acc * M)`` computed in exact arithmetic.

Then ``y + z_out`` is clamped to ``[qmin, qmax]`` (a fused ReLU clamps at ``z_out``).
:func:`requantize` does all of it per channel, as a numba kernel with the NumPy
reference :func:`requantize_reference` (same bits; tested).
"""
from __future__ import annotations

import numpy as np

from .._backend import use_numba
from .._jit import njit
from .._validate import check_array, fail

__all__ = ["quantize_multiplier", "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
           "multiply_by_quantized_multiplier", "requantize", "requantize_reference", "INT32_MIN", "INT32_MAX"]

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1

prange = range  # swapped for numba.prange when the kernel is compiled


def _round_away(x):
    """Round half away from zero (C's ``std::round``, which TFLite's ``TfLiteRound`` is)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_multiplier(real_multiplier):
    """``M -> (m_fixed, shift)`` with ``M ~= m_fixed * 2^(shift - 31)``, ``m_fixed`` in [2^30, 2^31) (TFLite's QuantizeMultiplier).

    Works element-wise on arrays (per-channel multipliers). ``M = 0`` gives ``(0, 0)``;
    a multiplier too small for 31 bits of shift (``M < 2^-31``) is flushed to ``(0, 0)``.
    Returns int32 arrays (or Python ints for a scalar).

    >>> quantize_multiplier(0.75)    # 0.75 = 0.75 * 2^0
    (1610612736, 0)
    >>> quantize_multiplier(0.1)     # 0.1 = 0.8 * 2^-3; round(0.8 * 2^31) = 1717986918
    (1717986918, -3)
    """
    m = np.asarray(real_multiplier, dtype=np.float64)
    if m.size == 0 or not np.isfinite(m).all() or (m < 0).any():
        fail("real_multiplier", "finite number(s) >= 0", real_multiplier)
    frac, shift = np.frexp(m)                      # m = frac * 2^shift, frac in [0.5, 1)
    q = _round_away(frac * 2.0 ** 31).astype(np.int64)
    top = q == 2 ** 31                             # frac rounded up to 1.0
    q = np.where(top, q // 2, q)
    shift = np.where(top, shift + 1, shift).astype(np.int64)
    tiny = (shift < -31) | (m == 0)
    q = np.where(tiny, 0, q)
    shift = np.where(tiny, 0, shift)
    if (shift > 30).any():
        fail("real_multiplier", "number(s) below 2^30 (the shift must fit in int32 arithmetic)", real_multiplier)
    if m.ndim == 0:
        return int(q), int(shift)
    return q.astype(np.int32), shift.astype(np.int32)


def saturating_rounding_doubling_high_mul(a, b):
    """``round(a * b / 2^31)`` for int32 ``a, b`` (ties up), saturating the single overflow case."""
    a64, b64 = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a64 * b64
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    r = ab + nudge
    high = np.where(r >= 0, r >> 31, -((-r) >> 31))  # C++ division truncates toward zero
    overflow = (a64 == b64) & (a64 == INT32_MIN)
    return np.where(overflow, INT32_MAX, high).astype(np.int32)


def rounding_divide_by_pot(x, exponent):
    """``x / 2^exponent`` rounded to nearest, ties away from zero (``exponent`` in [0, 31])."""
    e = np.asarray(exponent, np.int64)
    if e.size and (e.min() < 0 or e.max() > 31):
        fail("exponent", "integers in [0, 31]", exponent)
    x64 = np.asarray(x, np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0)
    return ((x64 >> e) + (remainder > threshold)).astype(np.int32)


def multiply_by_quantized_multiplier(x, multiplier, shift):
    """TFLite's MultiplyByQuantizedMultiplier: ``x * m_fixed * 2^(shift - 31)`` in integers, rounded.

    A left shift (``shift > 0``) saturates to int32 here; TFLite leaves that overflow
    undefined (it never happens for requantization, where ``M < 1``).
    """
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    xs = np.clip(np.asarray(x, np.int64) << left, INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(xs, multiplier), right)


def requantize_reference(acc, multiplier, shift, zero_point, qmin, qmax, out):
    """NumPy reference of :func:`requantize_kernel`: ``out = clamp(MBQM(acc, m, s) + zp, qmin, qmax)``.

    ``acc`` (N, C) int32; ``multiplier``, ``shift`` (C,) int32 (one per channel, the last axis).
    """
    y = multiply_by_quantized_multiplier(acc, multiplier[None, :], shift[None, :]).astype(np.int64) + zero_point
    out[...] = np.clip(y, qmin, qmax)


@njit(inline="always")
def requantize_value(acc, multiplier, shift, zero_point, qmin, qmax):
    """One accumulator: ``clamp(MBQM(acc, multiplier, shift) + zero_point, qmin, qmax)`` (the loop body
    of every requantizing kernel). Element-wise NumPy twin: :func:`requantize_reference`.

    ``inline="always"``: numba pastes it into the calling loop, which can then be vectorized; as a
    call it was 3x slower (measured: 7.7 vs 2.6 us for LeNet-5's first conv, 6 x 28 x 28 values)."""
    m = np.int64(multiplier)
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    x = np.int64(acc) << left
    if x > 2147483647:
        x = 2147483647
    elif x < -2147483648:
        x = -2147483648
    # SaturatingRoundingDoublingHighMul
    if x == -2147483648 and m == -2147483648:
        h = np.int64(2147483647)
    else:
        ab = x * m
        nudge = np.int64(1 << 30) if ab >= 0 else np.int64(1 - (1 << 30))
        r = ab + nudge
        h = (r >> 31) if r >= 0 else -((-r) >> 31)
    # RoundingDivideByPOT
    mask = (np.int64(1) << right) - 1
    rem = h & mask
    thr = (mask >> 1) + (1 if h < 0 else 0)
    y = (h >> right) + (1 if rem > thr else 0) + zero_point
    if y < qmin:
        y = qmin
    elif y > qmax:
        y = qmax
    return y


@njit(parallel=True, reference=requantize_reference)
def requantize_kernel(acc, multiplier, shift, zero_point, qmin, qmax, out):
    """Per-channel requantization of int32 accumulators to int8/int16, one row per task."""
    n, c = acc.shape
    for i in prange(n):
        for j in range(c):
            out[i, j] = requantize_value(acc[i, j], multiplier[j], shift[j], zero_point, qmin, qmax)


def requantize(acc, multiplier, shift, zero_point, qmin=-128, qmax=127, out_dtype=np.int8):
    """int32 accumulators (N, C) -> ``clamp(round(acc * M_c) + zero_point, qmin, qmax)`` in integers.

    ``M_c = multiplier[c] * 2^(shift[c] - 31)`` per channel ``c`` (last axis), from
    :func:`quantize_multiplier`. Runs the numba kernel, or its NumPy reference under
    ``pk.backend("numpy")``; both give the same integers.
    """
    check_array("acc", acc, ndim=2)
    if acc.dtype != np.int32:
        fail("acc", "an int32 array (the accumulators)", str(acc.dtype), TypeError)
    c = acc.shape[1]
    multiplier = np.ascontiguousarray(np.broadcast_to(np.asarray(multiplier, np.int32), (c,)))
    shift = np.ascontiguousarray(np.broadcast_to(np.asarray(shift, np.int32), (c,)))
    out = np.empty(acc.shape, dtype=out_dtype)
    kernel = requantize_kernel.for_work(acc.size) if use_numba() else requantize_kernel
    kernel(np.ascontiguousarray(acc), multiplier, shift, int(zero_point), int(qmin), int(qmax), out)
    return out
