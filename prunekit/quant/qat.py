"""Quantization-aware training (fake quantization + the straight-through estimator) and mixed precision.

QAT trains the float weights while the forward pass already sees what the int8
model will compute (Jacob et al. 2018, sec. 3): weights and activations go through
*fake quantization*, ``dequantize(quantize(x))``, so the loss feels the rounding.
Rounding has zero derivative almost everywhere, so the backward pass uses the
straight-through estimator (Bengio et al. 2013): the gradient passes unchanged
where ``x`` lies inside the representable range and is 0 where it was clipped::

    d fake_quant(x) / dx  :=  1  if  scale (qmin - z) <= x <= scale (qmax - z)  else 0

(the derivative of ``clip(x, lo, hi)``, which the tests check by finite differences).

    qat_model = quant.prepare_qat(model, (x, y), weight_bits=4)   # BN folded, fake-quant inserted
    pk.fit(qat_model, loader, pk.optim.SGD(qat_model.parameters(), lr=0.01), epochs=2)
    qmodel = quant.convert(qat_model)                             # the integer-only int8 model

Mixed precision: :func:`half` (float16 weights and activations, float32 arithmetic)
and :func:`choose_bits` (a per-layer weight bit-width from a sensitivity scan).
"""
from __future__ import annotations

import copy

import numpy as np

from .. import nn
from .._glue import batches
from .._validate import check_int, check_number, fail
from ..functional import _node
from ..tensor import Tensor, no_grad
from .affine import fake_quantize, qrange, quant_params
from .calibration import DEFAULT_SAMPLES, MovingAverageObserver
from .modules import QuantizedModel, _Affine, _convert, _plan, _plan_in_eval, _qp, _Residual, _Same, layer_names

__all__ = ["fake_quant", "FakeQuant", "QATAffine", "QATResidual", "prepare_qat", "convert", "half", "HalfModel",
           "choose_bits", "BitWidthPlan"]


