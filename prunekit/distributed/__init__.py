"""Distributed training: a simulated cluster a learner can see inside, and the same trainer on Dask.

Four parts, as GRACE (Xu et al. 2021) splits gradient compression:

* the communicator (:mod:`.comm`): :class:`Network` (alpha-beta cost model), :class:`Cluster`,
  and the collectives :func:`ring_allreduce`, :func:`tree_allreduce`, :func:`parameter_server`,
  :func:`allgather`, each checked against the plain sum;
* the compressors (:mod:`.compress`): what is sent -- :class:`TopK`, :class:`RandomK`,
  :class:`Threshold`, :class:`QSGD`, :class:`SignSGD`, :class:`FP16`, :class:`DGC`,
  :class:`PowerSGD`; a registry (:func:`register_compressor`) for your own;
* the encodings (:mod:`.encoding`): how a sparse message becomes bytes -- ``"int32+float32"``
  (8 bytes an entry) or ``"gap16+float16"`` (index gaps as uint16, half-precision values: 4);
  a registry (:func:`register_encoding`) for your own;
* the memory (:mod:`.memory`): :class:`ErrorFeedback`, what is kept back;
* the trainer (:mod:`.trainer`): :class:`DataParallelTrainer` composes them, with stragglers,
  backup workers and proportional shards, and reports a :class:`TrainingRun` with a
  :class:`Timeline`.

:class:`DaskBackend` runs the workers' gradients on a real Dask cluster and
:func:`threshold_prune_chunked` prunes arrays larger than memory with ``dask.array``;
Dask is imported only inside them.

    import prunekit as pk
    from prunekit import distributed as dist
    cluster = dist.Cluster(8, network=dist.Network(latency_s=1e-5, bandwidth_Bps=1.25e9))
    trainer = dist.DataParallelTrainer(lambda: pk.models.lenet_300_100(seed=0),
                                       lambda ps: pk.optim.SGD(ps, lr=0.1), cluster,
                                       compressor=dist.TopK(0.001), error_feedback=True)
    run = trainer.fit((x, y), epochs=1, batch_size=256)
"""
from __future__ import annotations

from .comm import (COLLECTIVES, CollectiveResult, Cluster, Network, RandomSpeeds, SlowNode, allgather,
                   allreduce_time, parameter_server, plain_sum, ring_allreduce, tree_allreduce)
from .compress import (DGC, FP16, QSGD, CompressionStats, Compressor, Exchange, Layout, Message, PowerSGD,
                       RandomK, SignSGD, Threshold, TopK, available_compressors, get_compressor,
                       register_compressor, topk_reference)
from .encoding import (Encoding, Gap16Float16, Int32Float32, available_encodings, get_encoding,
                       register_encoding)
from .memory import ErrorFeedback
from .trainer import (DataParallelTrainer, LocalBackend, Timeline, TrainingRun, equal_shards,
                      proportional_shards)

__all__ = ["Network", "Cluster", "RandomSpeeds", "SlowNode", "CollectiveResult", "plain_sum", "ring_allreduce",
           "tree_allreduce", "parameter_server", "allgather", "allreduce_time", "COLLECTIVES",
           "Layout", "Message", "Exchange", "Compressor", "register_compressor", "get_compressor",
           "available_compressors", "TopK", "RandomK", "Threshold", "QSGD", "SignSGD", "FP16", "DGC", "PowerSGD",
           "CompressionStats", "topk_reference", "Encoding", "register_encoding", "get_encoding",
           "available_encodings", "Int32Float32", "Gap16Float16", "ErrorFeedback", "DataParallelTrainer", "TrainingRun", "Timeline",
           "equal_shards", "proportional_shards", "LocalBackend", "DaskBackend", "threshold_prune_chunked"]


def __getattr__(name):
    # The Dask parts import dask only when first used.
    if name in ("DaskBackend", "threshold_prune_chunked"):
        from . import dask_backend
        return getattr(dask_backend, name)
    raise AttributeError(f"module 'prunekit.distributed' has no attribute {name!r}")
