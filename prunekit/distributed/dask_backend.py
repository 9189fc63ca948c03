"""The same trainer on a real Dask cluster, and pruning arrays larger than memory with dask.array.

Dask (``pip install prunekit[dask]``) is imported here only, when first used.

:class:`DaskBackend` replaces the simulator's in-process loop: each step, the model's
weights are scattered once to every Dask worker, each shard's gradient is one task
(``_shard_gradient``: rebuild the model with ``model_fn``, load the weights, one
forward/backward), and the trainer gathers exactly one result per shard. A task whose
worker dies is rerun by the scheduler on another worker from the same weights and data,
so an update is neither lost nor counted twice; the result is the simulator's.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_int, check_number, fail

__all__ = ["DaskBackend", "threshold_prune_chunked", "ChunkedPrune", "WORKER_ENV"]

WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMBA_NUM_THREADS": "1"}
"""Environment of the worker processes a DaskBackend starts: one BLAS/numba thread each, so
N single-threaded workers share the cores instead of N x cores threads fighting over them."""


def _shard_gradient(model_fn, state, x, y, loss, classify):
    """Runs on a Dask worker: the flat gradient of one shard's mean loss, its loss sum and hits."""
    from .._glue import get_loss
    from ..tensor import Tensor

    model = model_fn()
    model.load_state_dict(state)
    model.train()
    pred = model(Tensor(x))
    value = get_loss(loss)(pred, y)
    value.backward()
    grad = np.concatenate([(np.zeros(p.size, np.float32) if p.grad is None else p.grad.reshape(-1))
                           for p in model.parameters()]).astype(np.float32)
    correct = int((pred.data.argmax(axis=1) == np.asarray(y)).sum()) if classify else 0
    return grad, value.item() * len(x), correct


class DaskBackend:
    """Compute the workers' gradients as Dask tasks.

    ``client``: a ``distributed.Client``, a scheduler address (``"tcp://host:8786"``), or
    None to start a ``LocalCluster`` of ``n_workers`` single-threaded processes on this
    machine (stopped by :meth:`close`, or at the end of a ``with`` block). Connecting to
    an address that does not answer fails after ``timeout_s`` seconds with a
    ``ConnectionError``. ``retries``: extra attempts of a task that raised.
    """

    def __init__(self, client=None, *, n_workers=2, timeout_s=30, retries=2):
        self.timeout_s = float(check_number("timeout_s", timeout_s, 0, None, "(]"))
        self.retries = check_int("retries", retries, 0)
        self._cluster = None
        self._owns_client = False
        from distributed import Client

        if client is None:
            from distributed import LocalCluster

            n_workers = check_int("n_workers", n_workers, 1)
            self._cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                         host="127.0.0.1", dashboard_address=":0", env=dict(WORKER_ENV),
                                         silence_logs=40)
            client = Client(self._cluster, timeout=f"{self.timeout_s}s")
            self._owns_client = True
        elif isinstance(client, str):
            try:
                client = Client(client, timeout=f"{self.timeout_s}s")
            except (OSError, TimeoutError) as e:
                raise ConnectionError(
                    f"DaskBackend(): could not reach a Dask scheduler at {client!r} within {self.timeout_s:g} s "
                    f"({type(e).__name__}: {e}). Start one (dask scheduler) or pass client=None for a "
                    f"LocalCluster.") from None
            self._owns_client = True
        elif not isinstance(client, Client):
            fail("client", "a distributed.Client, a scheduler address or None", type(client).__name__, TypeError)
        self.client = client

    @property
    def dashboard_link(self):
        """The Dask dashboard's URL (watch the tasks run)."""
        return self.client.dashboard_link

    @property
    def n_workers(self):
        return len(self.client.scheduler_info()["workers"])

    def gradients(self, trainer, shards, out):
        """Fill ``out[j]`` with shard j's gradient, computed on the cluster; return (loss sum, correct) per shard."""
        from distributed import wait

        state = {k: np.ascontiguousarray(v) for k, v in trainer.model.state_dict().items()}
        [weights] = self.client.scatter([state], broadcast=True, hash=False)   # once per step
        busy = [j for j, (x, _) in enumerate(shards) if len(x)]   # an empty shard has nothing to learn from
        futures = [self.client.submit(_shard_gradient, trainer.model_fn, weights, *shards[j], trainer.loss,
                                      trainer.classify, pure=False, retries=self.retries)
                   for j in busy]
        try:
            wait(futures, timeout=self.timeout_s * 4, return_when="ALL_COMPLETED")
        except TimeoutError:
            for f in futures:
                f.cancel()
            raise TimeoutError(f"DaskBackend: the gradients of step {trainer.step} took longer than "
                               f"{self.timeout_s * 4:g} s (4 x timeout_s); are the Dask workers alive?") from None
        results = self.client.gather(futures)
        stats = np.zeros((len(shards), 2))
        for j, (x, _) in enumerate(shards):
            if len(x) == 0:
                out[j] = 0                                         # an empty shard's gradient
        for j, (grad, loss_sum, correct) in zip(busy, results):
            if grad.shape != (out.shape[1],):
                fail("model_fn", f"a model whose parameters match the trainer's ({out.shape[1]} values)",
                     f"{grad.size} values on a Dask worker")
            out[j] = grad
            stats[j] = loss_sum, correct
        for f in futures:
            f.release()
        weights.release()
        return stats

    def close(self):
        """Close the client and the LocalCluster this backend started (not a client you passed)."""
        if self._owns_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"DaskBackend({self.client.scheduler.address}, {self.n_workers} workers)"


