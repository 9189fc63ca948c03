"""Differentiable functions of Tensors: activations, losses, linear, convolution, pooling.

Most functions are compositions of the primitives in ``tensor.py`` (their
gradients come for free). A few are single graph nodes with a hand-written
backward because the fused form is much faster or more stable:
``linear``, ``log_softmax``, ``cross_entropy``, ``conv2d``, ``max_pool2d`` and
``avg_pool2d``. Their gradients are checked against finite differences in the
tests like everything else.

The hot loops of ``conv2d`` (both paths, forward and gradients), ``im2col`` and
``max_pool2d`` are numba kernels in ``_conv_kernels.py``, each next to the NumPy
reference to read first; under ``prunekit.backend("numpy")`` the references run
instead, with the same results.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _conv_kernels as K
from ._threads import matmul as _matmul  # a @ b; small products on one BLAS thread (see _threads.matmul)
from ._validate import check_int, check_number, fail
from .tensor import Tensor, is_grad_enabled

__all__ = [
    "relu", "sigmoid", "tanh", "softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss",
    "linear", "conv2d", "max_pool2d", "avg_pool2d", "dropout", "batch_norm", "flatten", "im2col",
]


def _t(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _node(data, parents, op):
    """An output Tensor that joins the graph only when an input needs gradients."""
    needs = is_grad_enabled() and any(p is not None and p.requires_grad for p in parents)
    parents = tuple(p for p in parents if p is not None) if needs else ()
    return Tensor(data, requires_grad=needs, _parents=parents, _op=op)


def _pair(name, v):
    """An int or a pair of ints -> (int, int); padding may be 0, kernel_size and stride must be >= 1."""
    if isinstance(v, numbers.Integral):
        v = (v, v)
    if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, numbers.Integral) for i in v)):
        fail(name, "an int or a pair of ints", v, TypeError)
    low = 0 if name == "padding" else 1
    if min(v) < low:
        fail(name, f"an int or a pair of ints >= {low}", v)
    return int(v[0]), int(v[1])


# ------------------------------------------------------------- activations
def relu(x):
    """max(x, 0)."""
    return _t(x).relu()


def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return _t(x).sigmoid()


def tanh(x):
    """Hyperbolic tangent."""
    return _t(x).tanh()


def log_softmax(x, axis=-1):
    """log(softmax(x)) = x - logsumexp(x), computed stably by subtracting the max first.

    Backward: d/dx = g - softmax(x) * sum(g).
    """
    x = _t(x)
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out_data = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    out = _node(out_data, (x,), "log_softmax")
    if out.requires_grad:
        def _backward():
            g = out.grad
            x._accumulate(g - np.exp(out_data) * g.sum(axis=axis, keepdims=True))
        out._backward = _backward
    return out


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, via exp(log_softmax) for stability."""
    return log_softmax(x, axis).exp()


# ------------------------------------------------------------------ losses
def _check_labels(labels, n_samples, n_classes):
    labels = labels.data if isinstance(labels, Tensor) else np.asarray(labels)
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and labels.size and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            fail("labels", "an integer array of class indices", f"dtype {labels.dtype}", TypeError)
    if labels.shape != (n_samples,):
        fail("labels", f"a 1-D array with one label per row of logits (shape ({n_samples},))",
             f"shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        fail("labels", f"class indices in the range [0, {n_classes - 1}]",
             f"values in [{labels.min()}, {labels.max()}]")
    return labels


def cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[label].

    ``logits`` is (N, C); ``labels`` an integer array of N class indices.
    One fused node: the gradient is (softmax(logits) - onehot(labels)) / N.
    """
    logits = _t(logits)
    if logits.ndim != 2:
        fail("logits", "a 2-D tensor (batch, classes)", f"shape {logits.shape}")
    n, c = logits.shape
    labels = _check_labels(labels, n, c)
    z = logits.data
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(n)
    out = _node(np.asarray(-logp[rows, labels].mean(), dtype=z.dtype), (logits,), "cross_entropy")
    if out.requires_grad:
        def _backward():
            d = np.exp(logp)
            d[rows, labels] -= 1
            logits._accumulate(d * (out.grad / n))
        out._backward = _backward
    return out


def nll_loss(log_probs, labels):
    """Mean of -log_probs[i, labels[i]] (use after log_softmax)."""
    log_probs = _t(log_probs)
    labels = _check_labels(labels, log_probs.shape[0], log_probs.shape[1])
    return -log_probs[np.arange(len(labels)), labels].mean()


def mse_loss(pred, target):
    """Mean squared error, mean((pred - target)^2); shapes must match."""
    pred, target = _t(pred), _t(target)
    if pred.shape != target.shape:
        fail("target", f"an array of the same shape as pred {pred.shape}", f"shape {target.shape}")
    diff = pred - target
    return (diff * diff).mean()


# ------------------------------------------------------------------ linear
def linear(x, weight, bias=None):
    """x @ weight.T + bias, with weight of shape (out_features, in_features).

    One node: grad_x = g @ W, grad_W = g.T @ x, grad_b = sum of g over the batch.
    Gradients that nobody needs (e.g. for the input images) are not computed.
    """
    x = _t(x)
    if x.shape[-1] != weight.shape[1]:
        fail("x", f"an input whose last dimension is in_features={weight.shape[1]}", f"shape {x.shape}")
    data = _matmul(x.data, weight.data.T)
    if bias is not None:
        data += bias.data
    out = _node(data, (x, weight, bias), "linear")
    if out.requires_grad:
        def _backward():
            g = out.grad
            g2 = g.reshape(-1, g.shape[-1])
            if weight.requires_grad:
                weight._accumulate(_matmul(g2.T, x.data.reshape(-1, x.shape[-1])), owned=True)
            if bias is not None and bias.requires_grad:
                bias._accumulate(g2.sum(axis=0), owned=True)
            if x.requires_grad:
                x._accumulate(_matmul(g, weight.data))
        out._backward = _backward
    return out


# ------------------------------------------------------------- convolution
def _im2col(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """Patches as columns: (C*kh*kw, N*OH*OW), the layout the kernels fill fastest."""
    n, c = x.shape[:2]
    cols = np.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    K.im2col_kernel.for_work(cols.size)(np.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, oh, ow, cols)
    return cols


def im2col(x, kernel_size, stride=1, padding=0) -> np.ndarray:
    """Unfold every (C, kh, kw) patch of ``x`` (N, C, H, W) into a row.

    Returns an array of shape (N*OH*OW, C*kh*kw): row (n, oh, ow), column order
    matching ``weight.reshape(out_channels, -1)``, so a convolution is one matrix
    product ``cols @ weight.reshape(O, -1).T``. (The array is a transposed view of
    the column-major patch matrix that ``conv2d`` uses internally.)
    """
    x = x.data if isinstance(x, Tensor) else np.asarray(x)
    kh, kw = _pair("kernel_size", kernel_size)
    sh, sw = _pair("stride", stride)
    ph, pw = _pair("padding", padding)
    n, c, h, w = x.shape
    oh, ow = K.out_size(h, kh, sh, ph), K.out_size(w, kw, sw, pw)
    return _im2col(x, kh, kw, sh, sw, ph, pw, oh, ow).T


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D convolution (cross-correlation, as in PyTorch) of NCHW ``x`` with (O, C, kh, kw) ``weight``.

    Computed as im2col followed by one matrix product, ``W (O, C*kh*kw) @ cols``;
    backward is the transposed product followed by col2im (the adjoint of im2col).
    Layers with few input channels and stride 1 (the first layer of an image
    model) loop over the input directly instead (see :func:`_direct_conv2d`).
    """
    x = _t(x)
    if x.ndim != 4:
        fail("x", "a 4-D tensor (N, C, H, W)", f"shape {x.shape}")
    o, c, kh, kw = weight.shape
    if x.shape[1] != c:
        fail("x", f"an input with {c} channels (weight shape {weight.shape})", f"{x.shape[1]} channels")
    sh, sw = _pair("stride", stride)
    ph, pw = _pair("padding", padding)
    n, _, h, w = x.shape
    oh, ow = K.out_size(h, kh, sh, ph), K.out_size(w, kw, sw, pw)
    if oh < 1 or ow < 1:
        fail("x", f"an input of at least the kernel size {(kh, kw)} after padding", f"shape {x.shape}")
    if (sh, sw) == (1, 1) and c <= DIRECT_CONV_MAX_CHANNELS and kh * kw > 1:
        return _direct_conv2d(x, weight, bias, ph, pw, oh, ow)
    cols = _im2col(x.data, kh, kw, sh, sw, ph, pw, oh, ow)
    wmat = weight.data.reshape(o, -1)
    y = _matmul(wmat, cols)                           # (O, N*OH*OW)
    if bias is not None:
        y += bias.data[:, None]
    out = _node(np.ascontiguousarray(y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3)), (x, weight, bias), "conv2d")
    if out.requires_grad:
        def _backward():
            g = np.ascontiguousarray(out.grad.transpose(1, 0, 2, 3)).reshape(o, -1)
            if weight.requires_grad:
                weight._accumulate(_matmul(g, cols.T).reshape(weight.shape), owned=True)
            if bias is not None and bias.requires_grad:
                bias._accumulate(g.sum(axis=1), owned=True)
            if x.requires_grad:
                dx = np.empty(x.shape, dtype=x.dtype)
                K.col2im_kernel.for_work(dx.size)(_matmul(wmat.T, g), kh, kw, sh, sw, ph, pw, oh, ow, dx)
                x._accumulate(dx)
        out._backward = _backward
    return out


