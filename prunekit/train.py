"""The training loop: ``fit`` and ``evaluate``, a ``History`` of metrics, and callbacks.

One training step is the five lines every framework shares::

    model.train(); optimizer.zero_grad()
    loss = F.cross_entropy(model(Tensor(xb)), yb)
    loss.backward(); optimizer.step()

``fit`` runs that over a loader for some epochs, keeps per-epoch metrics,
shows a progress bar and calls your callbacks (e.g. a pruning schedule).
``fit``, ``evaluate`` and ``predict`` take any data form (a DataLoader, an ``(x, y)``
pair, a dataset, an iterable of batches; see :mod:`prunekit._glue`). A
:class:`FineTune` says once how to (re)train a model, for the pruning schedules,
lottery tickets and the sensitivity scan.
"""
from __future__ import annotations

import numpy as np

from . import _glue
from ._validate import check_int, fail
from .tensor import Tensor, no_grad

__all__ = ["fit", "evaluate", "predict", "History", "Callback", "TrainState", "FineTune", "as_evaluator"]


def _target_like(pred, y):
    """Regression targets of shape (N,) meet predictions of shape (N, 1)."""
    if pred.ndim == 2 and pred.shape[1] == 1 and np.ndim(y) == 1:
        return np.asarray(y, dtype=pred.dtype).reshape(-1, 1)
    return y


