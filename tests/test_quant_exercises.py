"""Notebook 08's check cells accept a reference solution and reject typical wrong ones."""
import json
import re
from pathlib import Path

import numpy as np

from prunekit.quant import exercises, fixed_point


def ref_params(x, bits):
    qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / (qmax - qmin)
    return np.float32(scale), int(np.clip(qmin - round(lo / scale), qmin, qmax))


def no_zero_widening(x, bits):  # forgets to include 0 in the range
    qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    lo, hi = float(x.min()), float(x.max())
    scale = (hi - lo) / (qmax - qmin)
    return scale, int(np.clip(qmin - round(lo / scale), qmin, qmax))


def symmetric_instead(x, bits):
    return float(np.abs(x).max() / (2 ** (bits - 1) - 1)), 0


def ref_requantize(acc, real, zp):
    m, s = fixed_point.quantize_multiplier(real)
    y = fixed_point.multiply_by_quantized_multiplier(acc, m, s).astype(np.int64) + zp
    return np.clip(y, -128, 127).astype(np.int8)


def float_requantize(acc, real, zp):  # the float shortcut: differs on ties
    return np.clip(np.rint(acc * real) + zp, -128, 127).astype(np.int8)


def no_clamp(acc, real, zp):
    m, s = fixed_point.quantize_multiplier(real)
    return (fixed_point.multiply_by_quantized_multiplier(acc, m, s) + zp).astype(np.int8)  # wraps around


def test_exercise_1_accepts_the_reference_and_rejects_mistakes(capsys):
    assert exercises.check_asymmetric_params(ref_params)
    assert "Correct" in capsys.readouterr().out
    assert not exercises.check_asymmetric_params(no_zero_widening)
    assert "include 0" in capsys.readouterr().out
    assert not exercises.check_asymmetric_params(symmetric_instead)
    assert not exercises.check_asymmetric_params(lambda x, bits: (None, None))  # the notebook's stub
    assert not exercises.check_asymmetric_params(lambda x, bits: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_exercise_2_accepts_the_reference_and_rejects_mistakes(capsys):
    assert exercises.check_integer_requantize(ref_requantize)
    assert not exercises.check_integer_requantize(float_requantize)
    assert "ties" in capsys.readouterr().out
    assert not exercises.check_integer_requantize(no_clamp)
    assert not exercises.check_integer_requantize(lambda acc, real, zp: np.zeros(acc.shape, np.int8))  # the stub


def test_notebook_08_exercise_stubs_are_the_ones_checked_here():
    nb = json.load(open(Path(__file__).resolve().parent.parent / "notebooks" / "08_edge_quantization.ipynb"))
    src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "exercises.check_asymmetric_params(my_asymmetric_params)" in src
    assert "exercises.check_integer_requantize(my_requantize)" in src
    assert len(re.findall("# YOUR CODE HERE", src)) == 2
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")  # stored without outputs
