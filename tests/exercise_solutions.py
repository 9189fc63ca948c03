"""Reference solutions of the course's exercises, and one wrong answer each.

Kept out of the notebooks; tests/test_exercises.py proves that every check accepts its
reference solution and rejects the wrong answer.
"""
import numpy as np


def _least_squares(X, y):
    return np.linalg.solve(X.T @ X, X.T @ y)


def _max_lr(X):
    return 2.0 / np.linalg.eigvalsh(X.T @ X / len(X)).max()


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






def _ring_time(n, nbytes, latency_s, bandwidth_Bps):
    return 0.0 if n == 1 else 2 * (n - 1) * (latency_s + nbytes / (n * bandwidth_Bps))


def _shards(n_samples, speeds):  # largest remainder
    s = np.asarray(speeds, float)
    exact = n_samples * s / s.sum()
    sizes = np.floor(exact).astype(int)
    sizes[np.argsort(-(exact - sizes), kind="stable")[:n_samples - sizes.sum()]] += 1
    return sizes


def _ef_topk(g, residual, k):
    corrected = g + residual
    keep = np.argsort(np.abs(corrected), kind="stable")[len(g) - k:]
    sent = np.zeros_like(corrected)
    sent[keep] = corrected[keep]
    return sent, corrected - sent


def _ef_topk_forgets_residual(g, residual, k):  # wrong: the old residual is dropped
    sent, _ = _ef_topk(g, residual, k)
    return sent, g - sent


def _asymmetric_params(x, bits):
    qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / (qmax - qmin)
    return np.float32(scale), int(np.clip(qmin - round(lo / scale), qmin, qmax))


def _no_zero_widening(x, bits):  # wrong: forgets to include 0 in the range
    qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    lo, hi = float(x.min()), float(x.max())
    scale = (hi - lo) / (qmax - qmin)
    return scale, int(np.clip(qmin - round(lo / scale), qmin, qmax))


def _requantize(acc, real, zp):
    from prunekit.quant import fixed_point

    m, s = fixed_point.quantize_multiplier(real)
    y = fixed_point.multiply_by_quantized_multiplier(acc, m, s).astype(np.int64) + zp
    return np.clip(y, -128, 127).astype(np.int8)


def _float_requantize(acc, real, zp):  # wrong: the float shortcut differs on ties
    return np.clip(np.rint(acc * real) + zp, -128, 127).astype(np.int8)


# id -> (reference solution, a wrong answer)
SOLUTIONS = {
    "00.1": (lambda out, y: np.mean(out.argmax(axis=1) == y), lambda out, y: np.mean(out.argmax(axis=0)[:len(y)] == y)),
    "00.2": (lambda ws: sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws),
             lambda ws: float(np.mean([np.mean(w == 0) for w in ws]))),  # mean of per-layer sparsities
    "01.1": (_least_squares, lambda X, y: X.T @ y),
    "01.2": (_max_lr, lambda X: 2.0 / np.linalg.eigvalsh(X.T @ X).max()),  # forgets the 1/n
    "02.1": (lambda x, g: g / (1 + np.exp(-x)), lambda x, g: g * np.exp(x)),
    "02.2": (lambda s: sum(a * b + b for a, b in zip(s[:-1], s[1:])), lambda s: sum(a * b for a, b in zip(s[:-1], s[1:]))),
    "03.1": (lambda w, g: np.abs(w * g), lambda w, g: np.abs(w) * g),
    "03.2": (lambda w, h: 0.5 * h * w ** 2, lambda w, h: h * w ** 2),
    "04.1": (_global, _layerwise),
    "04.2": (lambda t, s, t0, n, dt: s * (1 - (1 - (t - t0) / (n * dt)) ** 3),
             lambda t, s, t0, n, dt: s * (t - t0) / (n * dt)),
    "07.1": (_ring_time, lambda n, b, a, bw: 0.0 if n == 1 else (n - 1) * (a + b / (n * bw))),  # reduce-scatter only
    "07.2": (_shards, lambda n, s: np.round(n * np.asarray(s) / np.sum(s)).astype(int)),      # plain rounding
    "07.3": (_ef_topk, _ef_topk_forgets_residual),
    "08.1": (_asymmetric_params, _no_zero_widening),
    "08.2": (_requantize, _float_requantize),
    "09.1": (lambda n, b: 4 * n / b, lambda n, b: n / b),
    "09.2": (lambda mb, ab, fl, ram, rf, rr: mb + rf <= fl and ab + rr <= ram, lambda mb, ab, fl, ram, rf, rr: mb <= fl),
}

# Notebooks 05 and 06 keep theirs in their own file.
from exercise_solutions_05_06 import SOLUTIONS as _SOLUTIONS_05_06  # noqa: E402

SOLUTIONS.update(_SOLUTIONS_05_06)
