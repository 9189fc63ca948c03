"""Reference solutions of the course's exercises, and one wrong answer each.

Kept out of the notebooks; tests/test_exercises.py proves that every check accepts its
reference solution and rejects the wrong answer.
"""
import math

import numpy as np


def _least_squares(X, y):
    return np.linalg.solve(X.T @ X, X.T @ y)


def _max_lr(X):
    return 2.0 / np.linalg.eigvalsh(2.0 * X.T @ X / len(X)).max()


def _global(weights, sparsity):
    flat = np.concatenate([np.abs(w).ravel() for w in weights.values()])
    k = round(sparsity * flat.size)
    t = np.sort(flat)[k - 1]
    return {n: (np.abs(w) > t).astype(float) for n, w in weights.items()}


def _layerwise(weights, sparsity):  # wrong: ranks each layer alone
    out = {}
    for n, w in weights.items():
        k = round(sparsity * w.size)
        out[n] = (np.abs(w) > np.sort(np.abs(w).ravel())[k - 1]).astype(float)
    return out


def _mask_2_4(w):
    g = np.abs(w).reshape(w.shape[0], -1, 4)
    keep = np.zeros_like(g)
    np.put_along_axis(keep, np.argsort(-g, axis=-1, kind="stable")[..., :2], 1.0, axis=-1)
    return keep.reshape(w.shape)


def _to_csr(a):
    rows, cols = np.nonzero(a)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=a.shape[0]))])
    return a[rows, cols], cols, indptr


def _quantize_multiplier(real):
    q, e = math.frexp(real)
    m = round(q * (1 << 31))
    if m == 1 << 31:
        m //= 2
        e += 1
    return m, -e


# id -> (reference solution, a wrong answer)
SOLUTIONS = {
    "01.1": (_least_squares, lambda X, y: X.T @ y),
    "01.2": (_max_lr, lambda X: 1.0 / np.linalg.eigvalsh(X.T @ X / len(X)).max() * 4),
    "02.1": (lambda x, g: g / (1 + np.exp(-x)), lambda x, g: g * np.exp(x)),
    "02.2": (lambda s: sum(a * b + b for a, b in zip(s[:-1], s[1:])), lambda s: sum(a * b for a, b in zip(s[:-1], s[1:]))),
    "03.1": (lambda w, g: np.abs(w * g), lambda w, g: np.abs(w) * g),
    "03.2": (lambda w, h: 0.5 * h * w ** 2, lambda w, h: h * w ** 2),
    "04.1": (_global, _layerwise),
    "04.2": (lambda t, s, t0, n, dt: s * (1 - (1 - (t - t0) / (n * dt)) ** 3),
             lambda t, s, t0, n, dt: s * (t - t0) / (n * dt)),
    "07.1": (lambda m, n: 2 * (n - 1) / n * m, lambda m, n: (n - 1) * m),
    "07.2": (lambda n, r: 8 * max(1, int(round(n * r))), lambda n, r: 4 * max(1, int(round(n * r)))),
    "08.1": (lambda x: np.abs(x).max() / 127, lambda x: (x.max() - x.min()) / 255),
    "08.2": (_quantize_multiplier, lambda real: (int(real * (1 << 31)), 0)),
    "09.1": (lambda n, b: 4 * n / b, lambda n, b: n / b),
    "09.2": (lambda mb, ab, fl, ram, rf, rr: mb + rf <= fl and ab + rr <= ram, lambda mb, ab, fl, ram, rf, rr: mb <= fl),
}

# Notebooks 05 and 06 keep theirs in their own file.
from exercise_solutions_05_06 import SOLUTIONS as _SOLUTIONS_05_06  # noqa: E402

SOLUTIONS.update(_SOLUTIONS_05_06)
