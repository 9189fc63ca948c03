"""Check functions for the exercises of notebook 08 (quantization): each returns True or False and says why.

They compare a learner's function with the library's on cases chosen to catch the
usual mistakes (a range that does not contain 0; a float multiply where the
integer pipeline rounds twice).
"""
from __future__ import annotations

import numpy as np

from .affine import quant_params
from .fixed_point import quantize_multiplier, requantize

__all__ = ["check_asymmetric_params", "check_integer_requantize"]


def _say(ok, msg):
    print(("Correct! " if ok else "Not yet: ") + msg)
    return ok


def check_asymmetric_params(fn) -> bool:
    """Exercise 1: ``fn(x, bits) -> (scale, zero_point)``, asymmetric TFLite rules, per tensor."""
    cases = [
        (np.array([-0.55, 2.0]), 8),
        (np.array([0.5, 3.05]), 8),           # all positive: the range must be widened to include 0
        (np.array([-2.55, -1.0]), 8),         # all negative
        (np.linspace(-1, 3, 50), 4),
        (np.random.default_rng(0).standard_normal(100) * 5 + 2, 6),
    ]
    for x, bits in cases:
        try:
            got = fn(x.copy(), bits)
            if got is None or got[0] is None or got[1] is None:
                return _say(False, "your function returned None (write it in the cell above).")
            s, z = float(got[0]), int(got[1])
        except Exception as e:  # the learner's code may fail in any way; report it
            return _say(False, f"your function raised {type(e).__name__}: {e} (for bits={bits}).")
        es, ez = quant_params(x, bits=bits, symmetric=False)
        if not (abs(s - es) <= 1e-6 * es and z == ez):
            return _say(False, f"for x in [{x.min():.3g}, {x.max():.3g}] and {bits} bits you gave scale {s:.6g}, "
                               f"zero point {z}; expected scale {es:.6g}, zero point {ez}. Did you widen the "
                               f"range to include 0 and clamp the zero point to [qmin, qmax]?")
    return _say(True, "your parameters match quant_params(x, bits, symmetric=False) on every case.")


def check_integer_requantize(fn) -> bool:
    """Exercise 2: ``fn(acc, real_multiplier, zero_point) -> int8`` with TFLite's integer arithmetic."""
    rng = np.random.default_rng(1)
    cases = [
        (np.array([1, 3, -3, 1000, -1000, 5], np.int32), 0.25, 0),      # ties: the integer path rounds twice
        (rng.integers(-(2 ** 20), 2 ** 20, 200).astype(np.int32), 0.0123, -7),
        (rng.integers(-5000, 5000, 200).astype(np.int32), 0.0371, 12),
    ]
    for acc, real, zp in cases:
        m, shift = quantize_multiplier(real)
        expect = requantize(acc.reshape(-1, 1), m, shift, zp).ravel()
        try:
            got = np.asarray(fn(acc.copy(), real, zp))
        except Exception as e:
            return _say(False, f"your function raised {type(e).__name__}: {e}.")
        if got.shape != expect.shape or got.dtype != np.int8:
            return _say(False, f"expected an int8 array of shape {expect.shape}, got {got.dtype} {got.shape}.")
        if not np.array_equal(got, expect):
            i = int(np.flatnonzero(got != expect)[0])
            return _say(False, f"acc={acc[i]}, M={real}: you gave {got[i]}, the integer pipeline gives "
                               f"{expect[i]}. Use quantize_multiplier and multiply_by_quantized_multiplier "
                               f"(a float round(acc * M) differs on ties), then add the zero point and clamp.")
    return _say(True, "bit for bit what TFLite's MultiplyByQuantizedMultiplier + zero point + clamp gives.")