DIRECT_CONV_MAX_CHANNELS = 4
"""Stride-1 convolutions with at most this many input channels skip im2col.

With C = 1 and a 5x5 kernel, im2col copies every input pixel 25 times into a
patch matrix 25x the size of the batch, then hands BLAS products of inner size
25 (forward) or of a tiny (O, 25) output (weight gradient), which it runs far
below peak. Looping over the input directly does the same multiply-adds from L1
cache: measured for LeNet-5's first layer at batch 128, forward 1.8 -> 0.6 ms and
weight gradient 1.8 -> 0.5 ms. With many channels im2col + BLAS wins again."""


def _direct_conv2d(x, weight, bias, ph, pw, oh, ow):
    """Stride-1 convolution by direct loops (``_conv_kernels.conv_direct_*``); same results as im2col."""
    dtype = np.result_type(x.data, weight.data)
    xd = np.ascontiguousarray(x.data, dtype=dtype)
    wd = np.ascontiguousarray(weight.data, dtype=dtype)
    bd = np.zeros(0, dtype) if bias is None else np.ascontiguousarray(bias.data, dtype=dtype)
    y = np.empty((x.shape[0], weight.shape[0], oh, ow), dtype=dtype)
    K.conv_direct_kernel.for_work(y.size)(xd, wd, bd, ph, pw, y)
    out = _node(y, (x, weight, bias), "conv2d")
    if out.requires_grad:
        def _backward():
            g = np.ascontiguousarray(out.grad, dtype=dtype)
            if weight.requires_grad or (bias is not None and bias.requires_grad):
                kernel = K.conv_direct_grad_w_kernel.for_work(y.size)
                tasks = 1 if kernel is K.conv_direct_grad_w_kernel.serial else min(x.shape[0], 4)  # partial sums
                part_w = np.empty((tasks,) + wd.shape, dtype=dtype)
                part_b = np.empty((tasks, wd.shape[0]), dtype=dtype)
                kernel(xd, g, ph, pw, part_w, part_b)
                if weight.requires_grad:
                    weight._accumulate(part_w.sum(axis=0), owned=True)
                if bias is not None and bias.requires_grad:
                    bias._accumulate(part_b.sum(axis=0), owned=True)
            if x.requires_grad:
                dx = np.empty(x.shape, dtype=dtype)
                K.conv_direct_grad_x_kernel.for_work(dx.size)(g, wd, ph, pw, dx)
                x._accumulate(dx)
        out._backward = _backward
    return out


# ---------------------------------------------------------------- pooling
def _pool_args(x, kernel_size, stride):
    if x.ndim != 4:
        fail("x", "a 4-D tensor (N, C, H, W)", f"shape {x.shape}")
    kh, kw = _pair("kernel_size", kernel_size)
    sh, sw = _pair("stride", kernel_size if stride is None else stride)
    oh, ow = K.out_size(x.shape[2], kh, sh, 0), K.out_size(x.shape[3], kw, sw, 0)
    if min(kh, kw, sh, sw) < 1 or oh < 1 or ow < 1:
        fail("kernel_size", f"a positive window no larger than the input {x.shape[2:]}", (kh, kw))
    return kh, kw, sh, sw, oh, ow