class History:
    """Per-epoch metrics of a ``fit`` run: ``history["loss"]``, ``history["val_accuracy"]``, ..."""

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epochs: list[int] = []

    def append(self, epoch, metrics):
        self.epochs.append(epoch)
        for k, v in metrics.items():
            self.history.setdefault(k, []).append(float(v))

    def __getitem__(self, key):
        return self.history[key]

    def __contains__(self, key):
        return key in self.history

    def last(self, key):
        return self.history[key][-1]

    def plot(self, keys=None, ax=None):
        """Plot the chosen metrics against the epoch (matplotlib is imported only here)."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(5, 3))[1]
        for k in keys or self.history:
            ax.plot(self.epochs, self.history[k], marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel("value")
        ax.legend()
        return ax

    def __repr__(self):
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.history.items())
        return f"History({len(self.epochs)} epochs: {last})"


class TrainState:
    """What callbacks see: the model, optimizer, counters, history; set ``stop = True`` to end early."""

    def __init__(self, model, optimizer, epochs, steps_per_epoch, history):
        self.model, self.optimizer = model, optimizer
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.history = history
        self.epoch = 0
        self.step = 0
        self.loss = None
        self.stop = False


class Callback:
    """Override any hook; each receives the :class:`TrainState`."""

    def on_train_begin(self, state): ...
    def on_epoch_begin(self, state): ...
    def on_batch_end(self, state): ...
    def on_epoch_end(self, state): ...
    def on_train_end(self, state): ...


def _check_weights(model, epoch, step, optimizer):
    """Once per epoch: every weight finite, and every masked weight still exactly zero.

    A finite loss can still be followed by an update that overflows; and a hand-written
    update (``p.data -= ...`` in a callback or an optimizer of your own, ``p.data[...] = ...``)
    that ignores ``p.mask`` silently un-prunes weights, which this names.
    """
    for name, p in model.named_parameters():
        if not np.isfinite(p.data).all():
            raise FloatingPointError(
                f"fit(): parameter {name!r} holds non-finite values after epoch {epoch} (step {step}); "
                f"try a smaller learning rate (lr={optimizer.lr}).")
        if p.mask is not None:
            grown = int(np.count_nonzero(p.data[p.mask == 0]))
            if grown:
                raise RuntimeError(
                    f"fit(): parameter {name!r} has {grown} non-zero weights where its mask is 0 after epoch "
                    f"{epoch} (step {step}): something changed p.data without the mask. Multiply hand-written "
                    f"updates by p.mask, or call pruning.apply_masks(model) after editing weights.")


def fit(model, data, optimizer, epochs=1, *, loss="cross_entropy", val_loader=None, callbacks=(),
        progress=True, scheduler=None, batch_size=None) -> History:
    """Train ``model`` for ``epochs`` passes over ``data``; return a :class:`History`.

    ``data``: a DataLoader, an ``(x, y)`` pair of arrays, a dataset (``__len__`` and
    ``__getitem__ -> (x, y)``) or an iterable of ``(x, y)`` batches. Arrays and datasets
    are cut into batches of ``batch_size`` samples (default
    :data:`prunekit._glue.DEFAULT_BATCH_SIZE`) *in order, without shuffling*: for SGD
    on shuffled batches pass ``DataLoader(x, y, batch_size, shuffle=True, seed=0)``.
    ``val_loader`` (any data form) is evaluated after each epoch.
    ``loss`` is "cross_entropy" (classification; accuracy is tracked too), "mse", or a
    callable ``(prediction Tensor, target array) -> scalar Tensor``. ``scheduler`` is
    stepped once per epoch. A progress bar (tqdm) shows the running loss.
    After each epoch every weight is checked: finite, and exactly 0 where its mask is 0.
    """
    loader = _glue.batches(data, batch_size, "data")
    check_int("epochs", epochs, 0)
    loss_fn, classify = _glue.get_loss(loss), _glue.is_classification(loss)
    if val_loader is not None:  # a wrong form fails now, not after an epoch; a generator is read once
        val_loader = _glue.batches(val_loader, batch_size, "val_loader")
    history = History()
    steps = len(loader)
    state = TrainState(model, optimizer, epochs, steps, history)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps, desc="fit", unit="batch", leave=False)
    for cb in callbacks:
        cb.on_train_begin(state)
    try:
        for epoch in range(epochs):
            state.epoch = epoch
            model.train()
            for cb in callbacks:
                cb.on_epoch_begin(state)
            total, seen, correct = 0.0, 0, 0
            for xb, yb in loader:
                optimizer.zero_grad()
                with np.errstate(over="ignore", invalid="ignore"):  # a blow-up is reported just below
                    pred = model(Tensor(xb))
                    yb = _target_like(pred, yb)
                    batch_loss = loss_fn(pred, yb)
                if not np.isfinite(batch_loss.data):
                    raise FloatingPointError(
                        f"fit(): the loss became {batch_loss.item()} at epoch {epoch}, step {state.step}; "
                        f"try a smaller learning rate (lr={optimizer.lr}).")
                batch_loss.backward()
                optimizer.step()
                n = len(xb)
                total += batch_loss.item() * n
                seen += n
                if classify:
                    correct += int((pred.data.argmax(axis=1) == yb).sum())
                state.step += 1
                state.loss = batch_loss.item()
                for cb in callbacks:
                    cb.on_batch_end(state)
                if bar is not None:
                    bar.update(1)
                    if state.step % 10 == 0:
                        bar.set_postfix(epoch=epoch + 1, loss=f"{total / seen:.4f}")
                if state.stop:  # a callback asked to end training now
                    break
            _check_weights(model, epoch, state.step, optimizer)
            metrics = {"loss": total / max(seen, 1)}
            if classify:
                metrics["accuracy"] = correct / max(seen, 1)
            if val_loader is not None:
                for k, v in evaluate(model, val_loader, loss=loss, batch_size=batch_size).items():
                    metrics["val_" + k] = v
            history.append(epoch + 1, metrics)
            if scheduler is not None:
                scheduler.step()
            for cb in callbacks:
                cb.on_epoch_end(state)
            if state.stop:
                break
    finally:
        if bar is not None:
            bar.close()
    for cb in callbacks:
        cb.on_train_end(state)
    return history


def evaluate(model, data, y=None, *, loss="cross_entropy", batch_size=None) -> dict:
    """Mean loss (and accuracy for classification) of ``model`` over ``data``.

    ``data`` is any form :func:`fit` accepts; ``evaluate(model, x, y)`` with two arrays
    works too. Runs in evaluation mode without building a graph; the model's mode is
    restored after. Returns ``{"loss": ..., "accuracy": ...}``.
    """
    if y is not None:
        if isinstance(y, str):
            fail("y", "an array of targets (pass the loss by keyword: evaluate(model, data, loss='mse'))",
                 repr(y), TypeError)
        if not _glue._is_array(data):
            fail("data", "an array of inputs when y is given (evaluate(model, x, y))", type(data).__name__,
                 TypeError)
        data = (data, y)
    loader = _glue.batches(data, batch_size, "data")
    loss_fn, classify = _glue.get_loss(loss), _glue.is_classification(loss)
    was_training = model.training
    model.eval()
    total, seen, correct = 0.0, 0, 0
    try:
        with no_grad():
            for xb, yb in loader:
                pred = model(Tensor(xb))
                yb = _target_like(pred, yb)
                n = len(xb)
                total += loss_fn(pred, yb).item() * n
                seen += n
                if classify:
                    correct += int((pred.data.argmax(axis=1) == yb).sum())
    finally:
        model.train(was_training)
    if seen == 0:
        fail("data", f"{_glue.FORMS} with at least one sample", "no samples")
    out = {"loss": total / seen}
    if classify:
        out["accuracy"] = correct / seen
    return out


def predict(model, x, *, batch_size=None) -> np.ndarray:
    """Model outputs for the inputs ``x``, in evaluation mode, batch by batch.

    ``x`` is an array of inputs, or any data form :func:`fit` accepts (targets ignored).
    """
    if _glue._is_array(x):       # inputs only: give them dummy targets and cut them like any data
        x = np.asarray(x)
        x = (x, np.zeros(len(x)))
    xs = [xb for xb, _ in _glue.batches(x, batch_size, "x")]
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            return np.concatenate([model(Tensor(xb)).data for xb in xs])
    finally:
        model.train(was_training)


def as_evaluator(evaluate_with, loss="cross_entropy", where="evaluate"):
    """``evaluate=`` as every pruning function takes it -> a function ``model -> metrics``.

    A callable ``model -> metrics`` (a dict or a float) is kept; any data form is
    evaluated with :func:`evaluate` (mean loss, and accuracy for cross-entropy).
    """
    if evaluate_with is None or callable(evaluate_with) and not hasattr(evaluate_with, "__iter__"):
        return evaluate_with
    data = _glue.batches(evaluate_with, None, where)  # a wrong form fails now; a generator is read once
    return lambda model: evaluate(model, data, loss=loss)


class FineTune:
    """How to fine-tune (or train) a model, given once and run wherever a schedule needs it.

    ``FineTune(data, optimizer, epochs=1, loss=..., scheduler=None, callbacks=())`` is
    what :func:`prunekit.pruning.iterative_prune` and :func:`prunekit.pruning.lottery_ticket`
    take. Calling it, ``finetune(model, step)``, runs :func:`fit` and returns its History.

    * ``data``: any form :func:`fit` accepts (a shuffling DataLoader for real training);
    * ``optimizer``: a factory ``params -> Optimizer`` (e.g. ``lambda p: optim.SGD(p, lr=0.01)``),
      which gives a fresh optimizer (no stale momentum) on every call, or an Optimizer
      of the model's parameters, reused (and its state kept) from call to call;
    * ``scheduler``: None, a factory ``optimizer -> LRScheduler`` (fresh per call) or a
      scheduler object (needed for learning-rate rewinding, Renda et al. 2020);
    * ``callbacks``: extra :class:`Callback` s for every run.

    Wherever a FineTune is accepted, a plain callable ``finetune(model, step)`` is too.
    """

    def __init__(self, data, optimizer, epochs=1, *, loss="cross_entropy", scheduler=None, callbacks=(),
                 batch_size=None, progress=False):
        from . import optim

        self.data = _glue.batches(data, batch_size, "data")
        if not (isinstance(optimizer, optim.Optimizer) or callable(optimizer)):
            fail("optimizer", "an Optimizer or a factory params -> Optimizer (e.g. lambda p: optim.SGD(p, lr=0.01))",
                 type(optimizer).__name__, TypeError)
        if scheduler is not None and not (isinstance(scheduler, optim.LRScheduler) or callable(scheduler)):
            fail("scheduler", "None, an LRScheduler or a factory optimizer -> LRScheduler",
                 type(scheduler).__name__, TypeError)
        if isinstance(scheduler, optim.LRScheduler) and not isinstance(optimizer, optim.Optimizer):
            fail("scheduler", "a factory optimizer -> LRScheduler when optimizer is a factory (a scheduler "
                 "object is tied to one optimizer)", type(scheduler).__name__, TypeError)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.epochs = check_int("epochs", epochs, 0)
        self.loss = loss
        _glue.get_loss(loss, "loss")
        self.callbacks = tuple(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                fail("callbacks", "a sequence of prunekit.train.Callback", type(cb).__name__, TypeError)
        self.progress = progress

    def __call__(self, model, step=0, *, callbacks=()) -> History:
        """Fine-tune ``model`` (``step``: which round of the schedule calls, for your own callables)."""
        from . import optim

        opt = self.optimizer
        if not isinstance(opt, optim.Optimizer):
            opt = opt(model.parameters())
            if not isinstance(opt, optim.Optimizer):
                fail("optimizer", "a factory returning a prunekit.optim Optimizer", type(opt).__name__, TypeError)
        sched = self.scheduler
        if sched is not None and not isinstance(sched, optim.LRScheduler):
            sched = sched(opt)
        return fit(model, self.data, opt, self.epochs, loss=self.loss, callbacks=[*self.callbacks, *callbacks],
                   progress=self.progress, scheduler=sched)

    def __repr__(self):
        from . import optim

        opt = type(self.optimizer).__name__ if isinstance(self.optimizer, optim.Optimizer) else "factory"
        return f"FineTune({len(self.data)} batches, optimizer={opt}, epochs={self.epochs}, loss={self.loss!r})"


def as_finetune(finetune, where="finetune"):
    """``finetune=`` as every schedule takes it (None, a :class:`FineTune` or a callable) -> callable or None."""
    if finetune is None or isinstance(finetune, FineTune):
        return finetune
    if isinstance(finetune, dict) or not callable(finetune):
        fail(where, "None, a FineTune(data, optimizer, epochs, ...) or a callable finetune(model, step)",
             type(finetune).__name__, TypeError)
    return finetune
