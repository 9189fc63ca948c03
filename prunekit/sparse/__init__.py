"""Sparse and int8 inference: formats, numba kernels, SparseLinear and to_sparse.

    from prunekit import sparse
    w = sparse.CSR.from_dense(pruned_weight)      # or BSR / NM / Int8Weight
    y = w.linear(x)                               # x @ W.T on the numba kernels
    fast = sparse.to_sparse(model, format="auto") # a new model for inference

Training stays dense + mask (see ``prunekit.nn.Parameter.mask``); these are for
running a pruned model fast. Kernels compile on first use (``warmup()`` does it
ahead); importing this package compiles nothing.
"""
from __future__ import annotations

from . import costmodel, kernels
from .formats import BSR, CSR, NM, Int8Weight, SparseFormat
from .modules import FusedChain, SparseConv2d, SparseLinear, SparseSequential, to_sparse

__all__ = ["CSR", "BSR", "NM", "Int8Weight", "SparseFormat", "SparseLinear", "SparseConv2d", "SparseSequential",
           "FusedChain", "to_sparse", "warmup", "kernels", "costmodel"]


def warmup(dtypes=("float32",)) -> int:
    """Compile every sparse/int8 kernel ahead (for the given dtypes) by running each on tiny inputs.

    Both the single-thread and the parallel variants are compiled, and the fused
    Linear/ReLU chain. Compiled code is cached on disk (``cache=True``), so later
    processes load it instead of compiling. Returns the number of kernel calls made.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    calls = 0
    saved = kernels.PARALLEL_MIN_WORK
    try:
        for threshold in (saved, 0):  # small products run on one thread; 0 forces the parallel kernels
            kernels.PARALLEL_MIN_WORK = threshold
            for dt in dtypes:
                w = (rng.standard_normal((32, 64)) * (rng.random((32, 64)) < 0.5)).astype(dt)
                w.reshape(32, 16, 4)[:, :, 2:] = 0  # also a valid 2:4 pattern
                b = rng.standard_normal(32).astype(dt)
                for fmt in (CSR.from_dense(w), BSR.from_dense(w, 16), NM.from_dense(w, 2, 4)):
                    for x in (rng.standard_normal(64).astype(dt), rng.standard_normal((3, 64)).astype(dt)):
                        kernels.linear(fmt, x, bias=b)
                        calls += 1
                q = Int8Weight.from_dense(w)
                for x in (rng.standard_normal(64).astype(dt), rng.standard_normal((3, 64)).astype(dt)):
                    kernels.int8_linear(q, x, bias=b)
                    calls += 1
                chain = FusedChain([(CSR.from_dense(w), b, True), (w[:, :32].T.copy(), None, False)], dtype=dt)
                chain.run(rng.standard_normal((1, 64)).astype(dt))
                calls += 1
    finally:
        kernels.PARALLEL_MIN_WORK = saved
    return calls
