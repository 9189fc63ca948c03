"""The checkers of notebooks 05 (structured pruning) and 06 (sparse kernels).

Same rules as :mod:`prunekit._exercise_checks`: each checker gets the learner's answer (a
function they wrote) and returns None when it is right, or a sentence saying what is wrong.
The checkers try the answer on inputs the learner has not seen (fixed seeds) and compare
with a plain NumPy statement of the same maths, not with the library's own version.
"""
from __future__ import annotations

import numpy as np

from ._exercise_checks import _callable, _close
from .exercises import exercise

_RNG_SEED = 5060


# ------------------------------------------------------------------ 05 structured pruning
def _masked_mlp(rng, n_in, n_hidden, n_out, n_dead):
    """Weights of a masked MLP ``Linear(n_in, n_hidden) - ReLU - Linear(n_hidden, n_out)``: ``n_dead``
    hidden neurons have their row of W1 and their bias set to 0 (what a neuron mask leaves)."""
    w1 = rng.standard_normal((n_hidden, n_in)).astype(np.float32)
    b1 = rng.standard_normal(n_hidden).astype(np.float32)
    w2 = rng.standard_normal((n_out, n_hidden)).astype(np.float32)
    b2 = rng.standard_normal(n_out).astype(np.float32)
    dead = rng.choice(n_hidden, n_dead, replace=False)
    w1[dead] = 0
    b1[dead] = 0
    return w1, b1, w2, b2


def _mlp(x, w1, b1, w2, b2):
    return np.maximum(x @ w1.T + b1, 0) @ w2.T + b2


@exercise("05.1", "surgery by hand: drop the masked neurons of a Linear-ReLU-Linear (rows of W1, b1; columns of W2)")
def _surgery(answer):
    if (bad := _callable(answer, "remove_dead_neurons(W1, b1, W2)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED)
    for n_in, n_hidden, n_out, n_dead in ((6, 8, 3, 4), (10, 12, 5, 3), (4, 5, 2, 0)):
        w1, b1, w2, b2 = _masked_mlp(rng, n_in, n_hidden, n_out, n_dead)
        x = rng.standard_normal((7, n_in)).astype(np.float32)
        got = answer(w1.copy(), b1.copy(), w2.copy())
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            return "remove_dead_neurons should return three arrays: (W1, b1, W2) of the smaller network."
        s1, sb1, s2 = (np.asarray(a) for a in got)
        kept = n_hidden - n_dead
        for name, arr, want in (("W1", s1, (kept, n_in)), ("b1", sb1, (kept,)), ("W2", s2, (n_out, kept))):
            if arr.shape != want:
                return (f"with {n_dead} of {n_hidden} neurons masked, the new {name} should have shape {want}, "
                        f"got {arr.shape} (a masked neuron's row of W1 and its bias are all zeros).")
        if (bad := _close(_mlp(x, s1, sb1, s2, b2), _mlp(x, w1, b1, w2, b2), "the smaller network's output",
                          rtol=1e-5, atol=1e-5)):
            return bad + " (Keep the columns of W2 that match the kept rows of W1, in the same order.)"
    return None


@exercise("05.2", "the multiply-adds of one image through a k x k Conv2d: c_in * c_out * k * k * h_out * w_out")
def _conv_macs(answer):
    if (bad := _callable(answer, "conv_macs(c_in, c_out, k, h_out, w_out)")):
        return bad
    for c_in, c_out, k, h, w in ((1, 6, 5, 24, 24), (6, 16, 5, 8, 8), (8, 4, 3, 7, 5), (3, 2, 1, 9, 4)):
        want = c_in * c_out * k * k * h * w
        got = answer(c_in, c_out, k, h, w)
        if got != want:
            return (f"conv_macs{(c_in, c_out, k, h, w)} gave {got}; it is {want}: each of the c_out * h_out * w_out "
                    f"outputs is a dot product of c_in * k * k weights with the input patch.")
    return None


# ------------------------------------------------------------------ 06 sparse kernels
@exercise("06.1", "CSR arrays (data, indices, indptr) of a dense matrix")
def _csr(answer):
    if (bad := _callable(answer, "to_csr(a)")):
        return bad
    rng = np.random.default_rng(_RNG_SEED + 1)
    a = rng.standard_normal((5, 7)) * (rng.random((5, 7)) < 0.3)
    a[2] = 0  # an empty row
    a[4, -1] = 1.5  # a non-zero in the last column
    rows, cols = np.nonzero(a)
    want_indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=5))])
    got = answer(a)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return "to_csr should return three arrays: (data, indices, indptr)."
    data, indices, indptr = got
    return (_close(indptr, want_indptr, "indptr") or _close(indices, cols, "indices")
            or _close(data, a[rows, cols], "data"))


@exercise("06.2", "the best batch-1 speed-up of CSR (float32 values, uint16 indices) over dense at density d")
def _csr_bound(answer):
    if (bad := _callable(answer, "csr_speedup_bound(d)")):
        return bad
    for d in (0.5, 0.1, 0.05, 0.01):
        if (bad := _close(answer(d), 4.0 / (6.0 * d), f"csr_speedup_bound({d})", rtol=1e-3)):
            return bad + " (Dense reads 4 bytes per weight; CSR reads 4 + 2 bytes per kept weight.)"
    return None
