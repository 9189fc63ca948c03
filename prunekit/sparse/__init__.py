"""Sparse and int8 inference: formats, numba kernels, SparseLinear and to_sparse.

    from prunekit import sparse
    w = sparse.CSR.from_dense(pruned_weight)      # or BSR / NM / Int8Weight
    y = w.linear(x)                               # x @ W.T on the numba kernels (or NumPy: pk.backend("numpy"))
    fast = sparse.to_sparse(model)                # a new model for inference (format="auto")

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
    """Compile every sparse/int8 kernel ahead (for the given dtypes) by running each on small inputs.

    Each product runs twice, below and above ``prunekit._jit.PARALLEL_MIN_WORK``
    multiply-adds, so both the single-thread and the parallel variant of every
    kernel get compiled (the parallel ones only while a core is free: on a busy
    machine the kernels run single-threaded, see ``kernels._for_work``), and the
    fused Linear/ReLU chain too. Compiled code is
    cached on disk (``cache=True``), so later processes load it instead of
    compiling. Returns the number of calls made; under the ``"numpy"`` backend
    there is nothing to compile: it does nothing and returns 0.
    """
    import numpy as np

    from .. import _backend
    from .._jit import PARALLEL_MIN_WORK

    if not _backend.use_numba():
        return 0
    rng = np.random.default_rng(0)
    calls = 0
    # (out, in, batch): one product below the threshold, one above it (checked below), batch 1 and batch B
    big_in = 16 * -(-PARALLEL_MIN_WORK // 128)  # 64 x big_in at density 1/4: 2x the threshold at batch 1
    for dt in dtypes:
        for n_out, n_in, batch in ((32, 64, 3), (64, big_in, 32)):
            w = (rng.standard_normal((n_out, n_in)) * (rng.random((n_out, n_in)) < 0.5)).astype(dt)
            w.reshape(n_out, n_in // 4, 4)[:, :, 2:] = 0  # also a valid 2:4 pattern
            b = rng.standard_normal(n_out).astype(dt)
            for fmt in (CSR.from_dense(w), BSR.from_dense(w, 16), NM.from_dense(w, 2, 4)):
                for x in (rng.standard_normal(n_in).astype(dt), rng.standard_normal((batch, n_in)).astype(dt)):
                    kernels.linear(fmt, x, bias=b)
                    calls += 1
            q = Int8Weight.from_dense(w)
            for x in (rng.standard_normal(n_in).astype(dt), rng.standard_normal((batch, n_in)).astype(dt)):
                kernels.int8_linear(q, x, bias=b)
                calls += 1
            chain = FusedChain([(CSR.from_dense(w), b, True), (w[:, :32].T.copy(), None, False)], dtype=dt)
            chain.run(rng.standard_normal((1, n_in)).astype(dt))
            calls += 1
    return calls