def max_pool2d(x, kernel_size, stride=None):
    """Maximum over each kh x kw window (stride defaults to the window size).

    Backward sends each gradient to the input that won its window (first one on ties).
    """
    x = _t(x)
    kh, kw, sh, sw, oh, ow = _pool_args(x, kernel_size, stride)
    xd = np.ascontiguousarray(x.data)
    y = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
    arg = np.empty(y.shape, dtype=np.int32)
    K.max_pool_kernel.for_work(xd.size)(xd, kh, kw, sh, sw, y, arg)
    out = _node(y, (x,), "max_pool2d")
    if out.requires_grad:
        def _backward():
            dx = np.empty(x.shape, dtype=x.dtype)
            K.max_pool_backward_kernel.for_work(dx.size)(np.ascontiguousarray(out.grad), arg, kh, kw, sh, sw, dx)
            x._accumulate(dx)
        out._backward = _backward
    return out


def avg_pool2d(x, kernel_size, stride=None):
    """Mean over each kh x kw window; backward spreads each gradient evenly over its window."""
    x = _t(x)
    kh, kw, sh, sw, oh, ow = _pool_args(x, kernel_size, stride)
    win = np.lib.stride_tricks.sliding_window_view(x.data, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    out = _node(win.mean(axis=(-2, -1)).astype(x.dtype, copy=False), (x,), "avg_pool2d")
    if out.requires_grad:
        def _backward():
            share = out.grad / (kh * kw)
            dx = np.zeros(x.shape, dtype=x.dtype)
            for a in range(kh):
                for b in range(kw):
                    dx[:, :, a:a + sh * oh:sh, b:b + sw * ow:sw] += share
            x._accumulate(dx)
        out._backward = _backward
    return out


# ---------------------------------------------------------- normalisation
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation (Ioffe & Szegedy 2015) over the batch (and spatial) axes.

    y = (x - mean) / sqrt(var + eps) * weight + bias. In training the batch statistics
    are used and the running ones updated in place (unbiased variance, as PyTorch);
    in evaluation the running statistics are used. The arguments come in PyTorch's
    order (``torch.nn.functional.batch_norm``): running statistics first, then the
    optional affine ``weight`` and ``bias``.
    """
    if training and (running_mean is None or running_var is None):
        fail("running_mean", "arrays of the running statistics (updated in place in training)", "None")
    if (weight is None) != (bias is None):
        fail("bias", "given exactly when weight is given", "None" if bias is None else "an array")
    x = _t(x)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    if training:
        if x.size // x.shape[1] < 2:
            fail("x", "more than one value per channel in training mode (batch statistics of a single "
                 "value are meaningless; call model.eval() to use the running statistics)", f"shape {x.shape}")
        mean = x.mean(axis=axes, keepdims=True)
        centred = x - mean
        var = (centred * centred).mean(axis=axes, keepdims=True)
        m = x.size // x.shape[1]
        running_mean *= 1 - momentum
        running_mean += momentum * mean.data.reshape(-1)
        running_var *= 1 - momentum
        running_var += momentum * var.data.reshape(-1) * (m / max(m - 1, 1))
    else:
        centred = x - running_mean.reshape(shape)
        var = Tensor(running_var.reshape(shape))
    y = centred / (var + eps).sqrt()
    if weight is not None:
        y = y * weight.reshape(shape) + bias.reshape(shape)
    return y


# ------------------------------------------------------------------- misc
def dropout(x, p=0.5, training=True, rng=None):
    """Zero each entry with probability ``p`` and scale the rest by 1/(1-p) (inverted dropout)."""
    check_number("p", p, 0, 1, "[)")
    x = _t(x)
    if not training or p == 0:
        return x
    rng = rng if rng is not None else np.random.default_rng()
    keep = (rng.random(x.shape) >= p).astype(x.dtype) / (1 - p)
    return x * keep


def flatten(x, start_dim=1):
    """Merge all axes from ``start_dim`` on into one."""
    x = _t(x)
    check_int("start_dim", start_dim, 0, max(x.ndim - 1, 0))
    return x.reshape(x.shape[:start_dim] + (int(np.prod(x.shape[start_dim:])),))   # not -1: an empty batch works too
