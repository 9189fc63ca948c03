"""Memory: what a worker keeps back for error feedback.

A compressor drops part of each gradient. Error feedback (Seide et al. 2014;
Karimireddy et al. 2019, EF-SGD) keeps what was dropped and adds it to the next
gradient, so every value is eventually sent::

    corrected = gradient + residual        (compensate)
    sent      = decompress(compress(corrected))
    residual  = corrected - sent           (update)

Hence ``sent + residual == gradient + old residual``: nothing is lost, only delayed.
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


class ErrorFeedback:
    """The residual memory of every worker: an ``(n_workers, D)`` array, zero at the start."""

    def __init__(self, n_workers=None, size=None):
        self.residual = None if n_workers is None else np.zeros((n_workers, size), dtype=np.float32)

    def compensate(self, grads, workers=None):
        """``grads + residual`` for the rows of ``workers`` (default: all, in order)."""
        grads = np.asarray(grads, dtype=np.float32)
        if self.residual is None:
            self.residual = np.zeros(grads.shape, dtype=np.float32)
        w = slice(None) if workers is None else np.asarray(workers)
        return grads + self.residual[w]

    def update(self, corrected, sent, workers=None):
        """Keep what was not sent: ``residual = corrected - sent``."""
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
