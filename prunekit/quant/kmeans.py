"""Weight sharing by k-means (Han, Mao & Dally 2016, "Deep Compression", section 3).

After pruning, the weights a layer keeps take only a few distinct values: a
per-layer *codebook* of ``2**bits`` centroids, and for every kept weight the
integer index of its centroid. A 5-bit index replaces a 32-bit float.

* :func:`kmeans_1d` is Lloyd's algorithm on a vector of numbers. In one dimension
  the nearest centroid is found by a binary search among the midpoints of the
  sorted centroids (``np.searchsorted``), so one iteration is ``O(n log k)``
  instead of the ``O(n k)`` distance table; ties go to the lower centroid, as
  ``argmin`` does. Initialisation (paper, section 3.2): ``"linear"`` spaces the
  centroids evenly over ``[min, max]`` (the paper's best: it keeps the few large
  weights, which matter most, represented), ``"density"`` at evenly spaced
  quantiles, ``"random"`` (Forgy) picks distinct weights with ``seed``.
* :func:`share_weights` clusters the kept (non-pruned) weights of every Linear and
  Conv2d and puts a :class:`SharedWeights` layer in its place.
* :class:`SharedWeights` computes ``W = codebook[indices] * mask`` in its forward
  pass. The gradient of a centroid is the sum of the gradients of the weights
  that share it (paper, eq. 3), and a pruned weight contributes nothing: it stays
  exactly zero, so fine-tuning only moves the ``2**bits`` centroids (and the
  biases). :func:`codebooks` lists the centroid parameters to give an optimizer;
  :func:`unshare` turns the layers back into plain ones holding the decoded weights.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import nn
from .._table import Col, find_row, html_table, text_table
from .._validate import check_int, check_option, fail
from ..tensor import Tensor

__all__ = ["kmeans_1d", "share_weights", "unshare", "SharedWeights", "SharingReport", "codebooks", "INITS"]

INITS = ("linear", "density", "random")


# --------------------------------------------------------------------------- k-means in 1-D
def _init_centroids(x, k, init, rng):
    """``k`` starting centroids, ascending (see the module docstring)."""
    if init == "linear":
        return np.linspace(x.min(), x.max(), k)
    if init == "density":
        return np.quantile(x, np.linspace(0, 1, k))
    return np.sort(rng.choice(np.unique(x), size=k, replace=False))


def _assign(x, centroids):
    """Index of the nearest of the ascending ``centroids`` for each ``x`` (ties: the lower)."""
    mid = (centroids[:-1] + centroids[1:]) / 2
    return np.searchsorted(mid, x, side="left")


def kmeans_1d(values, n_clusters, *, init="linear", max_iter=100, seed=None):
    """Lloyd's k-means of a vector of numbers; returns ``(centroids, labels)``.

    ``centroids`` (float64, ascending, length ``n_clusters``) and ``labels`` (int64,
    one per value). Each iteration assigns every value to its nearest centroid and
    moves each centroid to the mean of its values; a centroid that loses all its
    values stays where it is. Stops when the centroids no longer move or after
    ``max_iter`` iterations. With fewer distinct values than clusters, every
    distinct value is a centroid (the last one repeated to fill the codebook).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    k = check_int("n_clusters", n_clusters, 1)
    check_option("init", init, INITS)
    check_int("max_iter", max_iter, 0)
    if x.size == 0:
        fail("values", "a non-empty array", "an empty array")
    if not np.isfinite(x).all():
        fail("values", "finite numbers", "NaN or infinity")
    distinct = np.unique(x)
    if distinct.size <= k:
        c = np.concatenate([distinct, np.full(k - distinct.size, distinct[-1])])
        return c, np.searchsorted(distinct, x)
    rng = np.random.default_rng(seed)
    c = _init_centroids(x, k, init, rng)
    for _ in range(max_iter):
        labels = _assign(x, c)
        counts = np.bincount(labels, minlength=k)
        sums = np.bincount(labels, weights=x, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        new.sort()  # an emptied centroid left in place can end up out of order
        if np.array_equal(new, c):
            break
        c = new
    return c, _assign(x, c)


# --------------------------------------------------------------------------- the shared layer
def _index_dtype(k):
    return np.uint8 if k <= 256 else np.uint16


def _gather(codebook, indices, mask):
    """``codebook[indices]`` where ``mask``, 0 elsewhere, as one autograd node.

    Backward: centroid ``j`` gets the sum of the output gradient over the kept
    positions whose index is ``j`` (a grouped sum, ``np.bincount``).
    """
    data = np.where(mask, codebook.data[indices], codebook.data.dtype.type(0))
    out = codebook._make(data, (codebook,), "gather")
    if out.requires_grad:
        kept = indices[mask]

        def _backward():
            g = np.bincount(kept, weights=out.grad[mask], minlength=codebook.shape[0])
            codebook._accumulate(g.astype(codebook.dtype), owned=True)
        out._backward = _backward
    return out


class SharedWeights(nn.Module):
    """A Linear or Conv2d layer whose weight is ``codebook[indices]`` (0 where ``mask`` is False).

    ``codebook`` is a Parameter of shape ``(k,)`` (learned by fine-tuning);
    ``indices`` (uint8 for k <= 256) and ``mask`` (bool, True = kept) are buffers of
    the weight's shape; ``bias`` is the original layer's bias. ``kind`` is
    ``"linear"`` or ``"conv2d"`` (then ``stride`` and ``padding`` as the Conv2d had).
    """

    def __init__(self, codebook, indices, mask, bias=None, kind="linear", stride=(1, 1), padding=(0, 0)):
        super().__init__()
        codebook = np.asarray(codebook)
        if codebook.ndim != 1 or codebook.size == 0 or codebook.dtype.kind != "f":
            fail("codebook", "a non-empty 1-D float array", f"shape {codebook.shape}, dtype {codebook.dtype}")
        indices, mask = np.asarray(indices), np.asarray(mask)
        check_option("kind", kind, ("linear", "conv2d"))
        ndim = 2 if kind == "linear" else 4
        if indices.ndim != ndim or indices.dtype.kind not in "iu":
            fail("indices", f"a {ndim}-D integer array (a {kind} weight's shape)",
                 f"shape {indices.shape}, dtype {indices.dtype}")
        if mask.shape != indices.shape:
            fail("mask", f"an array of the indices' shape {indices.shape}", f"shape {mask.shape}")
        if indices.size and (indices.min() < 0 or indices.max() >= codebook.size):
            fail("indices", f"values in [0, {codebook.size})", f"range [{indices.min()}, {indices.max()}]")
        self.kind = kind
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.codebook = nn.Parameter(codebook.astype(np.float32, copy=True))
        self.register_buffer("indices", indices.astype(_index_dtype(codebook.size)))
        self.register_buffer("mask", mask.astype(bool))
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(np.asarray(bias))

    @classmethod
    def from_layer(cls, layer, bits, *, init="linear", max_iter=100, seed=None):
        """Cluster the kept weights of ``layer`` (a Linear or Conv2d) into ``2**bits`` centroids.

        Kept means ``layer.weight.mask == 1`` when the weight has a mask, else non-zero.
        """
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            fail("layer", "a prunekit.nn.Linear or Conv2d", type(layer).__name__, TypeError)
        bits = check_int("bits", bits, 1, 16)
        w = layer.weight
        mask = (w.mask != 0) if w.mask is not None else (w.data != 0)
        indices = np.zeros(w.shape, dtype=_index_dtype(2 ** bits))
        if mask.any():
            codebook, labels = kmeans_1d(w.data[mask], 2 ** bits, init=init, max_iter=max_iter, seed=seed)
            indices[mask] = labels
        else:  # everything pruned: the codebook is never read
            codebook = np.zeros(2 ** bits)
        if isinstance(layer, nn.Linear):
            return cls(codebook, indices, mask, layer.bias, "linear")
        return cls(codebook, indices, mask, layer.bias, "conv2d", layer.stride, layer.padding)

    @property
    def bits(self) -> int:
        """Bits of one index: ``ceil(log2(k))``."""
        return max(int(np.ceil(np.log2(self.codebook.shape[0]))), 1)

    @property
    def shape(self):
        """Shape of the (dense) weight."""
        return self.indices.shape

    def weight_tensor(self) -> Tensor:
        """The weight as a Tensor in the graph (its gradient flows to the codebook)."""
        return _gather(self.codebook, self.indices, self.mask)

    def dense_weight(self) -> np.ndarray:
        """The weight as a plain float32 array (0 where pruned)."""
        return np.where(self.mask, self.codebook.data[self.indices], np.float32(0))

    def forward(self, x):
        w = self.weight_tensor()
        if self.kind == "linear":
            return F.linear(x, w, self.bias)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)

    def extra_repr(self):
        kept = int(self.mask.sum())
        return (f"{self.kind}, weight shape={self.shape}, clusters={self.codebook.shape[0]}, "
                f"kept={kept}/{self.mask.size}, bias={self.bias is not None}")


