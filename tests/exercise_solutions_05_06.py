"""Reference solutions of notebooks 05 and 06's exercises, and one wrong answer each.

Kept out of the notebooks; tests/test_exercises_05_06.py proves that every check accepts its
reference solution and rejects the wrong answer.
"""
import numpy as np


def _remove_dead_neurons(W1, b1, W2):
    alive = np.any(W1 != 0, axis=1) | (b1 != 0)
    return W1[alive], b1[alive], W2[:, alive]


def _remove_dead_neurons_wrong(W1, b1, W2):  # wrong: keeps the first columns of W2, not the matching ones
    alive = np.any(W1 != 0, axis=1) | (b1 != 0)
    return W1[alive], b1[alive], W2[:, :alive.sum()]


def _to_csr(a):
    rows, cols = np.nonzero(a)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=a.shape[0]))])
    return a[rows, cols], cols, indptr


def _to_csr_wrong(a):  # wrong: indptr counts the non-zeros up to each row's end, without the leading 0
    rows, cols = np.nonzero(a)
    return a[rows, cols], cols, np.cumsum(np.bincount(rows, minlength=a.shape[0]))


# id -> (reference solution, a wrong answer)
SOLUTIONS = {
    "05.1": (_remove_dead_neurons, _remove_dead_neurons_wrong),
    "05.2": (lambda ci, co, k, h, w: ci * co * k * k * h * w, lambda ci, co, k, h, w: ci * co * k * h * w),
    "06.1": (_to_csr, _to_csr_wrong),
    "06.2": (lambda d: 4 / (6 * d), lambda d: 1 / d),
}
