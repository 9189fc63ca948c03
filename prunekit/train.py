"""The training loop: ``fit`` and ``evaluate``, a ``History`` of metrics, and callbacks.

One training step is the five lines every framework shares::

    model.train(); optimizer.zero_grad()
    loss = F.cross_entropy(model(Tensor(xb)), yb)
    loss.backward(); optimizer.step()

``fit`` runs that over a loader for some epochs, keeps per-epoch metrics,
shows a progress bar and calls your callbacks (e.g. a pruning schedule).
"""
from __future__ import annotations

import numpy as np

from . import functional as F
from ._validate import check_int, fail
from .tensor import Tensor, no_grad

__all__ = ["fit", "evaluate", "predict", "History", "Callback", "TrainState", "LOSSES"]

LOSSES = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss}


def _loss_fn(loss):
    if callable(loss):
        return loss, False
    if loss not in LOSSES:
        fail("loss", f"one of {{{', '.join(repr(k) for k in LOSSES)}}} or a callable (pred, target) -> Tensor", loss)
    return LOSSES[loss], loss == "cross_entropy"


def _target_like(pred, y):
    """Regression targets of shape (N,) meet predictions of shape (N, 1)."""
    if pred.ndim == 2 and pred.shape[1] == 1 and np.ndim(y) == 1:
        return np.asarray(y, dtype=pred.dtype).reshape(-1, 1)
    return y


def _batches(data, batch_size=1024):
    """A loader, or an (x, y) pair of arrays cut into batches."""
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return data


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
    """A finite loss can still be followed by an update that overflows: check once per epoch."""
    for name, p in model.named_parameters():
        if not np.isfinite(p.data).all():
            raise FloatingPointError(
                f"fit: parameter {name!r} holds non-finite values after epoch {epoch} (step {step}); "
                f"try a smaller learning rate (lr={optimizer.lr}).")


def fit(model, loader, optimizer, epochs, loss="cross_entropy", val_loader=None, callbacks=(),
        progress=True, scheduler=None) -> History:
    """Train ``model`` for ``epochs`` passes over ``loader``; return a :class:`History`.

    ``loss`` is "cross_entropy" (classification; accuracy is tracked too), "mse", or a
    callable ``(prediction Tensor, target array) -> scalar Tensor``. ``scheduler`` is
    stepped once per epoch. A progress bar (tqdm) shows the running loss.
    """
    check_int("epochs", epochs, 0)
    loss_fn, classify = _loss_fn(loss)
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
                        f"fit: the loss became {batch_loss.item()} at epoch {epoch}, step {state.step}; "
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
                for k, v in evaluate(model, val_loader, loss).items():
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


def evaluate(model, loader, loss="cross_entropy") -> dict:
    """Mean loss (and accuracy for classification) of ``model`` over ``loader`` or an (x, y) pair.

    Runs in evaluation mode without building a graph; the model's mode is restored after.
    """
    loss_fn, classify = _loss_fn(loss)
    was_training = model.training
    model.eval()
    total, seen, correct = 0.0, 0, 0
    try:
        with no_grad():
            for xb, yb in _batches(loader):
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
        fail("loader", "a non-empty loader or (x, y) pair", "no samples")
    out = {"loss": total / seen}
    if classify:
        out["accuracy"] = correct / seen
    return out


def predict(model, x, batch_size=1024) -> np.ndarray:
    """Model outputs for the array ``x``, in evaluation mode, batch by batch."""
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            return np.concatenate([model(Tensor(x[i:i + batch_size])).data for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)
