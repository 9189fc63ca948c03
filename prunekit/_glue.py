"""The one place that turns what a user passes as data or loss into what the loops need.

Every function that takes data (``fit``, ``evaluate``, the data-hungry scores, the
pruning schedules, lottery tickets, the sensitivity scan, the widgets, the
distributed trainer, calibration) accepts the same forms, through :func:`batches`:

* a :class:`prunekit.data.DataLoader` (or any iterable of ``(x, y)`` batches);
* an ``(x, y)`` pair of arrays, cut into batches of ``batch_size`` (default
  :data:`DEFAULT_BATCH_SIZE`) in order;
* a dataset: any object with ``__len__`` and ``__getitem__(i) -> (x_i, y_i)``, as
  PyTorch's map-style datasets are.

and every function that takes a loss accepts a name from :data:`LOSSES` or a
callable ``(prediction Tensor, target array) -> scalar Tensor``, through :func:`get_loss`.
"""
from __future__ import annotations

import numpy as np

from . import functional as F
from ._validate import fail
from .tensor import Tensor

__all__ = ["DEFAULT_BATCH_SIZE", "LOSSES", "batches", "as_pair", "as_arrays", "get_loss", "is_classification"]

DEFAULT_BATCH_SIZE = 256
"""Samples per batch when the data comes as arrays or a dataset (training, evaluation, scores, calibration)."""


def _fail(where, expected, got, exc=ValueError):
    """``where`` is an argument name ("data": the public caller is found on the stack) or "f(): data"."""
    if "(): " in where:
        raise exc(f"{where} must be {expected}, got {got}.")
    fail(where, expected, got, exc)


def _mse(pred, target):
    """Mean squared error that accepts (N,) targets for an (N, 1) prediction."""
    target = np.asarray(target.data if isinstance(target, Tensor) else target)
    if target.shape != pred.shape and target.size == pred.size:
        target = target.reshape(pred.shape)
    return F.mse_loss(pred, target.astype(pred.dtype, copy=False))


LOSSES = {"cross_entropy": F.cross_entropy, "mse": _mse}
"""Loss names every function accepts; ``"cross_entropy"`` also makes accuracy meaningful."""


def get_loss(loss, where="loss"):
    """A loss name or callable -> the callable ``(pred Tensor, target) -> scalar Tensor``.

    ``where`` names the argument in the error (the public function is found on the
    call stack), or the caller and argument, e.g. ``"fit(): loss"``.
    """
    if callable(loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]
    _fail(where, f"one of {sorted(LOSSES)} or a callable (pred, target) -> Tensor", repr(loss))


def is_classification(loss) -> bool:
    """True for cross-entropy, whose outputs are class scores (so accuracy is tracked)."""
    return (isinstance(loss, str) and loss == "cross_entropy") or loss is F.cross_entropy


def _is_array(a):
    return isinstance(a, np.ndarray) or (hasattr(a, "__array__") and not isinstance(a, (tuple, list, dict)))


def _is_dataset(data):
    return hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (tuple, list, dict))


def as_pair(data, where="data"):
    """``(x, y)`` arrays if ``data`` is an ``(x, y)`` pair or a dataset, else None (a loader)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and _is_array(data[0]):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if len(x) != len(y):
            _fail(where, "an (x, y) pair with as many targets as inputs", f"{len(x)} inputs and {len(y)} targets")
        return x, y
    if _is_dataset(data) and not hasattr(data, "batch_size") and not _is_array(data):
        from .data import ArrayDataset, _collate  # data.py is imported on first use, not with prunekit

        if isinstance(data, ArrayDataset):  # its arrays as they are, not stacked back item by item
            return data.x, data.y
        n = len(data)
        if n == 0:
            return np.empty((0,)), np.empty((0,))
        items = [data[i] for i in range(n)]
        bad = next((it for it in items if not (isinstance(it, (tuple, list)) and len(it) == 2)), None)
        if bad is not None:
            _fail(where, "a dataset whose __getitem__ returns (x, y) pairs", f"an item of type {type(bad).__name__}",
                  TypeError)
        return _collate(items)
    return None


class _ArrayBatches:
    """Re-iterable batches of an ``(x, y)`` pair, in order; ``len()`` is the number of batches."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        b = self.batch_size
        for i in range(0, len(self.x), b):
            yield self.x[i:i + b], self.y[i:i + b]


class _CheckedBatches:
    """An iterable of batches whose items are checked to be ``(x, y)`` pairs as they come."""

    def __init__(self, data, where):
        self.data, self.where = data, where

    def __len__(self):
        return len(self.data)

    def __iter__(self):
        for item in self.data:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                _fail(self.where, "an iterable of (x, y) batches", f"an item of type {type(item).__name__}",
                      TypeError)
            yield item


def batches(data, batch_size=None, where="data"):
    """Any accepted data form -> a re-iterable of ``(x, y)`` batches (see the module docstring).

    ``batch_size`` applies only to arrays and datasets (a DataLoader keeps its own);
    None means :data:`DEFAULT_BATCH_SIZE`. Arrays are cut in order (no shuffling: a
    DataLoader with ``shuffle=True`` does that); a one-shot iterator (a generator) is
    read once and kept, so it can be iterated again. ``where`` names the argument in
    errors (the public caller is found on the stack), or both, e.g. ``"fit(): data"``.
    """
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
    elif isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        _fail("batch_size", "an int >= 1 (samples per batch)", repr(batch_size),
              ValueError if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
              else TypeError)
    if data is None or isinstance(data, (str, bytes, dict)) or _is_array(data) or not (
            hasattr(data, "__iter__") or _is_dataset(data)):
        _fail(where, FORMS, "an array (pass an (x, y) pair)" if _is_array(data) else type(data).__name__, TypeError)
    pair = as_pair(data, where)
    if pair is not None:
        return _ArrayBatches(*pair, int(batch_size))
    if iter(data) is data:      # a generator: keep its batches, so every epoch sees them all
        data = list(data)
    return _CheckedBatches(data, where)


FORMS = ("a DataLoader, an (x, y) pair of arrays, a dataset (__len__ and __getitem__ -> (x, y)) "
         "or an iterable of (x, y) batches")
"""What every ``data`` argument accepts (said in the errors)."""


def as_arrays(data, where="data"):
    """Any accepted data form -> one ``(x, y)`` pair of arrays (a loader's batches concatenated, in its order)."""
    pair = as_pair(data, where) if not (data is None or isinstance(data, (str, bytes, dict))) else None
    if pair is not None:
        return pair
    parts = list(batches(data, where=where))
    if not parts:
        _fail(where, f"{FORMS} with at least one sample", "no batches")
    return (np.concatenate([np.asarray(x) for x, _ in parts]),
            np.concatenate([np.asarray(y) for _, y in parts]))