def fake_quant(x, scale, zero_point, bits=8, *, axis=None, narrow_range=False):
    """Differentiable fake quantization: forward ``dequantize(quantize(x))``, backward the clipped STE."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    y = fake_quantize(x.data, scale, zero_point, bits, axis=axis, narrow_range=narrow_range).astype(x.dtype)
    out = _node(y, (x,), "fake_quant")
    if out.requires_grad:
        qmin, qmax = qrange(bits, symmetric=narrow_range)
        shape = [1] * x.ndim
        if axis is not None:
            shape[axis] = -1
        s = np.asarray(scale, np.float64).reshape(shape) if np.ndim(scale) else float(scale)
        z = np.asarray(zero_point, np.float64).reshape(shape) if np.ndim(zero_point) else float(zero_point)
        inside = (x.data >= s * (qmin - z)) & (x.data <= s * (qmax - z))

        def _backward():
            x._accumulate(out.grad * inside)
        out._backward = _backward
    return out


class FakeQuant(nn.Module):
    """Fake-quantizes activations to ``bits`` (asymmetric, per tensor) over a range learned on the fly.

    In training mode each batch updates a moving-average min/max observer
    (``averaging_constant`` 0.01, as PyTorch); in eval mode the range is frozen.
    """

    def __init__(self, bits=8, averaging_constant=0.01):
        super().__init__()
        self.bits = check_int("bits", bits, 2, 8)
        self.observer = MovingAverageObserver(averaging_constant)

    def forward(self, x):
        if self.training or self.observer.count == 0:
            self.observer.observe(x.data)
        s, z = self.observer.quant_params(bits=self.bits, symmetric=False)
        return fake_quant(x, s, z, self.bits)

    def extra_repr(self):
        if self.observer.count == 0:
            return f"bits={self.bits}"
        lo, hi = self.observer.range()
        return f"bits={self.bits}, range=({lo:.3g}, {hi:.3g})"


class QATAffine(nn.Module):
    """A conv or linear layer (BatchNorm folded in, ReLU fused) with fake-quantized weights and output."""

    def __init__(self, step: _Affine, weight_bits=8, activation_bits=8, per_channel=True):
        super().__init__()
        self.name = step.name
        self.conv = step.conv
        if self.conv:
            self.kernel_size, self.stride, self.padding = step.kernel_size, step.stride, step.padding
        self.weight = nn.Parameter(step.weight.copy())
        self.bias = nn.Parameter(step.bias.copy())
        self.relu = step.relu
        self.weight_bits, self.per_channel = weight_bits, per_channel
        self.out_fq = FakeQuant(activation_bits)

    def quantized_weight(self):
        """The weight through symmetric per-channel (or per-tensor) fake quantization (STE backward)."""
        w2 = self.weight.data.reshape(self.weight.shape[0], -1)
        if self.per_channel:
            s, z = quant_params(w2, bits=self.weight_bits, axis=0)
            return fake_quant(self.weight, s, np.zeros(len(s), np.int32), self.weight_bits, axis=0,
                              narrow_range=True)
        s, z = quant_params(w2, bits=self.weight_bits)
        return fake_quant(self.weight, s, 0, self.weight_bits, narrow_range=True)

    def forward(self, x):
        from .. import functional as F

        w = self.quantized_weight()
        y = F.conv2d(x, w, self.bias, self.stride, self.padding) if self.conv else F.linear(x, w, self.bias)
        if self.relu:
            y = y.relu()
        return self.out_fq(y)

    def as_step(self) -> _Affine:
        """The float layer this has become (trained weights), with the learned output range."""
        step = copy.copy(self._template())
        step.weight = self.weight.data.astype(np.float32).copy()
        step.bias = self.bias.data.astype(np.float32).copy()
        step.observer = self.out_fq.observer
        return step

    def _template(self):
        step = _Affine.__new__(_Affine)
        step.name, step.relu, step.conv = self.name, self.relu, self.conv
        if self.conv:
            step.kernel_size, step.stride, step.padding = self.kernel_size, self.stride, self.padding
        return step

    def extra_repr(self):
        kind = "conv" if self.conv else "linear"
        return f"{kind} {tuple(self.weight.shape)}, weight_bits={self.weight_bits}, relu={self.relu}"


class QATResidual(nn.Module):
    """A residual block for QAT: fake-quantized convs, shortcut and add."""

    def __init__(self, step: _Residual, weight_bits=8, activation_bits=8, per_channel=True):
        super().__init__()
        kw = dict(weight_bits=weight_bits, activation_bits=activation_bits, per_channel=per_channel)
        self.conv1 = QATAffine(step.conv1, **kw)
        self.conv2 = QATAffine(step.conv2, **kw)
        self.shortcut = None if step.shortcut is None else QATAffine(step.shortcut, **kw)
        self.out_fq = FakeQuant(activation_bits)

    def forward(self, x):
        h = self.conv2(self.conv1(x))
        s = x if self.shortcut is None else self.shortcut(x)
        return self.out_fq((h + s).relu())

    def as_step(self) -> _Residual:
        step = _Residual.__new__(_Residual)
        step.conv1, step.conv2 = self.conv1.as_step(), self.conv2.as_step()
        step.shortcut = None if self.shortcut is None else self.shortcut.as_step()
        step.observer = self.out_fq.observer
        return step


class QATModel(nn.Sequential):
    """What :func:`prepare_qat` returns: an input FakeQuant, then the QAT layers; train it like any model."""


def prepare_qat(model, data=None, *, weight_bits=8, activation_bits=8, per_channel=True,
                n_samples=DEFAULT_SAMPLES, batch_size=None):
    """A QAT copy of ``model``: BatchNorm folded (running statistics frozen), fake quantization inserted.

    Each conv/linear (+ BN + ReLU) becomes a :class:`QATAffine` whose weights are
    fake-quantized to ``weight_bits`` and whose output is fake-quantized to
    ``activation_bits``; residual blocks become :class:`QATResidual`. ``data``
    (optional) initialises the activation ranges with ``n_samples`` samples
    (otherwise the first training batch does). The float ``model`` is not changed.
    """
    if not isinstance(model, nn.Module):
        fail("model", "a prunekit.nn.Module", type(model).__name__, TypeError)
    check_int("weight_bits", weight_bits, 2, 8)
    check_int("activation_bits", activation_bits, 2, 8)
    steps = _plan_in_eval(model)
    kw = dict(weight_bits=weight_bits, activation_bits=activation_bits, per_channel=per_channel)
    layers = [FakeQuant(activation_bits)]
    for s in steps:
        if isinstance(s, _Affine):
            layers.append(QATAffine(s, **kw))
        elif isinstance(s, _Residual):
            layers.append(QATResidual(s, **kw))
        else:
            layers.append(copy.deepcopy(s.module))
    qat = QATModel(*layers)
    if data is not None:
        check_int("n_samples", n_samples, 1)
        seen = 0
        with no_grad():
            for xb, _ in batches(data, batch_size, where="prepare_qat(): data"):
                xb = np.asarray(xb, np.float32)[: n_samples - seen]
                qat(Tensor(xb))
                seen += len(xb)
                if seen >= n_samples:
                    break
    return qat


def convert(qat_model) -> QuantizedModel:
    """The integer-only int8 model of a trained QAT model (its weights, its learned activation ranges)."""
    if not isinstance(qat_model, QATModel):
        fail("qat_model", "a model made by prepare_qat()", type(qat_model).__name__, TypeError)
    layers = list(qat_model)
    if layers[0].observer.count == 0:
        fail("qat_model", "a QAT model that has seen data (train it, or pass data to prepare_qat)",
             "activation ranges never observed")
    steps, bits = [], {}
    for m in layers[1:]:
        if isinstance(m, (QATAffine, QATResidual)):
            step = m.as_step()
            steps.append(step)
            for a in ([m] if isinstance(m, QATAffine) else [m.conv1, m.conv2, m.shortcut]):
                if a is not None:
                    bits[a.name] = a.weight_bits
        else:
            steps.append(_Same(m))
    per_channel = all(a.per_channel for a in qat_model.modules() if isinstance(a, QATAffine))
    ops, out_qp = _convert(steps, _qp(layers[0].observer), bits, per_channel)
    return QuantizedModel(ops, _qp(layers[0].observer), out_qp, float_model=qat_model)


# =========================================================================== mixed precision


class HalfModel(nn.Module):
    """float16 weights and activations, float32 arithmetic (storage half the size of float32).

    Every weight is stored as float16; each layer's output is rounded to float16 before
    the next layer reads it, as a GPU or an Arm CPU with fp16 storage does.
    """

    def __init__(self, model):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.data = p.data.astype(np.float16).astype(np.float32)
        self.half_state = {k: v.astype(np.float16) for k, v in self.model.state_dict().items()}

    @property
    def nbytes(self) -> int:
        """Bytes of the float16 parameters and buffers."""
        return sum(v.nbytes for v in self.half_state.values())

    def forward(self, x):
        x = Tensor(x.data.astype(np.float16).astype(np.float32))
        children = list(self.model) if isinstance(self.model, nn.Sequential) else [self.model]
        for m in children:
            x = m(x)
            x = Tensor(x.data.astype(np.float16).astype(np.float32))
        return x


def half(model) -> HalfModel:
    """A float16 copy of ``model`` (weights and activations rounded to float16)."""
    if not isinstance(model, nn.Module):
        fail("model", "a prunekit.nn.Module", type(model).__name__, TypeError)
    return HalfModel(model)


class BitWidthPlan:
    """Per-layer weight bit-widths from a sensitivity scan, and the accuracy each candidate gave."""

    def __init__(self, bits, scan, baseline, tolerance):
        self.bits, self.scan, self.baseline, self.tolerance = bits, scan, baseline, tolerance

    def weight_bits(self) -> dict:
        """``{layer name: bits}`` for :func:`quantize_model`'s ``weight_bits``."""
        return dict(self.bits)

    def __repr__(self):
        rows = [f"BitWidthPlan(baseline accuracy {self.baseline:.2%}, tolerance {self.tolerance:.2%})"]
        for name, b in self.bits.items():
            cells = ", ".join(f"{k} bits {v:.2%}" for k, v in self.scan[name].items())
            rows.append(f"  {name}: {b} bits  ({cells})")
        return "\n".join(rows)

    def _repr_html_(self):
        cand = sorted({k for v in self.scan.values() for k in v}, reverse=True)
        head = "".join(f"<th>{k} bits</th>" for k in cand)
        body = "".join(
            f"<tr><td>{n}</td><th>{self.bits[n]}</th>" + "".join(
                f"<td>{self.scan[n].get(k, float('nan')):.2%}</td>" for k in cand) + "</tr>" for n in self.bits)
        return f"<table><tr><th>layer</th><th>chosen</th>{head}</tr>{body}</table>"

    def plot(self, ax=None):
        """Accuracy against bit-width, one line per layer."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        for name, accs in self.scan.items():
            ks = sorted(accs)
            ax.plot(ks, [100 * accs[k] for k in ks], marker="o", label=f"layer {name}")
        ax.axhline(100 * (self.baseline - self.tolerance), color="grey", ls="--", label="tolerance")
        ax.set_xlabel("weight bits of that layer (others float)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Per-layer sensitivity to weight bit-width")
        ax.legend(fontsize=8)
        return ax


def choose_bits(model, data, *, candidates=(8, 6, 4, 3, 2), tolerance=0.005, per_channel=True,
                n_samples=1000, batch_size=None) -> BitWidthPlan:
    """For each conv/linear layer, the fewest weight bits whose fake quantization (that layer
    alone, the rest in float) costs at most ``tolerance`` accuracy on ``data``.

    A sensitivity scan (as HAQ and HAWQ motivate, in its simplest form): layers that
    tolerate 2-4 bits are cheap to shrink; sensitive ones keep 8.
    """
    from ..train import evaluate

    check_number("tolerance", tolerance, 0, 1)
    cands = sorted({check_int("candidates[i]", c, 2, 8) for c in candidates}, reverse=True)
    pair = next(iter(batches(data, n_samples, where="choose_bits(): data")))
    x, y = np.asarray(pair[0], np.float32), np.asarray(pair[1])
    baseline = evaluate(model, (x, y))["accuracy"]
    was = model.training
    model.eval()
    try:
        names = layer_names(_plan(model))
        modules = dict(model.named_modules())
        scan, bits = {}, {}
        for name in names:
            layer = modules[name]
            saved = layer.weight.data.copy()
            scan[name] = {}
            bits[name] = cands[0]
            for b in cands:
                w2 = saved.reshape(saved.shape[0], -1)
                axis = 0 if per_channel else None
                s, z = quant_params(w2, bits=b, axis=axis)
                layer.weight.data[...] = fake_quantize(w2, s, z, b, axis=axis, narrow_range=True).reshape(saved.shape)
                acc = evaluate(model, (x, y))["accuracy"]
                layer.weight.data[...] = saved
                scan[name][b] = acc
                if acc >= baseline - tolerance:
                    bits[name] = b
                else:
                    break
    finally:
        model.train(was)
    return BitWidthPlan(bits, scan, baseline, tolerance)

