"""From importance scores to masks: how many weights to remove, and which ones.

This module is pure NumPy and knows nothing about models. It follows
``torch.nn.utils.prune`` so that a learner who moves to PyTorch sees the same masks:

* **How many.** ``amount`` is a fraction in [0, 1] or an int count. A fraction becomes
  ``round(amount * n)`` weights (Python's ``round``: halves go to the even neighbour,
  so ``round(0.5 * 5) == 2``), where ``n`` counts only the weights that are *still
  unpruned*. Pruning again therefore composes: pruned weights stay pruned and the
  amount applies to what is left (torch's ``PruningContainer``). The product is taken
  in the amount's own type, as torch does: a ``np.float32(0.7)`` of 5 weights is
  ``np.float32(3.5)`` -> 4 weights, whereas the same value turned into a Python float
  first (0.699999988...) gives 3.49999994 -> 3.
* **Which ones.** The ``k`` unpruned weights with the smallest scores are removed
  (torch: ``topk(largest=False)``).
* **Ties.** torch does not specify which of several equal scores ``topk`` returns
  (it depends on the tensor size and the sort algorithm). We break ties by flat
  index, lowest index removed first (a stable sort, in C order, the order of
  ``weight.reshape(-1)``). With distinct scores at the cut, which is the normal case
  for trained float weights, the masks equal torch's exactly.
"""
from __future__ import annotations

import numbers

import numpy as np

from .._validate import fail

__all__ = ["n_to_prune", "check_amount", "bottom_k_mask", "layer_masks", "global_masks"]


def check_amount(amount, name="amount"):
    """Validate a pruning amount: a number in [0, 1] (fraction) or an int >= 0 (count).

    Returns an int count as a Python ``int``, and a fraction unchanged, in its own type
    (a ``np.float32`` stays float32, so that :func:`n_to_prune` rounds as torch does).
    """
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        fail(name, "a float in the range [0, 1] or a non-negative int", amount, TypeError)
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            fail(name, "a float in the range [0, 1] or a non-negative int", amount)
        return int(amount)
    if not (0.0 <= float(amount) <= 1.0):  # also catches NaN
        fail(name, "a float in the range [0, 1] or a non-negative int", amount)
    return amount


def n_to_prune(amount, n_unpruned, name="amount"):
    """Number of weights to remove among ``n_unpruned``: ``round(amount * n)`` or the int itself.

    Same as torch's ``_compute_nparams_toprune``: the product is computed in the amount's
    own type with ``n`` a Python int (so ``np.float32(0.7) * 5`` is a float32, 3.5, and
    rounds to 4), then rounded half to even. An int larger than ``n_unpruned`` is refused.
    """
    amount = check_amount(amount, name)
    n = int(n_unpruned)  # a Python int, as torch's nelement(): np.int64 would promote float32 to float64
    if isinstance(amount, int):
        if amount > n:
            fail(name, f"at most the number of unpruned weights ({n})", amount)
        return amount
    with np.errstate(over="ignore"):
        product = amount * n
    if not np.isfinite(product):  # a float16 amount times more than 65,504 weights
        fail(name, f"a fraction whose product with {n} weights fits its type {type(amount).__name__} "
             f"(pass a Python float)", amount)
    return int(round(product))


def _as_mask(mask, shape):
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        fail("mask", f"an array of shape {tuple(shape)}", f"shape {mask.shape}")
    return mask != 0


def _check_finite(scores, label):
    if np.isnan(scores).any():
        fail("score", "a score function that returns no NaN", f"NaN in the scores of {label}")


def bottom_k_mask(scores, k, mask=None):
    """Mask that removes the ``k`` smallest-scored entries still unpruned in ``mask``.

    Returns a boolean array of ``scores.shape`` (True = kept). Entries where ``mask``
    is 0 stay pruned and are not ranked. Ties: lowest flat index removed first.
    """
    scores = np.asarray(scores)
    keep = _as_mask(mask, scores.shape).reshape(-1).copy()
    alive = np.flatnonzero(keep)            # flat indices of unpruned entries, ascending
    if not 0 <= k <= alive.size:
        fail("amount", f"a count between 0 and the number of unpruned weights ({alive.size})", k)
    if k:
        s = scores.reshape(-1)[alive]
        _check_finite(s, "the chosen weights")
        order = np.argsort(s, kind="stable")  # ties keep index order -> lowest index first
        keep[alive[order[:k]]] = False
    return keep.reshape(scores.shape)


def layer_masks(scores, amount, masks=None):
    """Layer-wise masks: rank each array on its own (torch ``l1_unstructured`` per layer).

    ``scores`` is a dict name -> array; ``amount`` a fraction, an int, or a dict
    name -> fraction/int; ``masks`` a dict name -> existing mask (or None).
    Returns a dict name -> boolean mask.
    """
    masks = masks or {}
    out = {}
    for name, s in scores.items():
        a = amount[name] if isinstance(amount, dict) else amount
        old = _as_mask(masks.get(name), np.shape(s))
        label = f"amount[{name!r}]" if isinstance(amount, dict) else "amount"
        k = n_to_prune(a, int(old.sum()), label)
        out[name] = bottom_k_mask(s, k, old)
    return out


def global_masks(scores, amount, masks=None):
    """Global masks: rank all arrays together (torch ``global_unstructured``).

    The arrays are flattened and concatenated in the order of ``scores``, so ties
    across layers go to the earlier layer first. ``amount`` counts the unpruned
    weights of all layers together.
    """
    masks = masks or {}
    names = list(scores)
    flat_s = np.concatenate([np.asarray(scores[n], dtype=np.float64).reshape(-1) for n in names])
    flat_m = np.concatenate([_as_mask(masks.get(n), np.shape(scores[n])).reshape(-1) for n in names])
    k = n_to_prune(amount, int(flat_m.sum()))
    keep = bottom_k_mask(flat_s, k, flat_m)
    out, start = {}, 0
    for n in names:
        shape = np.shape(scores[n])
        size = int(np.prod(shape))
        out[n] = keep[start:start + size].reshape(shape)
        start += size
    return out