# --------------------------------------------------------------------------- on a model
class SharingReport:
    """Per-layer result of :func:`share_weights`; prints as a table.

    ``rows``: dicts with ``name, shape, bits, clusters, used`` (clusters holding at
    least one weight), ``kept`` (weights clustered) and ``rmse`` (root-mean-square
    change of the kept weights).
    """

    def __init__(self, rows):
        self.rows = rows

    _COLUMNS = (Col("layer", "name", "<10"), Col("shape", lambda r: tuple(r["shape"]), "<18"),
                Col("bits", "bits", ">4"), Col("clusters", "clusters", ">8"), Col("used", "used", ">5"),
                Col("kept", "kept", ">9,d"), Col("rmse", "rmse", ">10.3g"))

    def __getitem__(self, name):
        return find_row(self.rows, "name", name)

    def __repr__(self):
        return text_table(self._COLUMNS, self.rows)

    def _repr_html_(self):
        return html_table(self._COLUMNS, self.rows)


def _parent(model, name):
    """The module holding the sub-module ``name`` and its last name part."""
    parts = name.split(".")
    holder = model
    for p in parts[:-1]:
        holder = holder._modules[p]
    return holder, parts[-1]


def share_weights(model, bits=5, *, layers=None, init="linear", max_iter=100, seed=None) -> SharingReport:
    """Replace each Linear/Conv2d (or each of ``layers``) by a :class:`SharedWeights` layer, in place.

    ``bits``: index bits per weight (``2**bits`` centroids), an int or a dict
    ``{"<layer>": bits}`` (the paper uses 8 for conv and 5 for fully-connected
    layers). Pruned weights (mask 0, or exactly 0 without a mask) are left out of
    the clustering and stay 0. Returns a :class:`SharingReport`.
    """
    from ..pruning._targets import select_weights

    chosen = select_weights(model, layers)
    if "weight" in chosen:
        fail("model", "a model holding layers (not a single Linear/Conv2d: wrap it in nn.Sequential)",
             type(model).__name__, TypeError)
    names = [n[:-len(".weight")] for n in chosen]
    if isinstance(bits, dict):
        unknown = sorted(set(bits) - set(names))
        if unknown:
            fail("bits", f"an int or a dict keyed by the chosen layers {names}", f"keys {unknown}")
        per_layer = {n: check_int(f"bits[{n!r}]", bits.get(n, 5), 1, 16) for n in names}
    else:
        per_layer = dict.fromkeys(names, check_int("bits", bits, 1, 16))
    check_option("init", init, INITS)
    modules = dict(model.named_modules())
    rows = []
    for name in names:
        layer = modules[name]
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            fail("layers", "Linear or Conv2d layers", f"{name!r} ({type(layer).__name__})")
        shared = SharedWeights.from_layer(layer, per_layer[name], init=init, max_iter=max_iter, seed=seed)
        before = layer.weight.data[shared.mask].astype(np.float64)
        after = shared.dense_weight()[shared.mask]
        holder, last = _parent(model, name)
        setattr(holder, last, shared)
        rows.append({"name": name, "shape": shared.shape, "bits": per_layer[name],
                     "clusters": shared.codebook.shape[0],
                     "used": int(np.unique(shared.indices[shared.mask]).size),
                     "kept": int(shared.mask.sum()),
                     "rmse": float(np.sqrt(np.mean((before - after) ** 2))) if before.size else 0.0})
    return SharingReport(rows)


def codebooks(model):
    """The codebook Parameters of every :class:`SharedWeights` layer (to fine-tune only the centroids)."""
    return [m.codebook for m in model.modules() if isinstance(m, SharedWeights)]


def unshare(model):
    """Replace every :class:`SharedWeights` layer by a plain Linear/Conv2d holding its decoded weight, in place.

    The weight is ``codebook[indices]`` (0 where pruned) and carries the pruning mask,
    so the model can run on the sparse kernels (``sparse.to_sparse``) or be trained
    further with its zeros kept. Returns the model.
    """
    from ..pruning.unstructured import set_mask

    for name, m in list(model.named_modules()):
        if not isinstance(m, SharedWeights) or not name:
            continue
        shape = m.shape
        if m.kind == "linear":
            plain = nn.Linear(shape[1], shape[0], bias=m.bias is not None, seed=0)
        else:
            plain = nn.Conv2d(shape[1], shape[0], shape[2:], m.stride, m.padding, bias=m.bias is not None, seed=0)
        plain.weight.data[...] = m.dense_weight()
        if m.bias is not None:
            plain.bias = m.bias
        if not m.mask.all():
            set_mask(plain.weight, m.mask)
        holder, last = _parent(model, name)
        setattr(holder, last, plain)
    return model
