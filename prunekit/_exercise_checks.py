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


# ------------------------------------------------------------------ 00 start here
@exercise("00.1", "accuracy from a model's outputs: the fraction of rows whose largest output is the label")
def _accuracy(answer):
    if (bad := _callable(answer, "accuracy(outputs, labels)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED - 1)
    for n, k in ((50, 10), (7, 3)):
        outputs, labels = rng.standard_normal((n, k)), rng.integers(0, k, n)
        want = float(np.mean(outputs.argmax(axis=1) == labels))
        if (bad := _close(answer(outputs, labels), want, f"accuracy on {n} rows of {k} classes")):
            return bad + " (Compare argmax over each row, axis=1, with the labels.)"
    return None


@exercise("00.2", "the sparsity of a model: the fraction of its weights that are exactly zero, over all layers")
def _sparsity(answer):
    if (bad := _callable(answer, "sparsity(weights)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED - 2)
    weights = [rng.standard_normal((20, 30)) * (rng.random((20, 30)) < 0.1), rng.standard_normal((5, 20))]
    want = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    if (bad := _close(answer([w.copy() for w in weights]), want, "sparsity(weights)", rtol=1e-9)):
        return bad + " (Count the zeros of all layers together, then divide by the total number of weights.)"
    return None


# ------------------------------------------------------------------ 01 gradient descent
@exercise("01.1", "least-squares weights in closed form: w = (X^T X)^-1 X^T y")
def _least_squares(answer):
    if (bad := _callable(answer, "least_squares(X, y)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED)
    X, y = rng.standard_normal((40, 3)), rng.standard_normal(40)
    return _close(answer(X, y), np.linalg.lstsq(X, y, rcond=None)[0], "least_squares(X, y)")


@exercise("01.2", "the largest learning rate for which gradient descent on f(w) = ||Xw - y||^2 / (2n) converges: 2/L")
def _max_lr(answer):
    if (bad := _callable(answer, "max_stable_lr(X)")):
        return bad
    for seed, n in ((_RNG_SEED + 1, 50), (_RNG_SEED + 11, 200)):
        X = np.random.default_rng(seed).standard_normal((n, 4)) * [1.0, 2.0, 0.5, 3.0]
        # f(w) = ||Xw - y||^2 / (2n) (notebook 01): Hessian X^T X / n; GD converges for lr < 2 / lambda_max
        want = 2.0 / np.linalg.eigvalsh(X.T @ X / n).max()
        if (bad := _close(answer(X), want, f"max_stable_lr(X) for X of shape {X.shape}", rtol=1e-3)):
            return bad + " (L is the largest eigenvalue of the Hessian X^T X / n: mind the 1/n.)"
    return None


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
@exercise("07.1", "the time of a ring all-reduce: 2 (N - 1) (alpha + b / (N beta)), 0 for one worker")
def _ring_time(answer):
    if (bad := _callable(answer, "ring_time(n, nbytes, latency_s, bandwidth_Bps)")):
        return bad
    for n, b, a, bw in ((1, 1e6, 1e-3, 1e9), (2, 1e6, 1e-3, 1e9), (8, 4e6, 1e-5, 1.25e9), (64, 97e6, 0.0, 16e9)):
        want = 0.0 if n == 1 else 2 * (n - 1) * (a + b / (n * bw))
        got = answer(n, b, a, bw)
        if got is None:
            raise NotImplementedError
        if (bad := _close(got, want, f"ring_time({n}, {b:g}, {a}, {bw:g})", rtol=1e-9, atol=1e-12)):
            return bad + (" (Reduce-scatter, then all-gather: 2 (N - 1) messages of b / N bytes, each paying"
                          " the latency once.)")
    return None


@exercise("07.2", "shard sizes proportional to worker speeds: integers that add up to the batch")
def _shards(answer):
    if (bad := _callable(answer, "shards(n_samples, speeds)")):
        return bad
    for n, speeds in ((10, [1, 1]), (128, [1, 1, 1, 0.25]), (7, [3, 1, 1]), (0, [1, 2]), (1000, [0.1, 5, 2.5, 1, 1])):
        got = answer(n, list(speeds))
        if got is None:
            raise NotImplementedError
        got = np.asarray(got)
        if got.shape != (len(speeds),):
            return f"shards({n}, {speeds}) should give one size per worker, shape ({len(speeds)},); got {got.shape}."
        if not np.issubdtype(got.dtype, np.integer):
            return f"shards({n}, {speeds}): sizes must be integers, got dtype {got.dtype}."
        if got.sum() != n:
            return (f"shards({n}, {speeds}) = {got.tolist()} adds up to {got.sum()}, not {n} "
                    f"(plain rounding can lose or add samples: give the leftovers to the largest remainders).")
        exact = n * np.asarray(speeds, float) / np.sum(speeds)
        if not np.all(np.abs(got - exact) < 1):
            return f"shards({n}, {speeds}) = {got.tolist()} is more than one sample from the exact shares {exact}."
    return None


@exercise("07.3", "error-feedback top-k for one worker: send the k largest |g + residual|, keep the rest")
def _ef_topk(answer):
    if (bad := _callable(answer, "ef_topk(g, residual, k)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED + 9)
    residual = np.zeros(50, np.float32)
    for step in range(4):
        g = rng.standard_normal(50).astype(np.float32)
        out = answer(g.copy(), residual.copy(), 5)
        if out is None:
            raise NotImplementedError
        sent, new = (np.asarray(a) for a in out)
        corrected = g + residual
        if sent.shape != g.shape or new.shape != g.shape:
            return f"step {step}: sent and new_residual should both have shape {g.shape}."
        if np.count_nonzero(sent) != 5:
            return f"step {step}: sent has {np.count_nonzero(sent)} non-zeros, expected k = 5."
        if not np.array_equal(sent + new, corrected):
            return (f"step {step}: sent + new_residual must equal g + residual exactly "
                    f"(the residual carries the old residual too: nothing is lost, only delayed).")
        want = np.zeros_like(corrected)
        keep = np.argsort(-np.abs(corrected), kind="stable")[:5]
        want[keep] = corrected[keep]
        if not np.array_equal(sent, want):
            return f"step {step}: sent must keep the k largest |g + residual| (not |g|), the others zero."
        residual = new.astype(np.float32)
    return None


# ------------------------------------------------------------------ 08 edge quantization
@exercise("08.1", "asymmetric (scale, zero_point) of an array with TFLite's rules: the range widened to include 0")
def _asymmetric_params(answer):
    if (bad := _callable(answer, "my_asymmetric_params(x, bits)")):
        return bad
    cases = [(np.array([-0.55, 2.0]), 8),
             (np.array([0.5, 3.05]), 8),       # all positive: the range must be widened to include 0
             (np.array([-2.55, -1.0]), 8),     # all negative
             (np.linspace(-1, 3, 50), 4),
             (np.random.default_rng(0).standard_normal(100) * 5 + 2, 6)]
    for x, bits in cases:
        got = answer(x.copy(), bits)
        if got is None or got[0] is None or got[1] is None:
            raise NotImplementedError
        s, z = float(got[0]), int(got[1])
        qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        want_s = (hi - lo) / (qmax - qmin)
        want_z = int(np.clip(qmin - round(lo / want_s), qmin, qmax))
        if not (abs(s - want_s) <= 1e-6 * want_s and z == want_z):
            return (f"for x in [{x.min():.3g}, {x.max():.3g}] and {bits} bits you gave scale {s:.6g}, zero point {z}; "
                    f"expected scale {want_s:.6g}, zero point {want_z}. Did you widen the range to include 0 "
                    f"and clamp the zero point to [qmin, qmax]?")
    return None


@exercise("08.2", "int32 accumulators to int8 with integer-only arithmetic: Q31 multiplier, shift, zero point, clamp")
def _integer_requantize(answer):
    if (bad := _callable(answer, "my_requantize(acc, real_multiplier, zero_point)")):
        return bad
    from .quant.fixed_point import quantize_multiplier, requantize  # the bit-exact TFLite pipeline

    rng = np.random.default_rng(1)
    cases = [(np.array([1, 3, -3, 1000, -1000, 5], np.int32), 0.25, 0),   # ties: the integer path rounds twice
             (rng.integers(-(2 ** 20), 2 ** 20, 200).astype(np.int32), 0.0123, -7),
             (rng.integers(-5000, 5000, 200).astype(np.int32), 0.0371, 12)]
    for acc, real, zp in cases:
        m, shift = quantize_multiplier(real)
        want = requantize(acc.reshape(-1, 1), m, shift, zp).ravel()
        got = answer(acc.copy(), real, zp)
        if got is None:
            raise NotImplementedError
        got = np.asarray(got)
        if got.shape != want.shape or got.dtype != np.int8:
            return f"expected an int8 array of shape {want.shape}, got {got.dtype} {got.shape}."
        if not np.array_equal(got, want):
            i = int(np.flatnonzero(got != want)[0])
            return (f"acc={acc[i]}, M={real}: you gave {got[i]}, the integer pipeline gives {want[i]}. Use "
                    f"quantize_multiplier and multiply_by_quantized_multiplier (a float round(acc * M) differs "
                    f"on ties), then add the zero point and clamp to [-128, 127].")
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
