"""Notebooks 05 and 06: the checks say what is wrong (accepting the reference and rejecting a wrong
answer is tested for every exercise in tests/test_exercises.py)."""
import numpy as np
import pytest

from prunekit import exercises

from exercise_solutions_05_06 import SOLUTIONS

IDS = ["05.1", "05.2", "06.1", "06.2"]


def test_the_four_exercises_are_registered_with_a_solution():
    assert set(IDS) <= set(exercises.registered())
    assert set(SOLUTIONS) == set(IDS)


def _alive(W1, b1):
    return np.any(W1 != 0, axis=1) | (b1 != 0)


@pytest.mark.parametrize("wrong, says", [
    # forgets to drop the columns of W2: the shapes tell
    (lambda W1, b1, W2: (W1[_alive(W1, b1)], b1[_alive(W1, b1)], W2), "W2 should have shape"),
    # drops nothing at all
    (lambda W1, b1, W2: (W1, b1, W2), "W1 should have shape"),
    # reverses the kept neurons in W1 but not in W2: right shapes, wrong outputs
    (lambda W1, b1, W2: (W1[_alive(W1, b1)][::-1], b1[_alive(W1, b1)][::-1], W2[:, _alive(W1, b1)]), "output differs"),
    # returns one array, not three
    (lambda W1, b1, W2: W1, "three arrays"),
])
def test_surgery_check_says_what_is_wrong(wrong, says):
    verdict = exercises.check("05.1", wrong)
    assert not verdict.ok and says in verdict.message, verdict.message


def test_surgery_check_accepts_a_reordered_but_consistent_answer():
    # any order of the kept neurons is the same network, as long as W1, b1 and W2 agree
    def reversed_consistently(W1, b1, W2):
        keep = np.flatnonzero(_alive(W1, b1))[::-1]
        return W1[keep], b1[keep], W2[:, keep]
    assert exercises.check("05.1", reversed_consistently).ok


def test_conv_macs_check_names_the_formula():
    verdict = exercises.check("05.2", lambda ci, co, k, h, w: ci * co * k * k * (h + k - 1) * (w + k - 1))
    assert not verdict.ok and "conv_macs(1, 6, 5, 24, 24) gave" in verdict.message and "86400" in verdict.message


def test_csr_check_catches_swapped_arrays_and_bound_check_gives_the_byte_hint():
    verdict = exercises.check("06.1", lambda a: _swap(a))
    assert not verdict.ok and "indptr" in verdict.message
    verdict = exercises.check("06.2", lambda d: 1 / (2 * d))       # int32 indices: 8 bytes per kept weight
    assert not verdict.ok and "4 + 2 bytes" in verdict.message


def _swap(a):
    data, indices, indptr = SOLUTIONS["06.1"][0](a)
    return data, indptr, indices
