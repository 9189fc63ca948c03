"""A small CNN with a concatenation, the case where channel pruners most often break.

Two branches read the same stem and are concatenated along the channel axis; the
next convolution reads both. Pruning filter ``j`` of branch ``b`` must remove
input channel ``len(a) + j`` of the merge layer. :func:`cat` is the differentiable
concatenation it needs (``np.concatenate`` with a backward that splits the gradient).
"""
from __future__ import annotations

import numpy as np

from .. import nn
from .._validate import check_int, fail
from ..tensor import Tensor, is_grad_enabled

__all__ = ["cat", "ConcatNet"]


def cat(tensors, axis=1):
    """Concatenate Tensors along ``axis`` (torch.cat); the gradient is split back into the pieces."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        fail("tensors", "a non-empty list of Tensors", "an empty list")
    data = np.concatenate([t.data for t in tensors], axis=axis)
    needs = is_grad_enabled() and any(t.requires_grad for t in tensors)
    out = Tensor(data, requires_grad=needs, _parents=tuple(tensors) if needs else (), _op="cat")
    if needs:
        bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1]

        def _backward():
            for t, g in zip(tensors, np.split(out.grad, bounds, axis=axis)):
                t._accumulate(g)
        out._backward = _backward
    return out


class ConcatNet(nn.Module):
    """stem conv-BN-ReLU, two branches (3x3 and 1x1 conv-BN-ReLU) concatenated, a merge conv, pool, flatten, linear.

    Input (N, 1, size, size); ``size`` must be even. Used in the tests of the dependency
    graph and of :func:`prunekit.pruning.shrink`.
    """

    def __init__(self, channels=(8, 4, 6, 8), size=8, num_classes=10, seed=None):
        super().__init__()
        stem, a, b, merge = (check_int("channels", c, 1) for c in channels)
        size = check_int("size", size, 2)
        if size % 2:
            fail("size", "an even image size", size)
        rng = np.random.default_rng(seed)
        self.stem = nn.Conv2d(1, stem, 3, padding=1, rng=rng)
        self.bn_stem = nn.BatchNorm2d(stem)
        self.branch_a = nn.Conv2d(stem, a, 3, padding=1, rng=rng)
        self.bn_a = nn.BatchNorm2d(a)
        self.branch_b = nn.Conv2d(stem, b, 1, rng=rng)
        self.bn_b = nn.BatchNorm2d(b)
        self.merge = nn.Conv2d(a + b, merge, 3, padding=1, rng=rng)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(merge * (size // 2) ** 2, num_classes, rng=rng)

    def forward(self, x):
        h = self.bn_stem(self.stem(x)).relu()
        a = self.bn_a(self.branch_a(h)).relu()
        b = self.bn_b(self.branch_b(h)).relu()
        m = self.merge(cat([a, b], axis=1)).relu()
        return self.fc(self.flatten(self.pool(m)))
