"""Affine (scale, zero-point) quantization: the number format every int8 runtime uses.

A real value ``r`` is stored as an integer ``q`` with

    r ~= scale * (q - zero_point),      q = clamp(round(r / scale) + zero_point, qmin, qmax)

(Jacob et al. 2018, eq. 1; the TFLite 8-bit quantization specification; PyTorch's
observers and ONNX's QuantizeLinear use the same formula). Two flavours:

* symmetric (weights): ``q`` in ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (for int8 [-127, 127]),
  ``zero_point = 0``, ``scale = max|x| / qmax``. The zero point being 0 is what keeps
  the integer matmul cheap: no ``zero_point * sum(x)`` correction per output.
* asymmetric (activations): ``q`` in ``[-2^(b-1), 2^(b-1) - 1]`` (int8 [-128, 127]); the
  range ``[min, max]`` is first widened to contain 0, so that 0 (ReLU's output, zero
  padding) is represented exactly; ``scale = (max - min) / (qmax - qmin)`` and
  ``zero_point = qmin - round(min / scale)``, clamped to ``[qmin, qmax]``.

``axis`` gives one (scale, zero_point) per slice along that axis (per-channel, as TFLite's
``quantized_dimension``: the output channel of a conv or linear weight).

Rounding is to nearest with ties to even (``np.rint``), as ONNX QuantizeLinear and
PyTorch do (TFLite's reference kernels round ties away from zero; the two differ only
when ``r / scale`` is exactly half-way between two integers). ``r / scale`` is computed
in float32 for float32 input, as ONNX Runtime does, so the integers agree bit for bit.
"""
from __future__ import annotations

import numbers

import numpy as np

from .._validate import check_array, check_int, fail

__all__ = ["qrange", "quant_params", "quantize", "dequantize", "int_dtype", "fake_quantize"]

MIN_BITS, MAX_BITS = 2, 16


def _check_bits(bits):
    return check_int("bits", bits, MIN_BITS, MAX_BITS)


def qrange(bits=8, symmetric=True) -> tuple:
    """``(qmin, qmax)`` of a ``bits``-bit signed integer: symmetric drops the most negative value.

    >>> qrange(8, symmetric=True), qrange(8, symmetric=False)
    ((-127, 127), (-128, 127))
    """
    _check_bits(bits)
    top = 2 ** (bits - 1) - 1
    return (-top if symmetric else -top - 1), top


def int_dtype(bits):
    """The smallest NumPy signed integer type holding ``bits`` bits (int8 up to 8, else int16)."""
    return np.dtype(np.int8) if _check_bits(bits) <= 8 else np.dtype(np.int16)


def _check_axis(axis, ndim):
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        fail("axis", "None or an int", axis, TypeError)
    if not -ndim <= axis < ndim:
        fail("axis", f"None or an axis of the array (in [{-ndim}, {ndim - 1}] for {ndim}-D input)", axis)
    return int(axis) % ndim


def _as_float(name, x):
    x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.dtype.kind == "b":
        fail(name, "an array of real numbers", str(x.dtype), TypeError)
    if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
        fail(name, "an array of finite numbers (no NaN or inf)", "an array with NaN or inf")
    return x


MIN_SCALE = float(np.finfo(np.float32).eps)
"""The smallest scale we hand out (PyTorch's observers clamp to the same float32 eps): a range
narrower than that (e.g. denormal values) would give a scale that rounds to 0 in float32."""


def _usable(scale):
    """1 where the range is empty (any scale represents 0 exactly), at least MIN_SCALE elsewhere."""
    return np.where(scale > 0, np.maximum(scale, MIN_SCALE), 1.0)


