"""A small measured cost model: how long does ``x @ W.T`` take dense vs sparse?

``to_sparse(model)`` (format ``"auto"``, the default) asks it, layer by layer,
which format is fastest at the expected batch size; a layer that would not be
clearly faster sparse stays dense. The kernel model is deliberately simple, one
line per format::

    time = overhead + stored * (per_weight_1 + per_weight_b * (batch - 1)) * threads_factor

``stored`` is the number of weights the format stores (``out * in`` for dense,
``nnz`` for CSR, every entry of the kept blocks for BSR). ``per_weight_1`` is
the cost of one stored weight at batch 1 (memory-bound: bytes moved) and
``per_weight_b`` what each extra row of the batch adds (compute-bound), both
with all threads working. Small products run on one thread (no thread
start-up; see ``prunekit._jit.PARALLEL_MIN_WORK``): they pay the small ``serial``
overhead and twice the per-weight cost; large ones pay the ``parallel``
overhead. The constants are *measured*: :func:`calibrate` times each kernel
on this machine (a few seconds); :data:`DEFAULT` holds figures measured on the
2-core machine of ``benchmarks/BENCHMARKS_kernels.md``, so that nothing is
timed behind your back.

A layer is more than its kernel. :meth:`CostModel.choose_layer` adds what a
sparse module costs around the kernel: ``call_overhead`` (a SparseLinear called
on its own does more Python than ``nn.Linear``: measured 3-4 us per call on
LeNet-5's layers, 8-11 us against 5-7 us) and, for a convolution,
``conv_per_element`` per im2col element (the sparse path transposes the
im2col matrix into its kernel's layout and the output back; measured 1.0-1.7 ns
per element on LeNet-5's convolutions: 58 us sparse vs 24 us dense for the first,
46 vs 30 us for the second, at 90% sparsity). Inside a fused Linear/ReLU chain
(:class:`~prunekit.sparse.modules.FusedChain`) a layer has no call of its own,
so only the per-weight costs count there. And it keeps a layer dense unless the
sparse prediction wins by ``AUTO_MARGIN`` (1.2x), the model's error bar: the
default ``to_sparse`` must never make a model slower.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .._validate import check_int, check_option, fail

__all__ = ["CostModel", "DEFAULT", "calibrate", "FORMATS", "AUTO_MARGIN"]

FORMATS = ("dense", "csr", "bsr", "nm")
AUTO_MARGIN = 1.2  # a layer goes sparse only if predicted at least this many times faster than dense
DENSE_SMALL = 256 * 1024  # multiply-adds below which BLAS runs on one thread (roughly, OpenBLAS GEMV)


@dataclass
class CostModel:
    """Per format ``(serial overhead, parallel overhead, per_weight_1, per_weight_b)`` in seconds.

    ``call_overhead``: seconds a sparse module adds per call over its dense twin when
    it runs on its own; ``conv_per_element``: seconds per im2col element a sparse
    convolution adds (see the module docstring).
    """

    params: dict = field(default_factory=dict)
    source: str = "defaults"
    threads: int = 2
    call_overhead: float = 3.5e-6
    conv_per_element: float = 1.5e-9

    def predict(self, fmt, stored, batch=1):
        """Predicted seconds for one ``x @ W.T`` with ``stored`` weights at batch ``batch``."""
        from .._jit import PARALLEL_MIN_WORK

        check_option("fmt", fmt, FORMATS)
        check_int("batch", batch, low=1)
        o_serial, o_parallel, per1, perb = self.params[fmt]
        small = stored * batch < (DENSE_SMALL if fmt == "dense" else PARALLEL_MIN_WORK)
        factor = self.threads if small else 1
        return (o_serial if small else o_parallel) + stored * (per1 + perb * (batch - 1)) * factor

    def choose(self, stored, batch=1, candidates=FORMATS):
        """The fastest of ``candidates``: ``stored`` maps format -> stored weights (missing = not possible)."""
        best, best_t = None, float("inf")
        for fmt in candidates:
            if fmt in stored:
                t = self.predict(fmt, stored[fmt], batch)
                if t < best_t:
                    best, best_t = fmt, t
        return best

    def choose_layer(self, stored, rows=1, *, fused=False, conv_elements=0, margin=AUTO_MARGIN):
        """Format for one layer, ``"dense"`` unless a sparse one is predicted ``margin`` times faster.

        ``stored`` maps format -> stored weights (``"dense"`` required; missing = not
        possible), ``rows`` = rows of the product (batch, times output pixels for a
        convolution). ``fused``: the layer runs inside a fused Linear/ReLU chain, which
        takes only dense and CSR layers and has no per-layer call, so only the
        per-weight costs count. ``conv_elements``: the im2col elements a sparse
        convolution moves in addition (0 for a Linear).
        """
        check_int("rows", rows, low=1)
        if "dense" not in stored:
            fail("stored", "a dict with a 'dense' entry (the weights of the dense layer)", sorted(stored))
        if fused:
            def cost(fmt):
                per1, perb = self.params[fmt][2:]
                return stored[fmt] * (per1 + perb * (rows - 1))
            candidates = [f for f in ("csr",) if f in stored]
        else:
            def cost(fmt):
                t = self.predict(fmt, stored[fmt], rows)
                if fmt != "dense":
                    t += self.call_overhead + self.conv_per_element * conv_elements
                return t
            candidates = [f for f in FORMATS[1:] if f in stored]
        t_dense = cost("dense")
        best, best_t = "dense", t_dense
        for fmt in candidates:
            t = cost(fmt)
            if t < best_t:
                best, best_t = fmt, t
        return best if best_t * margin <= t_dense else "dense"

    def __repr__(self):
        rows = [f"CostModel({self.source}): time = overhead + stored * (per_weight_1 + per_weight_b * (batch - 1))"]
        for fmt, (o_s, o_p, a, b) in self.params.items():
            rows.append(f"  {fmt:5s} overhead {o_s * 1e6:5.1f} us serial / {o_p * 1e6:5.1f} us parallel   "
                        f"per weight {a * 1e12:6.1f} ps   per weight per extra row {b * 1e12:5.1f} ps")
        rows.append(f"  sparse module call +{self.call_overhead * 1e6:.1f} us, sparse conv "
                    f"+{self.conv_per_element * 1e12:.0f} ps per im2col element, sparse only if {AUTO_MARGIN}x faster")
        return "\n".join(rows)


# Measured on the benchmark machine (2 cores; benchmarks/BENCHMARKS_kernels.md, 4096 x 4096 layers,
# 0% background load), rounded: e.g. dense batch 1 = 1.17 ms / 16.8 M weights = 70 ps per weight.
DEFAULT = CostModel(
    params={
        "dense": (2e-6, 5e-6, 70e-12, 10e-12),
        "csr": (3e-6, 30e-6, 150e-12, 37e-12),
        "bsr": (3e-6, 20e-6, 160e-12, 27e-12),
        "nm": (3e-6, 20e-6, 130e-12, 33e-12),
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


def calibrate(sizes=(1024, 2048), density=0.1, batch=64, repeats=15, seed=0) -> CostModel:
    """Measure the constants on this machine with two float32 layers, ``sizes[0]**2`` and ``sizes[1]**2``.

    Each format is timed at batch 1 and at ``batch`` on both layers; the
    per-weight cost is the slope between the two sizes and the overhead the
    intercept (so it includes starting the threads). About two seconds.
    """
    from . import kernels
    from .formats import BSR, CSR, NM

    if len(sizes) != 2 or sizes[0] >= sizes[1]:
        fail("sizes", "two increasing layer sizes, e.g. (1024, 2048)", sizes)
    for s_ in sizes:
        check_int("sizes", s_, low=64)
        if s_ % 16:
            fail("sizes", "multiples of 16 (the BSR block)", sizes)
    check_int("batch", batch, low=2)
    rng = np.random.default_rng(seed)

    def layer_ops(size):
        w = rng.standard_normal((size, size)).astype(np.float32)
        blocks = rng.random((size // 16, size // 16)) < density
        w_nm = w.copy()
        w_nm.reshape(size, size // 4, 4)[:, :, 2:] = 0
        ops = {"dense": (lambda x: x @ w.T, size * size)}
        for fmt, obj in (("csr", CSR.from_dense(w * (rng.random(w.shape) < density))),
                         ("bsr", BSR.from_dense(w * np.kron(blocks, np.ones((16, 16), dtype=bool)), 16)),
                         ("nm", NM.from_dense(w_nm, 2, 4))):
            ops[fmt] = ((lambda o: (lambda x: kernels.linear(o, x)))(obj), obj.nnz)
        return ops

    points = {}
    for size in sizes:
        x1 = rng.standard_normal((1, size)).astype(np.float32)
        xb = rng.standard_normal((batch, size)).astype(np.float32)
        for fmt, (run, stored) in layer_ops(size).items():
            points.setdefault(fmt, []).append(
                (stored, _best_time(lambda: run(x1), repeats), _best_time(lambda: run(xb), repeats)))
    tiny = layer_ops(16)
    x_tiny = rng.standard_normal((1, 16)).astype(np.float32)
    params = {}
    for fmt, ((n1, a1, b1), (n2, a2, b2)) in points.items():
        per1 = max((a2 - a1) / (n2 - n1), 0.0)
        o_parallel = max(a1 - per1 * n1, 0.0)
        per_b = max((b2 - b1) / (n2 - n1) - per1, 0.0) / (batch - 1)
        o_serial = _best_time(lambda: tiny[fmt][0](x_tiny), repeats * 4)
        params[fmt] = (o_serial, o_parallel, per1, per_b)
    return CostModel(params=params, source=f"calibrated: {sizes[0]}^2 and {sizes[1]}^2, density {density}, batch {batch}")
