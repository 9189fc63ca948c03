"""The checkers of the course's exercises, one per exercise, grouped by notebook.

Each checker gets the learner's answer (usually a function they wrote) and returns
None when it is right, or a sentence saying what is wrong. Checkers try the answer on
inputs the learner has not seen (fixed seeds), and compare with a plain NumPy
statement of the same maths, so they do not depend on the library's own version
being right.
"""
from __future__ import annotations

import numpy as np

from .exercises import exercise

_RNG_SEED = 1234


def _close(got, want, what, rtol=1e-6, atol=1e-9):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return f"{what} has shape {got.shape}; expected {want.shape}."
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        i = np.unravel_index(np.argmax(np.abs(got - want)), want.shape) if want.ndim else ()
        return f"{what} differs: at {i} you give {got[i]:.6g}, the right value is {want[i]:.6g}."
    return None


def _callable(answer, name):
    if not callable(answer):
        return f"the answer should be a function {name}(...), got {type(answer).__name__}."
    return None


# ------------------------------------------------------------------ 01 gradient descent
@exercise("01.1", "least-squares weights in closed form: w = (X^T X)^-1 X^T y")
def _least_squares(answer):
    if (bad := _callable(answer, "least_squares(X, y)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED)
    X, y = rng.standard_normal((40, 3)), rng.standard_normal(40)
    return _close(answer(X, y), np.linalg.lstsq(X, y, rcond=None)[0], "least_squares(X, y)")


@exercise("01.2", "the largest learning rate for which gradient descent on the mean squared error converges")
def _max_lr(answer):
    if (bad := _callable(answer, "max_stable_lr(X)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED + 1)
    X = rng.standard_normal((50, 4)) * [1.0, 2.0, 0.5, 3.0]
    # loss = mean((Xw - y)^2): Hessian 2 X^T X / n; GD converges for lr < 2 / lambda_max
    want = 2.0 / np.linalg.eigvalsh(2.0 * X.T @ X / len(X)).max()
    return _close(answer(X), want, "max_stable_lr(X)", rtol=1e-3)


# ------------------------------------------------------------------ 02 autograd and layers
@exercise("02.1", "the backward rule of softplus(x) = log(1 + exp(x))")
def _softplus_backward(answer):
    if (bad := _callable(answer, "softplus_backward(x, g)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED + 2)
    x, g = rng.standard_normal((3, 5)) * 4, rng.standard_normal((3, 5))
    return _close(answer(x, g), g / (1.0 + np.exp(-x)), "softplus_backward(x, g)")


@exercise("02.2", "the number of parameters of an MLP with the given layer sizes (weights and biases)")
def _mlp_params(answer):
    if (bad := _callable(answer, "count_parameters(sizes)")):
        return bad
    for sizes in ([784, 300, 100, 10], [64, 128, 10], [3, 1]):
        want = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        got = answer(list(sizes))
        if got != want:
            return f"count_parameters({sizes}) gave {got}; it has {want} (each layer: in * out weights + out biases)."
    return None


# ------------------------------------------------------------------ 03 importance scores
@exercise("03.1", "the first-order Taylor score |w * dL/dw| of each weight")
def _taylor(answer):
    if (bad := _callable(answer, "taylor_score(weight, grad)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED + 3)
    w, g = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    return _close(answer(w, g), np.abs(w * g), "taylor_score(weight, grad)")


@exercise("03.2", "the Optimal Brain Damage saliency 0.5 * h * w^2 (LeCun et al. 1990)")
def _obd(answer):
    if (bad := _callable(answer, "obd_saliency(weight, hessian_diag)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED + 4)
    w, h = rng.standard_normal((5, 3)), rng.random((5, 3))
    return _close(answer(w, h), 0.5 * h * w * w, "obd_saliency(weight, hessian_diag)")


# ------------------------------------------------------------------ 04 weight pruning
@exercise("04.1", "global magnitude pruning: masks keeping the largest |w| across all layers together")
def _global_masks(answer):
    if (bad := _callable(answer, "global_magnitude_masks(weights, sparsity)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED + 5)
    weights = {"a": rng.standard_normal((6, 5)), "b": rng.standard_normal((4, 10)) * 0.3}
    for sparsity in (0.5, 0.8):
        flat = np.concatenate([np.abs(w).ravel() for w in weights.values()])
        k = round(sparsity * flat.size)
        threshold = np.sort(flat)[k - 1]  # no ties with continuous random weights
        got = answer(weights, sparsity)
        for name, w in weights.items():
            want = (np.abs(w) > threshold).astype(np.float64)
            if name not in got:
                return f"the masks should have one entry per layer; {name!r} is missing."
            if (bad := _close(got[name], want, f"mask {name!r} at sparsity {sparsity}")):
                return bad + " (Rank all layers' |w| together, not each layer alone.)"
    return None


@exercise("04.2", "the gradual pruning schedule of Zhu & Gupta 2017, eq. 1")
def _agp(answer):
    if (bad := _callable(answer, "agp(t, s_final, t0, n, dt)")):
        return bad
    s_f, t0, n, dt = 0.9, 10, 5, 20
    for t in (10, 30, 50, 70, 90, 110):
        want = s_f * (1 - (1 - (t - t0) / (n * dt)) ** 3)
        if (bad := _close(answer(t, s_f, t0, n, dt), want, f"agp(t={t})")):
            return bad
    return None


# ------------------------------------------------------------------ 07 distributed training
@exercise("07.1", "bytes each worker sends in a ring all-reduce of M bytes over N workers")
def _ring_bytes(answer):
    if (bad := _callable(answer, "ring_bytes(m_bytes, n_workers)")):
        return bad
    for m, n in ((1_000_000, 4), (4096, 8), (100, 1)):
        if (bad := _close(answer(m, n), 2 * (n - 1) / n * m, f"ring_bytes({m}, {n})", rtol=1e-6)):
            return bad + " (Reduce-scatter, then all-gather: each sends N - 1 chunks of M / N bytes twice.)"
    return None


@exercise("07.2", "bytes of a top-k message: k float32 values and k int32 indices")
def _topk_bytes(answer):
    if (bad := _callable(answer, "topk_bytes(n, ratio)")):
        return bad
    for n, ratio in ((1000, 0.01), (266_610, 0.001), (10, 1.0)):
        k = max(1, int(round(n * ratio)))
        got = answer(n, ratio)
        if got != 8 * k:
            return f"topk_bytes({n}, {ratio}) gave {got}; k = {k} values and indices take {8 * k} bytes."
    return None


# ------------------------------------------------------------------ 08 edge quantization
@exercise("08.1", "symmetric int8 scale of an array: max|x| / 127")
def _sym_scale(answer):
    if (bad := _callable(answer, "int8_scale(x)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED + 8)
    for x in (rng.standard_normal(100), rng.random(10) * -3.0):
        if (bad := _close(answer(x), np.abs(x).max() / 127.0, "int8_scale(x)")):
            return bad
    return None


@exercise("08.2", "a real multiplier M in (0, 1) as a Q31 integer and a right shift: M = m * 2^-31 * 2^-shift")
def _quantized_multiplier(answer):
    if (bad := _callable(answer, "quantize_multiplier(M)")):
        return bad
    for real in (0.5, 0.3, 0.0123, 0.999):
        m, shift = answer(real)
        m, shift = int(m), int(shift)
        if not (1 << 30) <= m < (1 << 31):
            return f"quantize_multiplier({real}): the Q31 multiplier {m} should be in [2^30, 2^31)."
        if abs(m * 2.0 ** (-31 - shift) - real) > 2.0 ** (-31 - shift):
            return f"quantize_multiplier({real}) = ({m}, {shift}) represents {m * 2.0 ** (-31 - shift):.9g}."
    return None


# ------------------------------------------------------------------ 09 capstone
@exercise("09.1", "compression ratio of a model from its float32 parameter count and its file size")
def _ratio(answer):
    if (bad := _callable(answer, "compression_ratio(n_params, file_bytes)")):
        return bad
    for n, b in ((266_610, 26_000), (61_706, 10_000)):
        if (bad := _close(answer(n, b), 4 * n / b, f"compression_ratio({n}, {b})", rtol=1e-6)):
            return bad
    return None


@exercise("09.2", "does a model fit a device: model bytes + runtime <= flash and peak arena + runtime RAM <= RAM")
def _fits(answer):
    if (bad := _callable(answer, "fits(model_bytes, arena_bytes, flash, ram, runtime_flash, runtime_ram)")):
        return bad
    cases = [((300_000, 50_000, 1 << 20, 256 << 10, 100_000, 16_000), True),
             ((1_000_000, 50_000, 1 << 20, 256 << 10, 100_000, 16_000), False),
             ((300_000, 250_000, 1 << 20, 256 << 10, 100_000, 16_000), False)]
    for args, want in cases:
        if bool(answer(*args)) != want:
            return f"fits{args} should be {want}."
    return None


# Notebooks 05 and 06 keep their checkers in their own module (registered on import).
from . import _exercise_checks_05_06  # noqa: E402,F401