def quant_params(x, bits=8, symmetric=True, axis=None):
    """``(scale, zero_point)`` that quantize ``x`` to ``bits``-bit integers (TFLite int8 rules).

    Per tensor (``axis=None``): a Python ``float`` (a float32 value) and an ``int``.
    Per channel: a float32 array and an int32 array, one entry per slice along ``axis``.
    An all-zero tensor (or channel) gets ``scale = 1`` (any scale represents 0 exactly).

    quant_params([-1.0, 0.5, 2.54])                  # symmetric: scale 2.54 / 127 = 0.02, zero point 0
    quant_params([-0.55, 2.0], symmetric=False)      # asymmetric: scale 2.55 / 255 = 0.01,
                                                     # zero point -128 - round(-0.55 / 0.01) = -73
    """
    x = _as_float("x", x)
    _check_bits(bits)
    if not isinstance(symmetric, (bool, np.bool_)):
        fail("symmetric", "True or False", symmetric, TypeError)
    ax = _check_axis(axis, x.ndim)
    if x.size == 0:
        fail("x", "a non-empty array", f"shape {x.shape}")
    reduce = None if ax is None else tuple(i for i in range(x.ndim) if i != ax)
    x64 = x.astype(np.float64)
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        amax = np.abs(x64).max(axis=reduce)
        scale = _usable(amax / qmax)
        zero = np.zeros(np.shape(scale), np.int64)
    else:
        lo = np.minimum(x64.min(axis=reduce), 0.0)
        hi = np.maximum(x64.max(axis=reduce), 0.0)
        scale = _usable((hi - lo) / (qmax - qmin))
        zero = np.clip(qmin - np.rint(lo / scale), qmin, qmax).astype(np.int64)
    scale = scale.astype(np.float32)
    if ax is None:
        return float(scale), int(zero)
    return scale, zero.astype(np.int32)


def _broadcast(p, x, axis, name):
    """Per-channel parameter ``p`` shaped to broadcast against ``x`` along ``axis``."""
    p = np.asarray(p)
    if p.ndim == 0 or p.size == 1 and axis is None:
        return p.reshape(())
    if axis is None:
        fail("axis", f"the axis of x that the {p.size} values of '{name}' run along (per-channel "
             f"parameters need one)", None)
    ax = _check_axis(axis, x.ndim)
    if p.ndim != 1 or p.shape[0] != x.shape[ax]:
        fail(name, f"a scalar or one value per slice of axis {axis} ({x.shape[ax]} values)", f"shape {p.shape}")
    shape = [1] * x.ndim
    shape[ax] = -1
    return p.reshape(shape)


def _check_scale(scale):
    s = np.asarray(scale)
    if s.dtype.kind not in "fiu" or s.size == 0 or not (np.isfinite(s).all() and (s > 0).all()):
        fail("scale", "positive finite number(s)", scale if s.ndim == 0 else f"array {s!r}")
    return s


def quantize(x, scale, zero_point, bits=8, *, axis=None, narrow_range=False):
    """``clamp(round(x / scale) + zero_point, qmin, qmax)`` as int8 (bits <= 8) or int16.

    ``qmin, qmax`` are the full range ``[-2^(b-1), 2^(b-1) - 1]``; ``narrow_range=True``
    uses the symmetric range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (TensorFlow's name for it).
    Per-channel ``scale`` / ``zero_point`` arrays need ``axis``.
    """
    x = _as_float("x", x)
    _check_bits(bits)
    s = _broadcast(_check_scale(scale), x, axis, "scale")
    z = _broadcast(np.asarray(zero_point), x, axis, "zero_point")
    if z.dtype.kind not in "iu":
        fail("zero_point", "integer(s)", zero_point if z.ndim == 0 else str(z.dtype), TypeError)
    qmin, qmax = qrange(bits, symmetric=bool(narrow_range))
    if z.size and (z.min() < -2 ** (bits - 1) or z.max() > qmax):
        fail("zero_point", f"integer(s) in [{-2 ** (bits - 1)}, {qmax}] for {bits} bits", zero_point)
    ft = np.float32 if x.dtype == np.float32 else np.float64
    r = np.rint(x.astype(ft, copy=False) / s.astype(ft))
    q = np.clip(r + z.astype(ft), qmin, qmax)
    return q.astype(int_dtype(bits))


def dequantize(q, scale, zero_point, *, axis=None):
    """``scale * (q - zero_point)`` as float32 (per-channel parameters need ``axis``)."""
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        fail("q", "an array of integers", str(q.dtype), TypeError)
    s = _broadcast(_check_scale(scale), q, axis, "scale").astype(np.float32)
    z = _broadcast(np.asarray(zero_point), q, axis, "zero_point").astype(np.int32)
    return ((q.astype(np.int32) - z).astype(np.float32) * s).astype(np.float32)


def fake_quantize(x, scale, zero_point, bits=8, *, axis=None, narrow_range=False):
    """``dequantize(quantize(x))``: the float value the integer model will see (for QAT and checks)."""
    q = quantize(x, scale, zero_point, bits, axis=axis, narrow_range=narrow_range)
    return dequantize(q, scale, zero_point, axis=axis)


def check_int_array(name, q):
    """Internal helper: ``q`` must be an integer ndarray (for the integer-only modules)."""
    check_array(name, q)
    if q.dtype.kind not in "iu":
        fail(name, "an array of integers (the integer-only forward takes no float)", str(q.dtype), TypeError)
    return q
