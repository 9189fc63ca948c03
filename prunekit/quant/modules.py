"""Integer-only int8 layers and post-training static quantization (:func:`quantize_model`).

The quantized model follows the TFLite int8 scheme (Jacob et al. 2018):

* weights: int8, symmetric (zero point 0), one scale per output channel (or per tensor);
* activations: int8, asymmetric, one (scale, zero point) per tensor, chosen by calibration;
* biases: int32 with scale ``s_x * s_w[c]`` (zero point 0);
* every product accumulates in int32 (``prunekit.sparse``'s int8 kernels; convolution is
  im2col + the same matmul), and the accumulators are brought back to int8 by the
  multiplier-and-shift of :mod:`~prunekit.quant.fixed_point`.

Between "quantize the input" and "dequantize the output" only integers flow: the
layers here read int8/int32 arrays and Python ints, never a float (the tests
poison every float attribute with NaN and get the same integers).

How each float layer becomes integer code
-----------------------------------------
Linear / Conv2d (+ a following BatchNorm, folded in; + a following ReLU, fused)::

    acc[b, c] = sum_k x_q[b, k] w_q[c, k] + (bias_q[c] - z_x * sum_k w_q[c, k])     # int32
    y_q[b, c] = clamp(z_y + MBQM(acc[b, c], m[c], shift[c]), lo, 127)               # int8

with ``M[c] = s_x s_w[c] / s_y = m[c] 2^(shift[c] - 31)`` and ``lo = z_y`` when a ReLU
is fused (the clamp *is* the ReLU), else -128. The ``z_x`` term is folded into the
bias ahead of time, as TFLite does. Convolution pads with ``z_x`` (the integer that
means 0.0), not with 0.

Residual add (TFLite's ADD): both inputs are rescaled to a common scale with 20 bits
of headroom, added, and requantized to the output scale, all with multipliers and
shifts. Max pooling works on the integers directly (max commutes with an increasing
affine map); average pooling sums in int32 and divides with rounding. Flatten is a
reshape.

Speed: for a small input (batch 1) each Linear / Conv2d is one fused numba kernel
(matmul or direct convolution + bias + requantization, :mod:`prunekit.quant._kernels`);
for a large batch, the parallel int8 matmul (conv: im2col first) and then :func:`requantize`.
Both give the same integers.

Backends: under ``pk.backend("numpy")`` the matmul is ``int8_matmul_int32_reference``,
im2col its NumPy reference and requantization :func:`~prunekit.quant.fixed_point.requantize_reference`:
the integers are the same bit for bit (tested).
"""
from __future__ import annotations

import numpy as np

from .. import _conv_kernels
from .. import functional as F
from .. import models as _models
from .. import nn
from .._backend import use_numba
from .._glue import batches
from .._table import Col, html_table
from .._validate import check_int, check_option, fail
from ..tensor import Tensor, no_grad
from . import _kernels
from .affine import check_int_array, dequantize, quant_params, quantize, qrange
from .calibration import DEFAULT_SAMPLES, get_observer
from .fixed_point import multiply_by_quantized_multiplier, quantize_multiplier, requantize_kernel

__all__ = ["QuantizedModel", "QuantizedLinear", "QuantizedConv2d", "QuantizedAdd", "QuantizedResidual",
           "QuantizedMaxPool2d", "QuantizedAvgPool2d", "QuantizedGlobalAvgPool2d", "QuantizedReLU",
           "QuantizedFlatten", "quantize_model", "fold_batchnorm", "QuantReport", "compare", "layer_names"]

QMIN, QMAX = -128, 127
ADD_LEFT_SHIFT = 20  # TFLite's headroom for int8 ADD: (q - z) << 20 still fits in int32


# =========================================================================== integer ops


SERIAL_MATMUL_WORK = 1 << 20
"""Below this many multiply-adds the int8 product runs on the single-thread portable kernel: waking the
worker threads of the parallel SIMD kernel cost 1-15 ms on a shared 2-core machine, against 6 us for a
batch-1 LeNet-300-100 layer on one thread (measured; see the report of issue 12)."""


def _matmul_int32(xq, w):
    """``xq @ w.q.T`` in int32: prunekit.sparse's int8 kernels, or their NumPy reference under the numpy backend."""
    from ..sparse import kernels

    if not use_numba():
        return kernels.int8_matmul_int32_reference(xq, w.q)
    xq = np.ascontiguousarray(xq)
    if xq.shape[0] * w.shape[0] * w.shape[1] < SERIAL_MATMUL_WORK:
        out = np.empty((xq.shape[0], w.shape[0]), np.int32)
        kernels.int8_matmul_int32_kernel.serial(xq, w.q, out)
        return out
    return kernels.int8_matmul_int32(xq, w)


