"""Data-parallel SGD on a simulated cluster: the trainer that composes communicator,
compressor and memory, plus stragglers, backup workers and load balancing.

One synchronous step with N workers and global batch B:

1. the batch is cut into shards (equal, or proportional to each worker's measured speed);
2. worker i computes the gradient of its shard's mean loss, in ``n_i * sample_time_s / speed_i``
   simulated seconds; with ``b`` backup workers the step waits only for the fastest N - b
   and drops the rest (Chen et al. 2016, "Revisiting distributed synchronous SGD");
3. each gradient is weighted by ``n_i / (samples received)``, optionally compressed (with
   error feedback), and summed by a collective: the sum is the gradient of the mean loss
   over the received samples, so with no compressor and no backups one step equals one
   single-process step on the whole batch (Goyal et al. 2017);
4. every replica applies the same optimizer step, so one model stands for all of them.

The simulator computes the gradients in this process (one forward/backward per shard, or one
pass for all of them: fused or grouped, below); ``backend=DaskBackend(...)`` runs the shards
as tasks on a Dask cluster instead, with the same result.

Fused shards: with no compressor the workers' gradients are only ever summed, and the
weighted sum of the shards' gradients *is* the gradient of the mean loss over their union
(the gradient is linear in the per-sample losses). So the simulator then runs one
forward/backward over the received samples and charges the all-reduce's time and bytes from
the cost model: same numbers up to float rounding, N times fewer Python round trips. Not
for models with batch norm or dropout, whose per-shard statistics or random masks differ
(``fuse_shards="auto"`` checks; ``False`` turns it off).

Grouped shards: a compressor needs every worker's *own* gradient, so the sum trick does not
apply. But without batch norm and dropout the samples still do not interact, so one
forward/backward over the received samples gives every activation and output gradient the
shard passes would; only the parameter gradients must be summed per worker, and the
Linear/Conv2d layers are given a backward that does that for the length of the pass
(``_grouped.py``). Same per-worker gradients up to float rounding, in one pass instead of N.
``group_shards="auto"`` uses it where it is valid; ``trainer.gradient_path`` says which path
runs and, for shard by shard, why (``False`` always runs the shards one by one).
"""
from __future__ import annotations

import time

import numpy as np

from .._glue import batches, get_loss, is_classification
from .._validate import check_int, check_number, check_option, fail
from ..tensor import Tensor
from ..train import Callback, History, TrainState, evaluate
from .. import nn
from ..optim import SGD
from .comm import COLLECTIVES, Cluster, allreduce_bytes, allreduce_time
from .compress import Compressor, Layout, get_compressor
from ._grouped import GroupedPass, is_builtin_loss, unsupported_reason
from .memory import ErrorFeedback

__all__ = ["DataParallelTrainer", "TrainingRun", "Timeline", "equal_shards", "proportional_shards",
           "LocalBackend"]

SHARDINGS = ("equal", "proportional")


