"""One small helper for argument checks, so every error message has the same shape.

    def prune(model, amount): check_number("amount", amount, low=0, high=1)
    prune(model, 1.2)
    ValueError: prune(): amount must be a number in the range [0, 1], got 1.2.

The message names the public function the user called (found on the call stack:
the outermost prunekit function whose name does not start with ``_``; a
constructor is named by its class), the argument, what was expected and what was given. ``got`` is
shown with ``repr`` unless it is already a description (a ``str``, such as
``"shape (2, 4)"``); the ``check_*`` helpers pass the user's value through ``repr``.
"""
from __future__ import annotations

import numbers
import sys

import numpy as np

__all__ = ["check_number", "check_int", "check_option", "check_array", "fail", "caller"]

_INTERNAL = {"<module>", "<lambda>", "<genexpr>", "<listcomp>", "<dictcomp>"}


def caller(skip=0) -> str:
    """Name of the public prunekit function the user called (``"prune()"``, ``"SGD()"``, ...).

    Walks up the stack through prunekit's own frames and keeps the outermost one
    whose name is public (not ``_name``); a constructor is named by its class. It
    stops at the first frame outside prunekit (the user's code).
    """
    frame = sys._getframe(1 + skip)
    found = None
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("prunekit"):
        code = frame.f_code
        name = code.co_name
        if name not in _INTERNAL and frame.f_globals.get("__name__") != __name__:
            qual = getattr(code, "co_qualname", name).replace(".<locals>", "")  # 3.11+: with the class
            if name == "__init__":
                owner = frame.f_locals.get("self")
                found = f"{type(owner).__name__ if owner is not None else qual.rsplit('.', 1)[0]}()"
            elif name == "__call__" or not name.startswith("_"):
                found = f"{qual}()"
        frame = frame.f_back
    return found or "prunekit"


def fail(name, expected, got, exc=ValueError, where=None):
    """Raise ``exc``: "<where>: <name> must be <expected>, got <got>." (``where`` found on the stack)."""
    where = where or caller(1)
    shown = got if isinstance(got, str) else repr(got)
    raise exc(f"{where}: {name} must be {expected}, got {shown}.")


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
        fail(name, kind, repr(value), TypeError)
    if not np.isfinite(value):
        fail(name, f"a finite {kind[2:] if integer else 'number'}", repr(value), ValueError)
    lo_ok = low is None or (value >= low if closed[0] == "[" else value > low)
    hi_ok = high is None or (value <= high if closed[1] == "]" else value < high)
    if not (lo_ok and hi_ok):
        fail(name, f"{kind} in the range {_interval(low, high, closed)}", repr(value), ValueError)
    return value


def check_int(name, value, low=None, high=None):
    """Shorthand for an integer in ``[low, high]``."""
    return check_number(name, value, low, high, "[]", integer=True)


def check_option(name, value, options):
    """Check that ``value`` is one of ``options``; return it."""
    try:
        ok = value in options
    except TypeError:  # e.g. an unhashable value against a dict of options
        ok = False
    if not ok:
        opts = ", ".join(repr(o) for o in options)
        fail(name, f"one of {{{opts}}}", repr(value), ValueError, caller(1))
    return value


def check_array(name, value, ndim=None, dtype_kind=None):
    """Check an ndarray's number of dimensions and dtype kind ('f', 'i', 'iu', ...)."""
    if not isinstance(value, np.ndarray):
        fail(name, "a numpy.ndarray", type(value).__name__, TypeError)
    if ndim is not None and value.ndim not in np.atleast_1d(ndim):
        fail(name, f"an array with ndim {ndim}", f"shape {value.shape}", ValueError)
    if dtype_kind is not None and value.dtype.kind not in dtype_kind:
        fail(name, f"an array of dtype kind {dtype_kind!r}", str(value.dtype), TypeError)
    return value