def _im2col_int(xq, kh, kw, sh, sw):
    """Patches of (already padded) ``xq`` as rows: (N*OH*OW, C*kh*kw), C-contiguous."""
    if use_numba():
        return np.ascontiguousarray(F.im2col(xq, (kh, kw), (sh, sw), 0))
    from .. import _conv_kernels

    return np.ascontiguousarray(_conv_kernels.im2col_reference(xq, kh, kw, sh, sw, 0, 0).T)


class _IntOp:
    """An integer layer: ``run(q) -> q`` on int8 arrays. ``in_qp`` / ``out_qp`` are (scale, zero point),
    kept for reading and export only; ``run`` uses the integer fields."""

    kind = "op"

    def run(self, q):
        """int8 input array -> int8 output array (integers only)."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        return ""


class QuantizedLinear(_IntOp):
    """int8 ``y = x W^T + b`` with int32 accumulation and per-channel requantization (see the module docstring)."""

    kind = "linear"

    def __init__(self, weight, bias_q, in_qp, out_qp, relu=False):
        from ..sparse import Int8Weight

        if not isinstance(weight, Int8Weight):
            fail("weight", "a prunekit.sparse.Int8Weight", type(weight).__name__, TypeError)
        self.weight = weight
        self.bias_q = np.asarray(bias_q, np.int32)  # round(b / (s_x s_w[c])): the TFLite int32 bias
        self.in_qp, self.out_qp, self.relu = (float(in_qp[0]), int(in_qp[1])), (float(out_qp[0]), int(out_qp[1])), relu
        s_x, z_x = self.in_qp
        s_y, z_y = self.out_qp
        real = s_x * weight.scales.astype(np.float64) / s_y
        self.multiplier, self.shift = quantize_multiplier(np.atleast_1d(real))  # contiguous int32 (out,)
        self.in_zero_point, self.out_zero_point = z_x, z_y
        self.lo = max(QMIN, z_y) if relu else QMIN
        # z_x * sum_k w_q[c, k] folded into the bias once (int64 first: it cannot overflow then)
        self.bias_int32 = (self.bias_q.astype(np.int64) - z_x * weight.row_sums.astype(np.int64)).astype(np.int32)

    def accumulate(self, q2):
        """int32 accumulators (B, out) for int8 rows ``q2`` (B, in)."""
        return _matmul_int32(q2, self.weight) + self.bias_int32

    def requantize(self, acc):
        """int32 accumulators (B, out) -> int8 outputs: per-channel multiplier and shift, ``+ z_y``, clamp."""
        out = np.empty(acc.shape, np.int8)
        # the kernel of fixed_point.requantize() without its argument checks and per-call conversions
        # (multiplier and shift are already contiguous int32 arrays, made in __init__)
        requantize_kernel.for_work(acc.size)(acc, self.multiplier, self.shift, self.out_zero_point, self.lo, QMAX, out)
        return out

    def run(self, q):
        if q.shape[0] * self.weight.q.size < SERIAL_MATMUL_WORK:
            # small input (batch 1): matmul + bias + requantize in one kernel call; LeNet-300-100's
            # three layers went from 17 + 12 + 11 us to 9 + 3 + 1.4 us (measured, issue 12)
            out = np.empty((q.shape[0], self.weight.shape[0]), np.int8)
            _kernels.linear_requantize_kernel(np.ascontiguousarray(q), self.weight.q, self.bias_int32,
                                              self.multiplier, self.shift, self.out_zero_point, self.lo, QMAX, out)
            return out
        return self.requantize(self.accumulate(q))

    def extra_repr(self):
        o, i = self.weight.shape
        return f"in_features={i}, out_features={o}, relu={self.relu}"


class QuantizedConv2d(QuantizedLinear):
    """int8 convolution: pad with the input zero point, im2col, int8 matmul, requantize per channel."""

    kind = "conv"

    def __init__(self, weight, bias_q, in_qp, out_qp, kernel_size, stride, padding, relu=False):
        super().__init__(weight, bias_q, in_qp, out_qp, relu)
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), tuple(padding)

    def run(self, q):
        n = q.shape[0]
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = (q.shape[2] + 2 * ph - kh) // sh + 1, (q.shape[3] + 2 * pw - kw) // sw + 1
        if n * oh * ow * self.weight.q.size < SERIAL_MATMUL_WORK:
            # small input (batch 1): a direct convolution with bias and requantization in one kernel
            # call, no im2col matrix; LeNet-5's two convs went from 81 + 43 us to 8 + 18 us (measured, issue 12)
            out = np.empty((n, self.weight.shape[0], oh, ow), np.int8)
            _kernels.conv_requantize_kernel(np.ascontiguousarray(q), self.weight.q, self.bias_int32,
                                            self.in_zero_point, kh, kw, sh, sw, ph, pw, self.multiplier,
                                            self.shift, self.out_zero_point, self.lo, QMAX, out)
            return out
        if ph or pw:
            q = np.pad(q, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=self.in_zero_point)
        cols = _im2col_int(q, kh, kw, sh, sw)
        y = self.requantize(self.accumulate(cols))
        return np.ascontiguousarray(y.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2))

    def extra_repr(self):
        return (f"out_channels={self.weight.shape[0]}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, relu={self.relu}")


class QuantizedAdd(_IntOp):
    """int8 ``a + b`` (TFLite's ADD): each input shifted left by 20 bits and rescaled by its own
    multiplier to the common scale ``2 max(s_a, s_b)``, summed, requantized to ``s_y``."""

    kind = "add"

    def __init__(self, a_qp, b_qp, out_qp, relu=False):
        self.a_qp, self.b_qp, self.out_qp, self.relu = a_qp, b_qp, out_qp, relu
        twice = 2 * max(a_qp[0], b_qp[0])
        self.a_multiplier, self.a_shift = quantize_multiplier(a_qp[0] / twice)
        self.b_multiplier, self.b_shift = quantize_multiplier(b_qp[0] / twice)
        self.out_multiplier, self.out_shift = quantize_multiplier(twice / ((1 << ADD_LEFT_SHIFT) * out_qp[0]))
        self.a_zero_point, self.b_zero_point, self.out_zero_point = int(a_qp[1]), int(b_qp[1]), int(out_qp[1])
        self.lo = max(QMIN, self.out_zero_point) if relu else QMIN

    def run(self, qa, qb):
        a = (qa.astype(np.int32) - self.a_zero_point) << ADD_LEFT_SHIFT
        b = (qb.astype(np.int32) - self.b_zero_point) << ADD_LEFT_SHIFT
        total = (multiply_by_quantized_multiplier(a, self.a_multiplier, self.a_shift).astype(np.int64)
                 + multiply_by_quantized_multiplier(b, self.b_multiplier, self.b_shift))
        y = multiply_by_quantized_multiplier(np.clip(total, -(2 ** 31), 2 ** 31 - 1),
                                             self.out_multiplier, self.out_shift).astype(np.int64)
        return np.clip(y + self.out_zero_point, self.lo, QMAX).astype(np.int8)

    def extra_repr(self):
        return f"relu={self.relu}"


class QuantizedResidual(_IntOp):
    """A residual block in integers: ``add(conv2(conv1(x)), shortcut(x))`` with the final ReLU fused in the add."""

    kind = "residual"

    def __init__(self, conv1, conv2, shortcut, add):
        self.conv1, self.conv2, self.shortcut, self.add = conv1, conv2, shortcut, add

    def run(self, q):
        h = self.conv2.run(self.conv1.run(q))
        s = q if self.shortcut is None else self.shortcut.run(q)
        return self.add.run(h, s)

    def extra_repr(self):
        return f"shortcut={'identity' if self.shortcut is None else 'conv'}"


class QuantizedMaxPool2d(_IntOp):
    """Max pooling on the int8 values themselves (same scale and zero point in and out)."""

    kind = "maxpool"

    def __init__(self, kernel_size, stride):
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)

    def run(self, q):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        n, c, h, w = q.shape
        out = np.empty((n, c, (h - kh) // sh + 1, (w - kw) // sw + 1), q.dtype)
        # the float model's max-pool kernel (it also records the argmax, unused here): LeNet-5's pools
        # went from 63 + 31 us (NumPy's max over a sliding-window view) to 8 + 4 us (measured, issue 12)
        _conv_kernels.max_pool_kernel.for_work(q.size)(np.ascontiguousarray(q), kh, kw, sh, sw, out,
                                                       np.empty(out.shape, np.int64))
        return out

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _rounding_mean(total, count):
    """``total / count`` rounded to nearest, ties away from zero, in integers (TFLite's int8 average pool)."""
    half = count // 2
    return np.where(total >= 0, (total + half) // count, -((-total + half) // count))


class QuantizedAvgPool2d(QuantizedMaxPool2d):
    """Average pooling: int32 window sums divided with rounding (scale and zero point unchanged)."""

    kind = "avgpool"

    def run(self, q):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        win = np.lib.stride_tricks.sliding_window_view(q, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        return _rounding_mean(win.sum(axis=(4, 5), dtype=np.int32), kh * kw).astype(np.int8)


class QuantizedGlobalAvgPool2d(_IntOp):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C), int32 sum and rounding division."""

    kind = "gap"

    def run(self, q):
        return _rounding_mean(q.sum(axis=(2, 3), dtype=np.int32), q.shape[2] * q.shape[3]).astype(np.int8)


class QuantizedReLU(_IntOp):
    """ReLU in the integer domain: ``max(q, zero_point)`` (zero_point is the integer that means 0.0)."""

    kind = "relu"

    def __init__(self, zero_point):
        self.zero_point = int(zero_point)

    def run(self, q):
        return np.maximum(q, np.int8(self.zero_point))


class QuantizedFlatten(_IntOp):
    """(N, C, H, W) -> (N, C*H*W): a reshape."""

    kind = "flatten"

    def run(self, q):
        return q.reshape(q.shape[0], int(np.prod(q.shape[1:])))   # not -1: an empty batch works too


class QuantizedModel(nn.Module):
    """An int8 model: quantize the input, run integer ops, dequantize the output.

    ``qmodel(x)`` takes float input (Tensor -> Tensor, ndarray -> ndarray) and
    returns float32. :meth:`run_integer` is the integer-only part: int8 in, int8 out.
    """

    def __init__(self, ops, input_qp, output_qp, float_model=None, sample_shape=None):
        super().__init__()
        object.__setattr__(self, "ops", list(ops))
        object.__setattr__(self, "float_model", float_model)
        self.sample_shape = None if sample_shape is None else tuple(int(d) for d in sample_shape)  # one input
        self.input_qp = (float(input_qp[0]), int(input_qp[1]))
        self.output_qp = (float(output_qp[0]), int(output_qp[1]))

    def quantize_input(self, x):
        """Float input -> int8 with the calibrated input scale and zero point (a float step).

        The same integers as ``affine.quantize(x, scale, zero_point)`` (tested), in one kernel
        call instead of its general per-call checks: 2 us instead of 17 at batch 1 (measured, issue 12).
        """
        x = np.asarray(x, np.float32, order="C")
        out = np.empty(x.shape, np.int8)
        scale, zero_point = self.input_qp
        if not _kernels.quantize_input_kernel(x.reshape(-1), np.float32(scale), zero_point, out.reshape(-1)):
            fail("x", "an array of finite numbers (no NaN or inf)", "an array with NaN or inf")
        return out

    def dequantize_output(self, q):
        """int8 output -> float32 (a float step)."""
        return dequantize(q, *self.output_qp)

    def _check_sample_shape(self, name, shape):
        if self.sample_shape is not None and tuple(shape[1:]) != self.sample_shape:
            fail(name, f"a batch of inputs of shape (N, {', '.join(map(str, self.sample_shape))}) (the shape the "
                 f"model was calibrated on)", f"shape {shape}")

    def run_integer(self, q, trace=None):
        """The integer-only forward: int8 input -> int8 output. ``trace`` (a list) receives
        ``(op name, output array)`` for every op, to look inside."""
        check_int_array("q", q)
        self._check_sample_shape("q", q.shape)
        for i, op in enumerate(self.ops):
            q = op.run(q)
            if trace is not None:
                trace.append((f"{i}:{op.kind}", q))
        return q

    def run(self, x):
        """float32 array in, float32 array out: quantize, :meth:`run_integer`, dequantize."""
        x = np.asarray(x)
        self._check_sample_shape("x", x.shape)
        q = self.quantize_input(x)
        for op in self.ops:  # run_integer's loop: q is the model's own int8 array, no need to check it again
            q = op.run(q)
        # dequantize_output()'s arithmetic without its checks: 2.5 us instead of 6.7 at batch 1 (measured, issue 12)
        scale, zero_point = self.output_qp
        return (q.astype(np.int32) - np.int32(zero_point)).astype(np.float32) * np.float32(scale)

    def __call__(self, x, *args):
        if isinstance(x, Tensor):
            return Tensor(self.run(x.data))
        return self.run(np.asarray(x))

    def forward(self, x):
        return self(x)

    @property
    def nbytes(self) -> int:
        """Bytes of the integer parameters (int8 weights, int32 biases, int32 multipliers and shifts)."""
        total = 0
        for op in _walk(self.ops):
            if isinstance(op, QuantizedLinear):
                total += op.weight.q.nbytes + op.bias_int32.nbytes + op.multiplier.nbytes + op.shift.nbytes
        return total

    def __repr__(self):
        lines = [f"QuantizedModel(input scale={self.input_qp[0]:.4g}, zero_point={self.input_qp[1]}"]
        lines += [f"  ({i}): {op!r}" for i, op in enumerate(self.ops)]
        return "\n".join(lines) + "\n)"


def _walk(ops):
    for op in ops:
        yield op
        if isinstance(op, QuantizedResidual):
            yield from (o for o in (op.conv1, op.conv2, op.shortcut, op.add) if o is not None)


# =========================================================================== conversion


def fold_batchnorm(weight, bias, bn):
    """Fold an eval-mode BatchNorm into the preceding conv/linear: returns ``(W', b')`` (float64).

    ``BN(W x + b) = a (W x + b - mean) + beta`` with ``a = gamma / sqrt(var + eps)``, so
    ``W' = a W`` (per output channel) and ``b' = a (b - mean) + beta``.
    """
    gamma = bn.weight.data if bn.weight is not None else np.ones(bn.num_features)
    beta = bn.bias.data if bn.bias is not None else np.zeros(bn.num_features)
    a = gamma.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    w = weight.astype(np.float64) * a.reshape((-1,) + (1,) * (weight.ndim - 1))
    b = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
    return w, a * (b - bn.running_mean) + beta


class _Affine:
    """A float conv/linear step with BN folded and ReLU fused: what becomes one integer layer."""

    def __init__(self, layer, bn=None, relu=False, name=""):
        w = layer.weight.data
        b = None if layer.bias is None else layer.bias.data
        if bn is not None:
            w, b = fold_batchnorm(w, b, bn)
        self.name = name  # the float layer's dotted name, e.g. "0" or "3.conv1"
        self.weight = np.asarray(w, np.float32)
        self.bias = np.zeros(w.shape[0], np.float32) if b is None else np.asarray(b, np.float32)
        self.relu = relu
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv:
            self.kernel_size, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding
        self.observer = None

    def float_forward(self, x):
        with no_grad():
            if self.conv:
                y = F.conv2d(Tensor(x), Tensor(self.weight), Tensor(self.bias), self.stride, self.padding).data
            else:
                y = x @ self.weight.T + self.bias
        return np.maximum(y, 0) if self.relu else y

    def convert(self, in_qp, out_qp, weight_bits, per_channel):
        from ..sparse import Int8Weight

        if isinstance(weight_bits, dict):
            weight_bits = weight_bits.get(self.name, 8)

        w2 = self.weight.reshape(self.weight.shape[0], -1)
        if per_channel:
            scales, _ = quant_params(w2, bits=weight_bits, symmetric=True, axis=0)
        else:
            s, _ = quant_params(w2, bits=weight_bits, symmetric=True)
            scales = np.full(w2.shape[0], s, np.float32)
        q = quantize(w2, scales, np.zeros(w2.shape[0], np.int32), bits=8, axis=0, narrow_range=True)
        qmin, qmax = qrange(weight_bits, symmetric=True)
        q = np.clip(q, qmin, qmax).astype(np.int8)
        bias_scale = in_qp[0] * scales.astype(np.float64)
        bias_q = np.clip(np.rint(self.bias / bias_scale), -(2 ** 31 - 1), 2 ** 31 - 1).astype(np.int32)
        weight = Int8Weight(q, scales)
        if self.conv:
            return QuantizedConv2d(weight, bias_q, in_qp, out_qp, self.kernel_size, self.stride, self.padding,
                                   self.relu)
        return QuantizedLinear(weight, bias_q, in_qp, out_qp, self.relu)


class _Residual:
    def __init__(self, block, name=""):
        p = f"{name}." if name else ""
        self.conv1 = _Affine(block.conv1, block.bn1, relu=True, name=p + "conv1")
        self.conv2 = _Affine(block.conv2, block.bn2, relu=False, name=p + "conv2")
        sc = block.shortcut
        self.shortcut = None if isinstance(sc, nn.Identity) else _Affine(sc[0], sc[1], relu=False,
                                                                          name=p + "shortcut.0")
        self.observer = None

    def float_forward(self, x):
        h = self.conv2.float_forward(self.conv1.float_forward(x))
        s = x if self.shortcut is None else self.shortcut.float_forward(x)
        return np.maximum(h + s, 0)


class _Same:
    """A step whose output keeps the input's scale and zero point (pooling, flatten, ReLU, identity)."""

    def __init__(self, module):
        self.module = module
        self.observer = None

    def float_forward(self, x):
        with no_grad():
            return self.module(Tensor(x)).data


_SKIP = (nn.Identity, nn.Dropout)


def _plan(model):
    """The float model as a list of steps, each one future integer op (BN folded, ReLU fused)."""
    flat = _flatten(model, "")  # nested Sequentials are flattened (not a residual block's shortcut)
    steps, i = [], 0
    while i < len(flat):
        name, m = flat[i]
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            bn = relu = None
            j = i + 1
            bn_cls = nn.BatchNorm2d if isinstance(m, nn.Conv2d) else nn.BatchNorm1d
            if j < len(flat) and isinstance(flat[j][1], bn_cls):
                bn, j = flat[j][1], j + 1
            if j < len(flat) and isinstance(flat[j][1], nn.ReLU):
                relu, j = flat[j][1], j + 1
            steps.append(_Affine(m, bn, relu is not None, name))
            i = j
            continue
        if isinstance(m, _models.ResidualBlock):
            steps.append(_Residual(m, name))
        elif isinstance(m, (nn.ReLU, nn.MaxPool2d, nn.Flatten, _models.GlobalAvgPool2d)):
            steps.append(_Same(m))
        elif isinstance(m, _SKIP):
            pass
        else:
            fail("model", "a model built from Linear, Conv2d, BatchNorm (after a conv/linear), ReLU, MaxPool2d, "
                 "AvgPool2d, Flatten, GlobalAvgPool2d, ResidualBlock, Dropout and Identity (the layers with an "
                 "integer implementation)", f"a {type(m).__name__} layer", TypeError)
        i += 1
    return steps


def _plan_in_eval(model):
    """:func:`_plan` with ``model`` in eval mode for the call; its training flag is restored after."""
    was = model.training
    model.eval()
    try:
        return _plan(model)
    finally:
        model.train(was)


def _flatten(m, name):
    """``[(dotted name, layer)]`` in execution order, nested Sequentials opened up."""
    if isinstance(m, nn.Sequential):
        out = []
        for child_name, c in m.named_children():
            out.extend(_flatten(c, f"{name}.{child_name}" if name else child_name))
        return out
    return [(name, m)]


def layer_names(steps):
    """Names of the conv/linear layers of a plan, in order (the keys a ``weight_bits`` dict may use)."""
    names = []
    for s in steps:
        if isinstance(s, _Affine):
            names.append(s.name)
        elif isinstance(s, _Residual):
            names += [a.name for a in (s.conv1, s.conv2, s.shortcut) if a is not None]
    return names


def _new_observers(steps, calibration, options):
    for s in steps:
        if isinstance(s, _Affine):
            s.observer = get_observer(calibration, **options)
        elif isinstance(s, _Residual):
            for sub in (s.conv1, s.conv2, s.shortcut):
                if sub is not None:
                    sub.observer = get_observer(calibration, **options)
            s.observer = get_observer(calibration, **options)


def _calibrate(steps, x, input_observer):
    input_observer.observe(x)
    for s in steps:
        if isinstance(s, _Residual):
            h1 = s.conv1.float_forward(x)
            s.conv1.observer.observe(h1)
            h2 = s.conv2.float_forward(h1)
            s.conv2.observer.observe(h2)
            sc = x
            if s.shortcut is not None:
                sc = s.shortcut.float_forward(x)
                s.shortcut.observer.observe(sc)
            x = np.maximum(h2 + sc, 0)
            s.observer.observe(x)
        else:
            x = s.float_forward(x)
            if s.observer is not None:
                s.observer.observe(x)
    return x


def _qp(observer):
    return observer.quant_params(bits=8, symmetric=False)


def _convert(steps, in_qp, weight_bits, per_channel):
    ops, qp = [], in_qp
    for s in steps:
        if isinstance(s, _Affine):
            out_qp = _qp(s.observer)
            ops.append(s.convert(qp, out_qp, weight_bits, per_channel))
            qp = out_qp
        elif isinstance(s, _Residual):
            q1 = _qp(s.conv1.observer)
            conv1 = s.conv1.convert(qp, q1, weight_bits, per_channel)
            q2 = _qp(s.conv2.observer)
            conv2 = s.conv2.convert(q1, q2, weight_bits, per_channel)
            if s.shortcut is None:
                shortcut, qs = None, qp
            else:
                qs = _qp(s.shortcut.observer)
                shortcut = s.shortcut.convert(qp, qs, weight_bits, per_channel)
            out_qp = _qp(s.observer)
            ops.append(QuantizedResidual(conv1, conv2, shortcut, QuantizedAdd(q2, qs, out_qp, relu=True)))
            qp = out_qp
        else:
            m = s.module
            if isinstance(m, nn.AvgPool2d):  # (a subclass of MaxPool2d: test it first)
                ops.append(QuantizedAvgPool2d(m.kernel_size, m.stride))
            elif isinstance(m, nn.MaxPool2d):
                ops.append(QuantizedMaxPool2d(m.kernel_size, m.stride))
            elif isinstance(m, nn.Flatten):
                ops.append(QuantizedFlatten())
            elif isinstance(m, nn.ReLU):
                ops.append(QuantizedReLU(qp[1]))
            elif isinstance(m, _models.GlobalAvgPool2d):
                ops.append(QuantizedGlobalAvgPool2d())
    return ops, qp


def quantize_model(model, data, *, weight_bits=8, per_channel=True, calibration="minmax",
                   n_samples=DEFAULT_SAMPLES, batch_size=None, calibration_options=None):
    """Post-training static quantization: an integer-only int8 copy of ``model``.

    ``data``: calibration inputs in any form :func:`prunekit._glue.batches` takes (an
    ``(x, y)`` pair, a DataLoader, a dataset); the first ``n_samples`` samples
    (default 256; TFLite recommends 100-500) are run through the float model
    (BatchNorm folded) and an observer per activation (``calibration``: a name from
    :func:`~prunekit.quant.calibration.available_calibrators` or an Observer class)
    sets each activation's int8 scale and zero point. Weights are quantized
    symmetric to ``weight_bits`` (2..8; stored as int8), per output channel unless
    ``per_channel=False``; a dict ``{layer name: bits}`` sets each layer's width (mixed
    precision; names as in ``model.named_modules()``, missing layers get 8). The float model is not changed.

    Returns a :class:`QuantizedModel`; see the module docstring for the integer arithmetic.
    """
    if not isinstance(model, nn.Module):
        fail("model", "a prunekit.nn.Module", type(model).__name__, TypeError)
    if isinstance(weight_bits, dict):
        for k, b in weight_bits.items():
            check_int(f"weight_bits[{k!r}]", b, 2, 8)
    else:
        check_int("weight_bits", weight_bits, 2, 8)
    if not isinstance(per_channel, bool):
        fail("per_channel", "True or False", per_channel, TypeError)
    check_int("n_samples", n_samples, 1)
    if calibration_options is not None and not isinstance(calibration_options, dict):
        fail("calibration_options", "None or a dict of observer options", calibration_options, TypeError)
    if isinstance(calibration, str):
        from .calibration import available_calibrators

        check_option("calibration", calibration, available_calibrators())
    was_training = model.training
    model.eval()
    try:
        steps = _plan(model)
        if isinstance(weight_bits, dict):
            known = layer_names(steps)
            unknown = sorted(set(weight_bits) - set(known))
            if unknown:
                fail("weight_bits", f"a dict keyed by the model's conv/linear layer names {known}",
                     f"unknown names {unknown}")
        options = dict(calibration_options or {})
        _new_observers(steps, calibration, options)
        input_observer = get_observer(calibration, **options)
        seen, shape = 0, None
        for xb, _ in batches(data, batch_size, where="quantize_model(): data"):
            xb = np.asarray(xb.data if isinstance(xb, Tensor) else xb, np.float32)[: n_samples - seen]
            shape = xb.shape[1:]
            _calibrate(steps, xb, input_observer)
            seen += len(xb)
            if seen >= n_samples:
                break
        if seen == 0:
            fail("data", "calibration data with at least one sample", "no samples")
        in_qp = _qp(input_observer)
        ops, out_qp = _convert(steps, in_qp, weight_bits, per_channel)
    finally:
        model.train(was_training)
    return QuantizedModel(ops, in_qp, out_qp, float_model=model, sample_shape=shape)


def _out_qp(op, qp):
    """The (scale, zero point) of ``op``'s output, given its input's."""
    if isinstance(op, QuantizedLinear):
        return op.out_qp
    if isinstance(op, QuantizedResidual):
        return op.add.out_qp
    return qp


class QuantReport:
    """Float vs int8, layer by layer, on the same inputs: the signal-to-quantization-noise ratio
    ``SQNR = 10 log10(sum f^2 / sum (f - q)^2)`` (dB; each bit is worth about 6 dB), the largest
    error in output steps, and the top-1 agreement (and accuracies, given labels) at the end.
    """

    def __init__(self, rows, float_out, quant_out, labels=None):
        self.rows = rows  # dicts: name, kind, shape, sqnr_db, max_error, scale
        self.agreement = float((float_out.argmax(1) == quant_out.argmax(1)).mean())
        self.max_abs_error = float(np.abs(float_out - quant_out).max())
        self.float_accuracy = self.quant_accuracy = None
        if labels is not None:
            self.float_accuracy = float((float_out.argmax(1) == labels).mean())
            self.quant_accuracy = float((quant_out.argmax(1) == labels).mean())

    def __repr__(self):
        lines = [f"QuantReport(top-1 agreement {self.agreement:.2%}, max |float - int8| at the output "
                 f"{self.max_abs_error:.4g}"
                 + (f", accuracy float {self.float_accuracy:.2%} -> int8 {self.quant_accuracy:.2%}"
                    if self.float_accuracy is not None else "") + ")"]
        for r in self.rows:
            lines.append(f"  {r['name']:<12s} {str(r['shape']):<16s} SQNR {r['sqnr_db']:6.1f} dB   "
                         f"max error {r['max_error']:.2f} steps")
        return "\n".join(lines)

    _COLUMNS = (Col("op", "name"), Col("output shape", "shape"), Col("SQNR (dB)", "sqnr_db", ".1f"),
                Col("max error (steps)", "max_error", ".2f"))

    def _repr_html_(self):
        return f"<p>{repr(self).splitlines()[0]}</p>" + html_table(self._COLUMNS, self.rows)

    def plot(self, ax=None):
        """SQNR per layer: where the int8 model drifts from the float one."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        ax.bar(range(len(self.rows)), [r["sqnr_db"] for r in self.rows], color="tab:blue")
        ax.set_xticks(range(len(self.rows)), [r["name"] for r in self.rows], rotation=45, ha="right")
        ax.set_ylabel("SQNR (dB)")
        ax.set_xlabel("integer op (output)")
        ax.set_title("int8 vs float, layer by layer")
        return ax


def compare(qmodel, data, *, n_samples=512, batch_size=None) -> QuantReport:
    """Run the float model and the int8 model side by side on ``data``; a :class:`QuantReport`.

    Each integer op's output is dequantized and held against the float value at the
    same point (BatchNorm folded, ReLU fused), so you see where precision is lost.
    """
    if not isinstance(qmodel, QuantizedModel) or qmodel.float_model is None:
        fail("qmodel", "a QuantizedModel made by quantize_model() (it keeps its float model)",
             type(qmodel).__name__, TypeError)
    check_int("n_samples", n_samples, 1)
    xs, ys = [], []
    for xb, yb in batches(data, batch_size, where="compare(): data"):
        xs.append(np.asarray(xb, np.float32))
        ys.append(np.asarray(yb))
        if sum(map(len, xs)) >= n_samples:
            break
    x, y = np.concatenate(xs)[:n_samples], np.concatenate(ys)[:n_samples]
    model = qmodel.float_model
    steps = _plan_in_eval(model)
    f, q, qp, rows = x, qmodel.quantize_input(x), qmodel.input_qp, []
    for i, (step, op) in enumerate(zip(steps, qmodel.ops)):
        f = step.float_forward(f)
        q = op.run(q)
        qp = _out_qp(op, qp)
        deq = dequantize(q, *qp).astype(np.float64)
        noise = np.sum((f - deq) ** 2)
        sqnr = 10 * np.log10(np.sum(f.astype(np.float64) ** 2) / noise) if noise > 0 else np.inf
        rows.append(dict(name=f"{i}:{op.kind}", kind=op.kind, shape=tuple(q.shape[1:]), sqnr_db=float(sqnr),
                         max_error=float(np.abs(f - deq).max() / qp[0]), scale=qp[0]))
    labels = y if y.ndim == 1 and y.dtype.kind in "iu" else None
    return QuantReport(rows, f, dequantize(q, *qp), labels)