def equal_shards(n_samples, n_workers):
    """Shard sizes that differ by at most one: the first ``n_samples % n_workers`` get one more."""
    n_samples, n_workers = check_int("n_samples", n_samples, 0), check_int("n_workers", n_workers, 1)
    sizes = np.full(n_workers, n_samples // n_workers, dtype=np.int64)
    sizes[:n_samples % n_workers] += 1
    return sizes


def proportional_shards(n_samples, speeds):
    """Shard sizes proportional to ``speeds`` that add up to ``n_samples`` exactly.

    Largest-remainder rounding: each worker gets floor(n s_i / sum s), and the samples
    left over go to the largest fractional parts (ties to the lower index). Consecutive
    shards of sizes ``sizes`` then cover every sample exactly once.
    """
    n_samples = check_int("n_samples", n_samples, 0)
    s = np.asarray(speeds, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or np.any(s < 0) or s.sum() <= 0:
        fail("speeds", "a non-empty 1-d array of non-negative finite numbers with a positive sum", speeds)
    exact = n_samples * s / s.sum()
    sizes = np.floor(exact).astype(np.int64)
    left = n_samples - int(sizes.sum())
    order = np.lexsort((np.arange(s.size), -(exact - sizes)))
    sizes[order[:left]] += 1
    return sizes


# ------------------------------------------------------------------ results
class Timeline:
    """Per step and worker: simulated compute time, who was waited for, and the communication.

    ``start[s]`` step start, ``compute[s, i]`` the time worker i needed, ``used[s, i]``
    whether its gradient was waited for, ``wait[s]`` when the last waited-for worker
    finished (relative to the start), ``comm[s]`` the collective's time. All in seconds.
    """

    def __init__(self, start, compute, used, wait, comm):
        self.start, self.compute, self.used = np.asarray(start), np.asarray(compute), np.asarray(used, bool)
        self.wait, self.comm = np.asarray(wait), np.asarray(comm)

    @property
    def n_steps(self):
        return len(self.start)

    @property
    def wall_time_s(self):
        """Simulated seconds from the first step's start to the last step's end."""
        return float((self.start[-1] + self.wait[-1] + self.comm[-1]) - self.start[0]) if self.n_steps else 0.0

    @property
    def idle_fraction(self):
        """Fraction of the waited-for workers' time spent idle, waiting for the slowest of them."""
        busy = np.where(self.used, self.compute, 0).sum()
        total = (self.wait[:, None] * self.used).sum()
        return float(1 - busy / total) if total > 0 else 0.0

    def __repr__(self):
        return (f"Timeline({self.n_steps} steps x {self.compute.shape[1]} workers, wall time "
                f"{self.wall_time_s:.4g} s, dropped {int((~self.used).sum())} gradients, "
                f"idle {self.idle_fraction:.1%})")

    def plot(self, steps=None, ax=None):
        """Gantt chart: one row per worker, a bar per step's computation (grey: dropped), communication in orange."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(8, 0.4 * self.compute.shape[1] + 1.2))[1]
        steps = range(min(self.n_steps, 10)) if steps is None else steps
        for s in steps:
            t0 = self.start[s]
            for i in range(self.compute.shape[1]):
                used = self.used[s, i]
                width = self.compute[s, i] if used else min(self.compute[s, i], self.wait[s])
                ax.barh(i, width * 1e3, left=t0 * 1e3, color="tab:blue" if used else "lightgrey",
                        hatch=None if used else "//", edgecolor="white", height=0.8)
            ax.barh(range(self.compute.shape[1]), self.comm[s] * 1e3, left=(t0 + self.wait[s]) * 1e3,
                    color="tab:orange", height=0.8)
        ax.set_xlabel("simulated time (ms)")
        ax.set_ylabel("worker")
        ax.set_yticks(range(self.compute.shape[1]))
        ax.invert_yaxis()
        ax.set_title("compute (blue), dropped straggler (grey), all-reduce (orange)")
        return ax


class TrainingRun:
    """What :meth:`DataParallelTrainer.fit` returns: metrics per epoch, bytes, simulated time, timeline.

    ``history`` (a :class:`prunekit.train.History`, with ``wall_time_s`` per epoch);
    per worker over the whole run: ``message_bytes`` (its own gradient messages) and
    ``bytes_sent`` (everything it put on the wire, forwarded messages included);
    ``dense_message_bytes`` and ``dense_bytes_sent``: the same for uncompressed float32
    gradients and a ring all-reduce; ``timeline`` (a :class:`Timeline`); ``real_time_s``.
    """

    def __init__(self, history, message_bytes, bytes_sent, dense_message_bytes, dense_bytes_sent, timeline,
                 real_time_s, label):
        self.history, self.timeline, self.label = history, timeline, label
        self.message_bytes = np.asarray(message_bytes, dtype=np.int64)
        self.bytes_sent = np.asarray(bytes_sent, dtype=np.int64)
        self.dense_message_bytes, self.dense_bytes_sent = int(dense_message_bytes), int(dense_bytes_sent)
        self.real_time_s = float(real_time_s)

    @property
    def compression(self):
        """Gradient bytes before over after compression (the busiest worker's messages), as DGC reports it."""
        return self.dense_message_bytes / max(int(self.message_bytes.max()), 1)

    @property
    def traffic_reduction(self):
        """Bytes a dense ring all-reduce puts on the wire over the bytes actually sent (busiest worker).

        Smaller than :attr:`compression` for all-gathered messages: each worker forwards N - 1 of them.
        """
        return self.dense_bytes_sent / max(int(self.bytes_sent.max()), 1)

    @property
    def wall_time_s(self):
        return self.timeline.wall_time_s

    def _rows(self):
        last = {k: v[-1] for k, v in self.history.history.items()}
        return [("run", self.label), ("epochs", len(self.history.epochs)),
                *[(k, f"{v:.4g}") for k, v in last.items()],
                ("MB sent per worker", f"{self.bytes_sent.max() / 1e6:.4g}"),
                ("gradient compression", f"{self.compression:.1f}x"),
                ("traffic vs dense ring", f"{self.traffic_reduction:.1f}x less"),
                ("simulated time (s)", f"{self.wall_time_s:.4g}"),
                ("real time (s)", f"{self.real_time_s:.3g}")]

    def __repr__(self):
        return "TrainingRun(" + ", ".join(f"{k}={v}" for k, v in self._rows()) + ")"

    def _repr_html_(self):
        cells = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in self._rows())
        return f"<table>{cells}</table>"

    def plot(self, key=None, ax=None):
        """A metric (default: validation accuracy if tracked, else loss) against simulated time."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(5, 3))[1]
        h = self.history.history
        key = key or next((k for k in ("val_accuracy", "accuracy", "loss") if k in h), "loss")
        ax.plot(h["wall_time_s"], h[key], marker="o", label=self.label)
        ax.set_xlabel("simulated wall time (s)")
        ax.set_ylabel(key)
        ax.legend()
        return ax


# ------------------------------------------------------------------ backends
class LocalBackend:
    """Computes every worker's gradient in this process, one forward/backward per shard."""

    def gradients(self, trainer, shards, out):
        """Fill ``out[j]`` with the gradient of shard j; return per-shard (loss sum, correct)."""
        model, params, entries = trainer.model, trainer._params, trainer.layout.entries
        stats = np.zeros((len(shards), 2))
        for j, (x, y) in enumerate(shards):
            if len(x) == 0:                               # more workers than samples: nothing to learn from
                out[j] = 0
                continue
            for p in params:
                p.grad = None
            with np.errstate(over="ignore", invalid="ignore"):
                pred = model(Tensor(x))
                loss = trainer.loss_fn(pred, y)
            loss.backward()
            for (_, _, off, size), p in zip(entries, params):
                out[j, off:off + size] = 0 if p.grad is None else p.grad.reshape(-1)
            stats[j] = loss.item() * len(x), _correct(pred.data, y) if trainer.classify else 0
        return stats

    def close(self):
        pass

    def __repr__(self):
        return "LocalBackend()"


def _union(shards):
    """One (x, y) pair holding the samples of all ``shards``."""
    return np.concatenate([sx for sx, _ in shards]), np.concatenate([sy for _, sy in shards])


def _correct(pred, y):
    return int((pred.argmax(axis=1) == np.asarray(y)).sum())


# ------------------------------------------------------------------ trainer
class DataParallelTrainer:
    """Synchronous data-parallel SGD over the workers of a :class:`Cluster`.

    ``model_fn()`` builds the model (every replica starts from it, so give it a seed) and
    ``optimizer_fn(params)`` its optimizer. ``compressor``: None (dense all-reduce), a
    :class:`Compressor` or a registered name. ``error_feedback=True`` adds a residual
    memory (not for DGC and PowerSGD, which keep their own). ``collective``: "ring",
    "tree" or "parameter_server". Stragglers: ``backup_workers=b`` waits only for the
    fastest N - b workers; ``node_ratio=P`` says the same as the fraction P = (N - b) / N
    waited for. ``shards="proportional"`` gives each worker a share of the batch
    proportional to its speed measured at the previous step. ``backend``: None (this
    process) or a :class:`DaskBackend`. ``fuse_shards``: "auto", True or False (see the
    module docstring: one pass over the received samples when only their sum matters; with
    a custom ``loss`` only if you say True, since it must be a mean of per-sample losses).
    ``group_shards``: "auto", True or False: when each worker's own gradient is needed (a
    compressor, or ``fuse_shards=False``), compute all of them in one grouped pass where
    that is valid (True: raise where it is not). ``gradient_path`` says how each step computes
    the gradients: "fused" (one pass, only their sum), "grouped" (one pass, every worker's own)
    or "shard by shard (<why neither applies>)"; ``fused`` and ``grouped`` are the same as bools.
    With ``DGC(scale_by_lr=True)`` the trainer gives the compressor the optimizer's rate before
    every step and applies the summed message as the update itself (so the optimizer must be
    plain SGD: momentum 0, no weight decay; a TypeError says so otherwise).
    """

    def __init__(self, model_fn, optimizer_fn, cluster, *, compressor=None, error_feedback=False,
                 collective="ring", backup_workers=None, node_ratio=None, shards="equal",
                 loss="cross_entropy", backend=None, fuse_shards="auto", group_shards="auto"):
        if not callable(model_fn):
            fail("model_fn", "a callable () -> Module", model_fn, TypeError)
        if not callable(optimizer_fn):
            fail("optimizer_fn", "a callable (params) -> Optimizer", optimizer_fn, TypeError)
        if not isinstance(cluster, Cluster):
            fail("cluster", "a prunekit.distributed.Cluster", type(cluster).__name__, TypeError)
        n = cluster.n_workers
        self.compressor = get_compressor(compressor)
        if error_feedback and self.compressor is None:
            fail("error_feedback", "False when there is no compressor (nothing is dropped)", error_feedback)
        if error_feedback and self.compressor.keeps_residual:
            fail("error_feedback", f"False for {type(self.compressor).__name__}, which keeps its own residual",
                 error_feedback)
        self.collective = check_option("collective", collective, tuple(COLLECTIVES))
        if backup_workers is not None and node_ratio is not None:
            fail("node_ratio", "None when backup_workers is given (they say the same thing)", node_ratio)
        if node_ratio is not None:
            check_number("node_ratio", node_ratio, 0, 1, "(]")
            backup_workers = n - max(1, int(round(node_ratio * n)))
        self.backup_workers = check_int("backup_workers", 0 if backup_workers is None else backup_workers, 0)
        if self.backup_workers >= n:
            fail("backup_workers", f"fewer than the {n} workers (at least one gradient is needed)",
                 self.backup_workers)
        self.shards = check_option("shards", shards, SHARDINGS)
        self.loss_fn = get_loss(loss, "DataParallelTrainer(): loss")
        self.classify = is_classification(loss)
        self.loss = loss
        self.cluster, self.model_fn, self.optimizer_fn = cluster, model_fn, optimizer_fn
        self.model = model_fn()
        self.optimizer = optimizer_fn(self.model.parameters())
        self._params = self.model.parameters()
        # DGC(scale_by_lr=True) sends updates (lr already applied): they are applied as they are,
        # which is what plain SGD would do with them; any other optimizer would change them.
        self._update_units = bool(getattr(self.compressor, "scale_by_lr", False))
        if self._update_units and not (isinstance(self.optimizer, SGD) and self.optimizer.momentum == 0
                                       and self.optimizer.weight_decay == 0):
            fail("optimizer_fn", f"plain SGD (momentum=0, weight_decay=0) with {self.compressor!r}, which "
                 "accumulates lr * g and keeps the momentum itself", self.optimizer, TypeError)
        self.layout = Layout.of(self.model)
        if self.compressor is not None:
            self.compressor.bind(n, self.layout)
        self.memory = ErrorFeedback(n, self.layout.size) if error_feedback else None
        self.backend = backend if backend is not None else LocalBackend()
        check_option("fuse_shards", fuse_shards, ("auto", True, False))
        stochastic = [type(m).__name__ for m in self.model.modules()
                      if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout))]
        if fuse_shards is True and (self.compressor is not None or stochastic
                                    or not isinstance(self.backend, LocalBackend)):
            fail("fuse_shards", "False or 'auto' unless there is no compressor, no batch norm or dropout "
                 "and the local backend", fuse_shards)
        self.fused = (fuse_shards is True or (fuse_shards == "auto" and is_builtin_loss(loss))) and \
            self.compressor is None and not stochastic and isinstance(self.backend, LocalBackend)
        check_option("group_shards", group_shards, ("auto", True, False))
        if self.fused:
            reason = None
        elif group_shards is False:
            reason = "group_shards=False"
        elif not isinstance(self.backend, LocalBackend):
            reason = f"{type(self.backend).__name__} computes each shard as its own task"
        else:
            reason = unsupported_reason(self.model, loss)
        if group_shards is True and reason is not None:
            fail("group_shards", "False or 'auto' where grouped gradients are not valid", f"True ({reason})")
        self.grouped = not self.fused and reason is None
        self._grouped = GroupedPass(self.model, self._params, self.layout.entries) if self.grouped else None
        self.gradient_path = ("fused" if self.fused else "grouped" if self.grouped
                              else f"shard by shard ({reason})")
        self.step = 0
        self.clock = 0.0
        self._measured = np.ones(n)
        self._grads = np.zeros((n, self.layout.size), dtype=np.float32)

    @property
    def node_ratio(self):
        """P = (N - b) / N, the fraction of workers each step waits for."""
        return (self.cluster.n_workers - self.backup_workers) / self.cluster.n_workers

    def __repr__(self):
        return (f"DataParallelTrainer({self.cluster.n_workers} workers, compressor={self.compressor!r}, "
                f"error_feedback={self.memory is not None}, collective={self.collective!r}, "
                f"backup_workers={self.backup_workers}, shards={self.shards!r}, "
                f"gradient_path={self.gradient_path!r})")

    # -------------------------------------------------------------- one step
    def _plan(self, batch_size, speeds):
        """Shard sizes, simulated compute times and the workers waited for (sorted)."""
        n = self.cluster.n_workers
        sizes = (equal_shards(batch_size, n) if self.shards == "equal"
                 else proportional_shards(batch_size, self._measured))
        compute = sizes * self.cluster.sample_time_s / speeds
        keep = n - self.backup_workers
        fastest = np.argsort(compute, kind="stable")[:keep]
        return sizes, compute, np.sort(fastest)

    def _communicate(self, grads, workers, compensated=False):
        """``compensated``: ``grads`` is already the memory's residual plus the gradients (grouped pass)."""
        net = self.cluster.network
        if self.compressor is None:
            r = COLLECTIVES[self.collective](grads, net)
            return r.result, grads[0].nbytes, r.bytes_sent, r.time_s
        corrected = grads if self.memory is None or compensated else self.memory.compensate(grads, workers)
        ex = self.compressor.exchange(corrected, net, collective=self.collective, workers=workers)
        if self.memory is not None:
            self.memory.update(corrected, ex.sent if ex.entries is None else ex.entries, workers)
        return ex.total, ex.message_bytes, ex.bytes_sent, ex.time_s

    def _train_step(self, x, y, speeds=None):
        """One synchronous step on the global batch ``(x, y)``.

        Returns the loss summed over the received samples, their correct predictions, their
        number, and the step's row of the timeline.
        """
        n = self.cluster.n_workers
        speeds = np.ones(n) if speeds is None else np.asarray(speeds, dtype=np.float64)
        sizes, compute, workers = self._plan(len(x), speeds)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        shards = [(x[bounds[i]:bounds[i + 1]], y[bounds[i]:bounds[i + 1]]) for i in workers]
        received = int(sizes[workers].sum())
        if self.fused:
            whole = len(workers) == n                     # every shard: the batch itself, no copy
            stats = self.backend.gradients(self, [(x, y)] if whole else [_union(shards)], self._grads[:1])
            total, message = self._grads[0], self._grads[0].nbytes
            sent = allreduce_bytes(self.collective, len(workers), message)
            comm_time = allreduce_time(self.collective, len(workers), message, self.cluster.network)
        else:
            if self._update_units:                        # the rate of this step, for DGC's accumulation
                self.compressor.lr = self.optimizer.lr
            grads = self._grads[:len(workers)]
            # with error feedback and every worker, the grouped pass adds straight into the residual
            folded = self.grouped and self.memory is not None and len(workers) == n
            if self.grouped:                              # already weighted: shares of the mean over the union
                xs, ys = (x, y) if len(workers) == n else _union(shards)
                if folded:
                    grads = self.memory.residual
                loss_sum, pred = self._grouped.gradients(xs, ys, sizes[workers], self.loss_fn, grads, add=folded)
                stats = np.array([[loss_sum, _correct(pred.data, ys) if self.classify else 0]])
            else:
                stats = self.backend.gradients(self, shards, grads)
                if received:
                    grads *= (sizes[workers] / received).astype(np.float32)[:, None]
            total, message, sent, comm_time = self._communicate(grads, workers, compensated=folded)
        bytes_sent = np.zeros((2, n), dtype=np.int64)    # own message, all bytes put on the wire
        bytes_sent[0, workers], bytes_sent[1, workers] = message, sent
        if received and self._update_units:              # in units of lr_ref: lr * (momentum-corrected) gradient
            update = total * np.float32(self.compressor.lr_ref or 0.0)
            for (_, shape, off, size), p in zip(self.layout.entries, self._params):
                p.data -= update[off:off + size].reshape(shape)
        elif received:
            for (_, shape, off, size), p in zip(self.layout.entries, self._params):
                p.grad = total[off:off + size].reshape(shape)
            self.optimizer.step()
        wait = float(compute[workers].max())
        measured = sizes[workers] > 0
        self._measured[workers[measured]] = sizes[workers][measured] / compute[workers][measured]
        used = np.zeros(n, dtype=bool)
        used[workers] = True
        record = (self.clock, compute, used, wait, comm_time, bytes_sent)
        self.clock += wait + comm_time
        self.step += 1
        return float(stats[:, 0].sum()), int(stats[:, 1].sum()), received, record

    # -------------------------------------------------------------- fit
    def fit(self, data, epochs=1, *, batch_size=None, val_data=None, callbacks=(), label=None) -> TrainingRun:
        """Train for ``epochs`` passes over ``data`` (any form :func:`prunekit._glue.batches` accepts;
        ``batch_size`` is the *global* batch for arrays). Returns a :class:`TrainingRun`."""
        check_int("epochs", epochs, 0)
        loader = batches(data, batch_size, where="DataParallelTrainer.fit(): data")
        for cb in callbacks:
            if not isinstance(cb, Callback):
                fail("callbacks", "a list of prunekit.train.Callback", type(cb).__name__, TypeError)
        steps = len(loader)
        table = self.cluster.speed_table(self.step + epochs * steps)
        history = History()
        state = TrainState(self.model, self.optimizer, epochs, steps, history)
        state.trainer = self
        records = []
        n = self.cluster.n_workers
        dense_message = self.layout.size * 4
        dense_per_step = 2 * (n - 1) * -(-dense_message // n)
        t0 = time.perf_counter()
        for cb in callbacks:
            cb.on_train_begin(state)
        for epoch in range(epochs):
            state.epoch = epoch
            self.model.train()
            for cb in callbacks:
                cb.on_epoch_begin(state)
            total, seen, correct = 0.0, 0, 0
            for xb, yb in loader:
                if self.step >= len(table):
                    table = self.cluster.speed_table(self.step + steps)
                loss_sum, corr, used, record = self._train_step(np.asarray(xb), np.asarray(yb), table[self.step])
                if not np.isfinite(loss_sum):
                    raise FloatingPointError(
                        f"DataParallelTrainer.fit(): the loss became {loss_sum} at epoch {epoch}, step "
                        f"{self.step}; try a smaller learning rate (lr={self.optimizer.lr}).")
                records.append(record)
                total, seen, correct = total + loss_sum, seen + used, correct + corr
                state.step += 1
                state.loss = loss_sum / max(used, 1)
                for cb in callbacks:
                    cb.on_batch_end(state)
                if state.stop:
                    break
            for name, p in self.model.named_parameters():
                if not np.isfinite(p.data).all():
                    raise FloatingPointError(
                        f"DataParallelTrainer.fit(): parameter {name!r} holds non-finite values after epoch "
                        f"{epoch}; try a smaller learning rate (lr={self.optimizer.lr}) or a milder compressor.")
            metrics = {"loss": total / max(seen, 1)}
            if self.classify:
                metrics["accuracy"] = correct / max(seen, 1)
            if val_data is not None:
                for k, v in evaluate(self.model, val_data, loss=self.loss).items():
                    metrics["val_" + k] = v
            metrics["wall_time_s"] = self.clock
            history.append(epoch + 1, metrics)
            for cb in callbacks:
                cb.on_epoch_end(state)
            if state.stop:
                break
        for cb in callbacks:
            cb.on_train_end(state)
        real = time.perf_counter() - t0
        if records:
            start, compute, used, wait, comm, sent = (np.array(v) for v in zip(*records))
        else:
            start, compute, used, wait, comm, sent = (np.zeros((0, n)),) * 5 + (np.zeros((0, 2, n)),)
        timeline = Timeline(start, compute, used, wait, comm)
        label = label or ("dense" if self.compressor is None else repr(self.compressor))
        sent = sent.sum(axis=0)
        return TrainingRun(history, sent[0], sent[1], dense_message * len(records), dense_per_step * len(records),
                           timeline, real, label)
