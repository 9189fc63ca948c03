"""A small measured cost model: how long does ``x @ W.T`` take dense vs sparse?

``to_sparse(model, format="auto")`` asks it, layer by layer, which format is
fastest at the expected batch size; a layer that would be slower sparse stays
dense. The model is deliberately simple, one line per format::

    time(format, batch) = overhead + stored * (per_weight_1 + per_weight_b * (batch - 1))

``stored`` is the number of weights the format stores (``out * in`` for dense,
``nnz`` for CSR, every entry of the kept blocks for BSR). ``per_weight_1`` is
the cost of one stored weight at batch 1 (memory-bound: bytes moved), and
``per_weight_b`` what each extra row of the batch adds (compute-bound). The
constants are *measured*: :func:`calibrate` times each kernel on this machine
(about a second); :data:`DEFAULT` holds figures measured on the 2-core
machine the benchmarks ran on, so that nothing is timed behind your back.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .._validate import check_int, check_option

__all__ = ["CostModel", "DEFAULT", "calibrate", "FORMATS"]

FORMATS = ("dense", "csr", "bsr", "nm")


@dataclass
class CostModel:
    """Per-format ``(overhead, per_weight_1, per_weight_b)`` in seconds."""

    params: dict = field(default_factory=dict)
    source: str = "defaults"

    def predict(self, fmt, stored, batch=1):
        """Predicted seconds for one ``x @ W.T`` with ``stored`` weights at batch ``batch``."""
        check_option("fmt", fmt, FORMATS)
        check_int("batch", batch, low=1)
        overhead, per1, perb = self.params[fmt]
        return overhead + stored * (per1 + perb * (batch - 1))

    def choose(self, stored, batch=1, candidates=FORMATS):
        """The fastest of ``candidates``: ``stored`` maps format -> stored weights (missing = not possible)."""
        best, best_t = None, float("inf")
        for fmt in candidates:
            if fmt in stored:
                t = self.predict(fmt, stored[fmt], batch)
                if t < best_t:
                    best, best_t = fmt, t
        return best

    def __repr__(self):
        rows = [f"CostModel({self.source}): time = overhead + stored * (per_weight_1 + per_weight_b * (batch - 1))"]
        for fmt, (o, a, b) in self.params.items():
            rows.append(f"  {fmt:5s} overhead {o * 1e6:7.1f} us   per weight {a * 1e12:7.1f} ps"
                        f"   per weight per extra row {b * 1e12:6.2f} ps")
        return "\n".join(rows)


# Measured with calibrate() on the benchmark machine (2 cores, see benchmarks/BENCHMARKS_kernels.md).
DEFAULT = CostModel(
    params={
        "dense": (4e-6, 70e-12, 5.5e-12),
        "csr": (8e-6, 120e-12, 6.0e-12),
        "bsr": (8e-6, 70e-12, 3.5e-12),
        "nm": (8e-6, 150e-12, 9.0e-12),
    },
    source="defaults",
)


def _best_time(fn, repeats):
    """Fastest of ``repeats`` runs (as ``timeit`` reports): robust to other processes on a shared machine."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(size=1024, density=0.1, batch=32, repeats=15, seed=0) -> CostModel:
    """Measure the constants on this machine with a ``size x size`` float32 layer.

    Each format is timed at batch 1 and at ``batch``; the per-weight costs come
    from those two points, the overhead from a tiny 16 x 16 layer.
    """
    from . import kernels
    from .formats import BSR, CSR, NM

    check_int("size", size, low=64)
    check_int("batch", batch, low=2)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((size, size)).astype(np.float32)
    blocks = rng.random((size // 16, size // 16)) < density
    w_csr = w * (rng.random(w.shape) < density)
    w_bsr = w * np.kron(blocks, np.ones((16, 16), dtype=bool))
    w_nm = w.copy()
    w_nm.reshape(size, size // 4, 4)[:, :, 2:] = 0
    tiny = rng.standard_normal((16, 16)).astype(np.float32)

    def dense_fn(wd):
        return lambda x: x @ wd.T

    formats = {
        "dense": (dense_fn(w), size * size, dense_fn(tiny)),
        "csr": (CSR.from_dense(w_csr), None, CSR.from_dense(tiny)),
        "bsr": (BSR.from_dense(w_bsr, 16), None, BSR.from_dense(tiny, 16)),
        "nm": (NM.from_dense(w_nm, 2, 4), None, NM.from_dense(tiny * (np.arange(16) % 4 < 2), 2, 4)),
    }
    params = {}
    for fmt, (op, stored, small) in formats.items():
        if fmt != "dense":
            stored = op.nnz
            run = (lambda o: (lambda x: kernels.linear(o, x)))(op)
            run_small = (lambda o: (lambda x: kernels.linear(o, x)))(small)
        else:
            run, run_small = op, small
        x1 = rng.standard_normal((1, size)).astype(np.float32)
        xb = rng.standard_normal((batch, size)).astype(np.float32)
        x1_small = rng.standard_normal((1, 16)).astype(np.float32)
        overhead = _best_time(lambda: run_small(x1_small), repeats * 4)
        t1 = _best_time(lambda: run(x1), repeats)
        tb = _best_time(lambda: run(xb), repeats)
        per1 = max(t1 - overhead, 0.0) / stored
        perb = max(tb - t1, 0.0) / stored / (batch - 1)
        params[fmt] = (overhead, per1, perb)
    return CostModel(params=params, source=f"calibrated: {size}x{size}, density {density}, batch {batch}")
