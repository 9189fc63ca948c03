"""One small helper for argument checks, so every error message has the same shape.

    check_number("amount", 1.2, low=0, high=1)
    ValueError: The 'amount' parameter must be a number in the range [0, 1]. Got 1.2 instead.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["check_number", "check_int", "check_option", "check_array", "fail"]


def fail(name, expected, got, exc=ValueError):
    """Raise ``exc`` with the standard message for argument ``name``."""
    raise exc(f"The '{name}' parameter must be {expected}. Got {got!r} instead.")


def _interval(low, high, closed):
    left = "[" if closed[0] == "[" else "("
    right = "]" if closed[1] == "]" else ")"
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    return f"{left}{lo}, {hi}{right}"


def check_number(name, value, low=None, high=None, closed="[]", integer=False):
    """Check that ``value`` is a real number (or int) within the interval; return it.

    ``closed`` is two characters, e.g. ``"[)"`` for low <= value < high.
    """
    kind = "an int" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type:
        fail(name, kind, value, TypeError)
    if not np.isfinite(value):
        fail(name, f"a finite {kind[2:] if integer else 'number'}", value)
    lo_ok = low is None or (value >= low if closed[0] == "[" else value > low)
    hi_ok = high is None or (value <= high if closed[1] == "]" else value < high)
    if not (lo_ok and hi_ok):
        fail(name, f"{kind} in the range {_interval(low, high, closed)}", value)
    return value


def check_int(name, value, low=None, high=None):
    """Shorthand for an integer in ``[low, high]``."""
    return check_number(name, value, low, high, "[]", integer=True)


def check_option(name, value, options):
    """Check that ``value`` is one of ``options``; return it."""
    if value not in options:
        opts = ", ".join(repr(o) for o in options)
        fail(name, f"one of {{{opts}}}", value)
    return value


def check_array(name, value, ndim=None, dtype_kind=None):
    """Check an ndarray's number of dimensions and dtype kind ('f', 'i', 'iu', ...)."""
    if not isinstance(value, np.ndarray):
        fail(name, "a numpy.ndarray", type(value).__name__, TypeError)
    if ndim is not None and value.ndim not in np.atleast_1d(ndim):
        fail(name, f"an array with ndim {ndim}", f"shape {value.shape}")
    if dtype_kind is not None and value.dtype.kind not in dtype_kind:
        fail(name, f"an array of dtype kind {dtype_kind!r}", str(value.dtype), TypeError)
    return value
