"""Notebook 07's and 08's exercise checks reject the typical mistakes, each with the hint that fixes it.

(tests/test_exercises.py holds every check to its reference solution and one wrong answer;
here are the further wrong answers these exercises were designed to catch.)
"""
import numpy as np
import pytest

from prunekit import exercises
from prunekit.quant import fixed_point

from exercise_solutions import SOLUTIONS


def _rejects(id, answer, hint):
    verdict = exercises.check(id, answer)
    assert not verdict.ok and "not yet" in verdict.message, verdict.message
    assert hint in verdict.message, verdict.message


def test_08_1_asymmetric_params_catches_symmetric_and_crashing_answers():
    _rejects("08.1", SOLUTIONS["08.1"][1], "include 0")                       # the range not widened
    _rejects("08.1", lambda x, bits: (float(np.abs(x).max() / (2 ** (bits - 1) - 1)), 0), "expected scale")
    _rejects("08.1", lambda x, bits: 1 / 0, "ZeroDivisionError")
    assert "not answered yet" in exercises.check("08.1", lambda x, bits: (None, None)).message   # the stub


def test_08_2_requantize_catches_the_float_shortcut_and_a_missing_clamp():
    _rejects("08.2", SOLUTIONS["08.2"][1], "ties")

    def no_clamp(acc, real, zp):                                              # wraps around instead of clamping
        m, s = fixed_point.quantize_multiplier(real)
        return (fixed_point.multiply_by_quantized_multiplier(acc, m, s) + zp).astype(np.int8)

    _rejects("08.2", no_clamp, "the integer pipeline gives")
    _rejects("08.2", lambda acc, real, zp: (acc * real).astype(np.float32), "int8 array")


def test_07_checks_catch_the_usual_distributed_mistakes():
    _rejects("07.1", SOLUTIONS["07.1"][1], "Reduce-scatter, then all-gather")
    _rejects("07.2", SOLUTIONS["07.2"][1], "adds up to")                      # plain rounding loses samples
    _rejects("07.2", lambda n, s: n * np.asarray(s, float) / np.sum(s), "integers")
    _rejects("07.3", SOLUTIONS["07.3"][1], "exactly")                         # forgets the old residual
    ref = SOLUTIONS["07.3"][0]
    _rejects("07.3", lambda g, r, k: (ref(g, 0 * r, k)[0], g + r - ref(g, 0 * r, k)[0]), "largest")  # top-k of g alone


@pytest.mark.parametrize("id", ["07.1", "07.2", "07.3"])
def test_07_stubs_that_return_none_are_not_answered_yet(id):
    assert "not answered yet" in exercises.check(id, lambda *a: None).message
