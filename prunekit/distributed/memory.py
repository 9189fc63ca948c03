"""Memory: what a worker keeps back for error feedback.

A compressor drops part of each gradient. Error feedback (Seide et al. 2014;
Karimireddy et al. 2019, EF-SGD) keeps what was dropped and adds it to the next
gradient, so every value is eventually sent::

    corrected = gradient + residual        (compensate)
    sent      = decompress(compress(corrected))
    residual  = corrected - sent           (update)

Hence ``sent + residual == gradient + old residual``: nothing is lost, only delayed.

In place: when every worker takes part, :meth:`ErrorFeedback.compensate` adds the
gradients into the residual buffer and returns that buffer, and :meth:`ErrorFeedback.update`
subtracts what was sent from it; no full-size temporary is allocated per step. (With backup
workers only some rows take part, and those rows are copied.)
For sparsifiers (top-k, random-k, threshold) this holds bit for bit, since each
value is either sent whole or kept whole; for quantisers it holds to float rounding.

The residual stays bounded only if the compressor is a *contraction*,
||C(x) - x||^2 <= (1 - delta) ||x||^2 (Karimireddy et al. 2019, Assumption A):
top-k, random-k and scaled sign are; QSGD with few levels is not (unbiased, but its
error can exceed the gradient), and with error feedback it diverges -- use it without.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ErrorFeedback"]


def _dense_rows(entries, d):
    """The ``(len(entries), d)`` float32 rows that per-worker ``(indices, values)`` stand for (zeros elsewhere)."""
    out = np.zeros((len(entries), d), dtype=np.float32)
    for row, (idx, val) in zip(out, entries):
        row[idx] = val
    return out


def _every_row(workers, n):
    """True when ``workers`` (None or indices) names every one of ``n`` rows in order."""
    if workers is None:
        return True
    w = np.asarray(workers)
    return len(w) == n and bool(np.array_equal(w, np.arange(n)))


class ErrorFeedback:
    """The residual memory of every worker: an ``(n_workers, D)`` array, zero at the start."""

    def __init__(self, n_workers=None, size=None):
        self.residual = None if n_workers is None else np.zeros((n_workers, size), dtype=np.float32)

    def compensate(self, grads, workers=None):
        """``grads + residual`` for the rows of ``workers`` (default: all, in order).

        For every row this is the residual buffer itself, updated in place: pass it on to
        :meth:`update` as ``corrected`` (until then the memory holds the corrected gradients).
        """
        grads = np.asarray(grads, dtype=np.float32)
        if self.residual is None:
            self.residual = np.zeros(grads.shape, dtype=np.float32)
        if _every_row(workers, len(self.residual)) and grads.shape == self.residual.shape:
            self.residual += grads
            return self.residual
        w = slice(None) if workers is None else np.asarray(workers)
        return grads + self.residual[w]

    def update(self, corrected, sent, workers=None):
        """Keep what was not sent: ``residual = corrected - sent`` (in place after an in-place compensate).

        ``sent`` is ``(n_workers, D)``, or per worker the ``(indices, values)`` of a sparse
        message (:attr:`Exchange.entries`): then, in place, only those entries change,
        with the same result (everywhere else ``corrected - 0`` is ``corrected``).
        """
        if corrected is self.residual and not isinstance(sent, np.ndarray):
            for row, (idx, val) in zip(self.residual, sent):
                row[idx] -= val
            return
        if not isinstance(sent, np.ndarray):
            sent = _dense_rows(sent, np.shape(corrected)[1])
        if corrected is self.residual:
            np.subtract(self.residual, sent, out=self.residual)
            return
        w = slice(None) if workers is None else np.asarray(workers)
        self.residual[w] = corrected - sent

    def reset(self):
        """Forget every residual."""
        if self.residual is not None:
            self.residual[...] = 0

    def __repr__(self):
        if self.residual is None:
            return "ErrorFeedback(empty)"
        return f"ErrorFeedback({self.residual.shape[0]} workers, |residual| = {float(np.abs(self.residual).sum()):.4g})"