# ------------------------------------------------------------------ larger than memory
class ChunkedPrune:
    """The result of :func:`threshold_prune_chunked`: the lazy pruned ``array`` and the ``threshold``.

    Nothing is computed until you ask: ``result.array.store(...)``, ``.to_zarr(...)``,
    ``.compute()`` for a small one, or :meth:`sparsity` (one more pass over the chunks).
    """

    def __init__(self, array, threshold, amount):
        self.array, self.threshold, self.amount = array, float(threshold), amount

    def sparsity(self):
        """The fraction of zeros in the pruned array (computed chunk by chunk)."""
        return float((self.array == 0).mean().compute())

    def __repr__(self):
        return (f"ChunkedPrune(shape={self.array.shape}, chunks={self.array.chunksize}, "
                f"threshold={self.threshold:.6g}, requested amount={self.amount})")


def threshold_prune_chunked(x, *, threshold=None, amount=None, chunks="auto", bins=1 << 16):
    """Magnitude pruning (zero every |x| < threshold) of an array too big for memory, chunk by chunk.

    ``x``: a ``dask.array`` or anything ``dask.array.from_array`` accepts (a NumPy memmap, a
    zarr or HDF5 dataset) cut into ``chunks``. Give ``threshold``, or ``amount`` (the fraction
    to prune): then one pass finds max |x|, a second counts |x| in ``bins`` equal bins, and the
    threshold is the bin edge whose count is closest to ``amount`` (exact up to one bin's
    width). The pruning itself is one ``map_blocks``: each chunk is scored (|x|) and pruned
    on its own, so memory holds a few chunks at a time.
    """
    import dask.array as da

    if (threshold is None) == (amount is None):
        fail("threshold", "given, or amount given instead (exactly one of the two)",
             f"threshold={threshold}, amount={amount}")
    arr = x if isinstance(x, da.Array) else da.from_array(x, chunks=chunks)
    if arr.dtype.kind != "f":
        fail("x", "an array of floats", str(arr.dtype), TypeError)
    if amount is not None:
        amount = float(check_number("amount", amount, 0, 1))
        mags = da.abs(arr)
        top = float(mags.max().compute())
        counts, edges = da.histogram(mags, bins=int(bins), range=(0.0, top if top > 0 else 1.0))
        below = np.concatenate([[0], np.cumsum(counts.compute())])    # below[i]: |x| < edges[i]
        below[-1] = arr.size - int((mags == top).sum().compute()) if top > 0 else 0
        i = int(np.argmin(np.abs(below - amount * arr.size)))
        threshold = np.inf if amount == 1 else float(edges[i])
    else:
        threshold = float(check_number("threshold", threshold, 0, None))
    t = threshold
    pruned = arr.map_blocks(lambda b: np.where(np.abs(b) >= t, b, 0).astype(b.dtype), dtype=arr.dtype)
    return ChunkedPrune(pruned, threshold, amount)
