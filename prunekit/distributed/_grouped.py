"""Every worker's gradient from one forward/backward pass: grouped parameter gradients.

The problem: a compressor needs each worker's *own* gradient, and computing them shard by
shard costs N small forward/backward passes, each with its Python overhead (1.8x the time
of one pass over the whole batch for 8 workers of LeNet-300-100, before any compression).

The fix: when samples do not interact (no batch norm, no dropout: what ``fuse_shards``
already checks), one pass over the received samples gives every activation and every
output gradient that the N shard passes would. Only the *parameter* gradients differ: a
shard pass sums over its own samples, the whole pass over all of them. So the Linear and
Conv2d layers are given, for the length of one pass, a forward whose backward sums per
group of rows instead of over the whole batch:

    linear:   grad_W[w] = dY[rows of w].T @ X[rows of w]      grad_b[w] = dY[rows of w].sum(0)
    conv2d:   the same over the im2col columns of the group's samples

(the same multiply-adds as one pass, cut into N products), written straight into row w
of the trainer's ``(N, D)`` gradient buffer. The input gradient dX = dY @ W is the
ordinary one. With the mean loss over the received samples (R of them), the rows of
group w carry 1/R, so row w is ``(b_w / R)`` times the gradient of worker w's own mean
loss: exactly the weight the trainer gives it before compression. Unequal shards
(proportional to speed) and dropped workers (backup workers) need nothing special: a
group is just a range of rows; an empty group gets a zero gradient.

Not covered, so the trainer computes shard by shard and says why (``trainer.gradient_path``):
batch norm or dropout; parameters in any module other than Linear and Conv2d (including
subclasses that change ``forward``); a loss other than the built-in per-sample means
(``"cross_entropy"``, ``"mse"``): a custom loss need not be a mean; the Dask backend.

Rejected alternative: a "per-sample gradients" mode in ``functional.linear`` and
``conv2d``. It would be one more branch in code that learners read first, for a
simulator-only need; here the grouped op lives beside the simulator and is installed on
the model's layers only while the trainer's own pass runs (never during evaluation).
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import functional as F
from .. import nn
from .._glue import LOSSES
from .._validate import fail
from ..tensor import Tensor

SUPPORTED = (nn.Linear, nn.Conv2d)
STOCHASTIC = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)


def unsupported_reason(model, loss):
    """Why grouped gradients cannot stand in for shard-by-shard ones here, or None if they can."""
    for name, m in model.named_modules():
        if isinstance(m, STOCHASTIC):
            return f"the model has {type(m).__name__} ({name}): shards would see different statistics or masks"
        if any(p is not None for p in m._parameters.values()):
            base = next((c for c in SUPPORTED if isinstance(m, c)), None)
            if base is None or type(m).forward is not base.forward:
                return (f"parameters in {type(m).__name__} ({name or 'the model'}): only Linear and Conv2d "
                        f"have a grouped backward")
    if not is_builtin_loss(loss):
        return "a custom loss: grouped gradients need a built-in per-sample mean ('cross_entropy' or 'mse')"
    return None


def is_builtin_loss(loss):
    """True for a loss named by string or one of prunekit's own: a mean of per-sample losses. A custom
    callable may add a batch-level term, so neither the fused nor the grouped pass may assume it."""
    return isinstance(loss, str) or any(loss is f for f in LOSSES.values())


class GroupedPass:
    """Per-worker parameter gradients of one model from one forward/backward pass.

    ``params`` and ``entries`` are the trainer's (a :class:`~.compress.Layout`'s entries,
    in the same order). :meth:`gradients` fills the rows of an ``(n_groups, D)`` buffer.
    """

    def __init__(self, model, params, entries):
        self.model = model
        self._where = {id(p): (off, shape) for p, (_, shape, off, _) in zip(params, entries)}
        self._layers = [m for m in model.modules() if isinstance(m, SUPPORTED)]
        self._bounds = self._out = None
        self._add, self._written = False, set()

    def gradients(self, x, y, sizes, loss_fn, out, add=False):
        """Fill ``out[j]`` with group j's share of the gradient of the mean loss over ``x``.

        ``sizes[j]`` consecutive rows of ``x`` form group j. ``add=True`` adds to ``out``
        instead (error feedback: the residual becomes the corrected gradient in place, and
        the gradient itself is never stored). Returns the loss summed over the samples and
        the prediction (for accuracy).
        """
        self._bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._out, self._add, self._written = out, add, set()
        try:
            with self._installed():
                with np.errstate(over="ignore", invalid="ignore"):
                    pred = self.model(Tensor(x))
                    loss = loss_fn(pred, y)
                loss.backward()
            for p in self.model.parameters():           # a parameter the pass never used: zero
                if id(p) not in self._written and not add:
                    self._slots(p)[0][...] = 0
        finally:
            self._bounds = self._out = None
        return loss.item() * len(x), pred

    @contextlib.contextmanager
    def _installed(self):
        """Give each Linear and Conv2d the grouped forward for the length of the ``with`` block."""
        for m in self._layers:
            forward = self._linear if isinstance(m, nn.Linear) else self._conv2d
            object.__setattr__(m, "forward", lambda x, m=m, f=forward: f(m, x))
        try:
            yield
        finally:
            for m in self._layers:
                object.__delattr__(m, "forward")

    # ------------------------------------------------------------ writing
    def _slots(self, p):
        """Parameter ``p``'s columns of the buffer, one row per group: a view of shape ``(n_groups,) + p.shape``,
        and whether to assign (the pass's first write) or add (a layer used twice, or ``add=True``)."""
        off, shape = self._where[id(p)]
        first = id(p) not in self._written and not self._add
        self._written.add(id(p))
        return self._out[:, off:off + int(np.prod(shape))].reshape((-1,) + shape), first

    def _groups(self, n):
        if n != self._bounds[-1]:
            raise ValueError(f"DataParallelTrainer(): grouped gradients need the batch on axis 0 of every "
                             f"Linear/Conv2d input ({self._bounds[-1]} samples), got {n} rows; pass "
                             f"group_shards=False.")
        return zip(self._bounds[:-1], self._bounds[1:])

    # ------------------------------------------------------------ the grouped ops
    def _linear(self, m, x):
        """``F.linear`` whose backward gives each group of rows its own weight and bias gradient."""
        w, b = m.weight, m.bias
        if x.shape[-1] != w.shape[1]:
            fail("x", f"an input whose last dimension is in_features={w.shape[1]}", f"shape {x.shape}")
        data = x.data @ w.data.T
        if b is not None:
            data += b.data
        out = Tensor(data, requires_grad=True, _parents=(x,), _op="grouped_linear")

        def _backward():
            g = out.grad
            per = int(np.prod(x.shape[1:-1], dtype=np.int64))       # positions per sample (1 for a batch of vectors)
            x2 = x.data.reshape(-1, x.shape[-1])                   # (samples * positions, in)
            # (out, rows), one copy: each group's product then reads contiguous columns of dY^T
            # (8 products of K = 32 from this layout: 0.69 ms against 0.83 ms from dY[rows].T views)
            gt = np.ascontiguousarray(g.reshape(-1, g.shape[-1]).T)
            (gw, first), (gb, b_first) = self._slots(w), (self._slots(b) if b is not None else (None, None))
            tmp = None if first else np.empty(gw.shape[1:], dtype=np.result_type(g, x.data))
            for j, (s, e) in enumerate(self._groups(len(x.data))):
                gj, xj = gt[:, s * per:e * per], x2[s * per:e * per]
                if first:
                    np.matmul(gj, xj, out=gw[j])
                else:                                               # one product buffer for all groups
                    gw[j] += np.matmul(gj, xj, out=tmp)
                if b is not None and b_first:
                    np.sum(gj, axis=1, out=gb[j])
                elif b is not None:
                    gb[j] += gj.sum(axis=1)
            if x.requires_grad:
                x._accumulate(g @ w.data)
        out._backward = _backward
        return out

    def _conv2d(self, m, x):
        """``F.conv2d`` (its forward and input gradient) with the weight and bias gradients per group.

        The weight gradient of group j is ``dY_j (O, b_j OH OW) @ cols_j``, from im2col of
        the input (computed again in backward: the library's conv2d keeps its own columns).
        """
        w, b = m.weight, m.bias
        y = F.conv2d(x, Tensor(w.data), None, m.stride, m.padding)   # weight as a constant: dX only
        data = y.data if b is None else y.data + b.data[:, None, None]
        out = Tensor(data, requires_grad=True, _parents=(y,), _op="grouped_conv2d")

        def _backward():
            g = out.grad                                               # (N, O, OH, OW)
            n, o = g.shape[:2]
            per = g.shape[2] * g.shape[3]
            gt = np.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(o, n * per)
            cols = F.im2col(x.data, m.kernel_size, m.stride, m.padding)  # (N OH OW, C kh kw)
            (gw, first), (gb, b_first) = self._slots(w), (self._slots(b) if b is not None else (None, None))
            gw = gw.reshape(len(gw), o, -1)                            # (groups, O, C kh kw)
            for j, (s, e) in enumerate(self._groups(n)):
                gj, cj = gt[:, s * per:e * per], cols[s * per:e * per]
                if first:
                    np.matmul(gj, cj, out=gw[j])
                else:
                    gw[j] += gj @ cj
                if b is not None and b_first:
                    np.sum(gj, axis=1, out=gb[j])
                elif b is not None:
                    gb[j] += gj.sum(axis=1)
            if y.requires_grad:
                y._accumulate(g)
        out._backward = _backward
        return out
