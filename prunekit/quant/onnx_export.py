"""ONNX export: a float model as standard ONNX ops, an int8 model in the QDQ format.

    quant.export_onnx(model, "lenet.onnx")                      # float: Gemm, Conv, Relu, MaxPool, ...
    quant.export_onnx(qmodel, "lenet_int8.onnx", quantized=True) # QDQ: QuantizeLinear/DequantizeLinear

QDQ ("quantize-dequantize") is the format ONNX Runtime's own quantizer writes: the
graph keeps the float operators, and every int8 tensor appears as a
``QuantizeLinear -> DequantizeLinear`` pair carrying its scale and zero point. Weights
are stored as int8 initializers with per-channel scales (``DequantizeLinear`` with
``axis=0``), biases as int32 with scale ``s_x * s_w[c]``. A runtime may run it as
written (float ops on dequantized values) or fuse each pattern into an integer kernel
(QLinearConv, QLinearMatMul); either way it computes what prunekit's integer model
computes up to the rounding of each requantization (at most one step per layer).

BatchNorm is folded into the preceding conv in both exports (the float export is
the model prunekit calibrates, not a different one). ``onnx`` is imported only here
(``pip install prunekit[deploy]``); opset 13.
"""
from __future__ import annotations

import os

import numpy as np

from .. import nn
from .._validate import fail
from . import modules as M

__all__ = ["export_onnx", "OPSET"]

OPSET = 13


class _Graph:
    """Collects ONNX nodes and initializers with fresh names."""

    def __init__(self, helper, numpy_helper):
        self.h, self.nh = helper, numpy_helper
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base, array):
        name = self.name(base)
        self.inits.append(self.nh.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, base=None, **attrs):
        out = self.name(base or op_type.lower())
        self.nodes.append(self.h.make_node(op_type, list(inputs), [out], name=out + "_node", **attrs))
        return out

    # float building blocks
    def affine(self, x, w, b, conv=None, relu=False):
        if conv is None:
            y = self.op("Gemm", [x, w, b], "gemm", transB=1)
        else:
            (kh, kw), (sh, sw), (ph, pw) = conv
            y = self.op("Conv", [x, w, b], "conv", kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw])
        return self.op("Relu", [y]) if relu else y

    def qdq(self, x, qp):
        """QuantizeLinear -> DequantizeLinear with one (scale, zero point): an int8 activation."""
        s = self.const("scale", np.float32(qp[0]))
        z = self.const("zero_point", np.int8(qp[1]))
        return self.op("DequantizeLinear", [self.op("QuantizeLinear", [x, s, z], "q"), s, z], "dq")


# --------------------------------------------------------------------------- float


def _float_step(g, step, x):
    if isinstance(step, M._Affine):
        conv = (step.kernel_size, step.stride, step.padding) if step.conv else None
        return g.affine(x, g.const("weight", step.weight), g.const("bias", step.bias), conv, step.relu)
    if isinstance(step, M._Residual):
        h = _float_step(g, step.conv2, _float_step(g, step.conv1, x))
        s = x if step.shortcut is None else _float_step(g, step.shortcut, x)
        return g.op("Relu", [g.op("Add", [h, s])])
    return _same(g, step.module if isinstance(step, M._Same) else step, x)


def _same(g, m, x):
    """Pooling, flatten, ReLU (float or int op: the ONNX node is the same)."""
    from .. import models

    if isinstance(m, (nn.AvgPool2d, M.QuantizedAvgPool2d)):
        return g.op("AveragePool", [x], kernel_shape=list(m.kernel_size), strides=list(m.stride))
    if isinstance(m, (nn.MaxPool2d, M.QuantizedMaxPool2d)):
        return g.op("MaxPool", [x], kernel_shape=list(m.kernel_size), strides=list(m.stride))
    if isinstance(m, (nn.Flatten, M.QuantizedFlatten)):
        return g.op("Flatten", [x], axis=1)
    if isinstance(m, (nn.ReLU, M.QuantizedReLU)):
        return g.op("Relu", [x])
    if isinstance(m, (models.GlobalAvgPool2d, M.QuantizedGlobalAvgPool2d)):
        return g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    fail("model", "layers with an ONNX export (see quant.onnx_export)", type(m).__name__, TypeError)


# --------------------------------------------------------------------------- QDQ


def _qdq_affine(g, op, x):
    """int8 conv/linear as DQ(weight) and DQ(bias) feeding the float op, then Q/DQ of the output."""
    w = op.weight
    scales = w.scales.astype(np.float32)
    q = w.q
    if isinstance(op, M.QuantizedConv2d):
        kh, kw = op.kernel_size
        q = q.reshape(w.shape[0], -1, kh, kw)
    wq = g.const("weight_q", q.astype(np.int8))
    ws = g.const("weight_scale", scales)
    wz = g.const("weight_zero_point", np.zeros(len(scales), np.int8))
    wdq = g.op("DequantizeLinear", [wq, ws, wz], "weight_dq", axis=0)
    bq = g.const("bias_q", op.bias_q.astype(np.int32))
    bs = g.const("bias_scale", (op.in_qp[0] * scales.astype(np.float64)).astype(np.float32))
    bz = g.const("bias_zero_point", np.zeros(len(scales), np.int32))
    bdq = g.op("DequantizeLinear", [bq, bs, bz], "bias_dq", axis=0)
    conv = (op.kernel_size, op.stride, op.padding) if isinstance(op, M.QuantizedConv2d) else None
    return g.qdq(g.affine(x, wdq, bdq, conv, op.relu), op.out_qp)


def _qdq_op(g, op, x):
    if isinstance(op, M.QuantizedLinear):
        return _qdq_affine(g, op, x)
    if isinstance(op, M.QuantizedResidual):
        h = _qdq_op(g, op.conv2, _qdq_op(g, op.conv1, x))
        s = x if op.shortcut is None else _qdq_op(g, op.shortcut, x)
        y = g.op("Add", [h, s])
        if op.add.relu:
            y = g.op("Relu", [y])
        return g.qdq(y, op.add.out_qp)
    if isinstance(op, (M.QuantizedAvgPool2d, M.QuantizedGlobalAvgPool2d)):
        return _requant_same(g, op, x)
    return _same(g, op, x)  # max pool, flatten, relu: exact on the dequantized values, no new Q/DQ needed


def _requant_same(g, op, x):
    """Average pooling makes values between the grid points: quantize them again to the input's grid."""
    y = _same(g, op, x)
    return g.qdq(y, g.current_qp)


def export_onnx(model, path, *, quantized=False, input_shape=None):
    """Write ``model`` as an ONNX file (opset 13) at ``path``; returns the path.

    ``quantized=False``: ``model`` is a float prunekit model (BatchNorm folded).
    ``quantized=True``: ``model`` is a :class:`~prunekit.quant.modules.QuantizedModel`,
    written in the QDQ format. ``input_shape`` is one sample's shape (e.g. ``(784,)``
    or ``(1, 28, 28)``); the batch axis is dynamic. Without it, a QuantizedModel uses
    the shape it was calibrated on; otherwise the first layer's input size is used for
    an MLP, and ``(C, 28, 28)`` for a conv net.
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:  # pragma: no cover
        raise ModuleNotFoundError("export_onnx() needs onnx: `pip install prunekit[deploy]`.") from e
    if not isinstance(quantized, bool):
        fail("quantized", "True or False", quantized, TypeError)
    path = os.fspath(path)
    g = _Graph(helper, numpy_helper)
    if quantized:
        if not isinstance(model, M.QuantizedModel):
            fail("model", "a QuantizedModel when quantized=True (make one with quant.quantize_model)",
                 type(model).__name__, TypeError)
        first = _first_affine(model.ops)
        x = g.qdq("input", model.input_qp)
        g.current_qp = model.input_qp
        for op in model.ops:
            x = _qdq_op(g, op, x)
            g.current_qp = M._out_qp(op, g.current_qp)
        out = g.op("Identity", [x], "output")
    else:
        if isinstance(model, M.QuantizedModel) or not isinstance(model, nn.Module):
            fail("model", "a float prunekit model when quantized=False (pass quantized=True for a QuantizedModel)",
                 type(model).__name__, TypeError)
        steps = M._plan_in_eval(model)
        first = next((s.conv1 if isinstance(s, M._Residual) else s for s in steps
                      if isinstance(s, (M._Affine, M._Residual))), None)
        x = "input"
        for s in steps:
            x = _float_step(g, s, x)
        out = g.op("Identity", [x], "output")
    if input_shape is None and quantized:
        input_shape = model.sample_shape
    shape = _input_shape(first, input_shape)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])
    outp = helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", "features"])
    graph = helper.make_graph(g.nodes, "prunekit_int8" if quantized else "prunekit", [inp], [outp], g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="prunekit")
    proto.ir_version = min(proto.ir_version, 8)  # readable by older runtimes too
    onnx.checker.check_model(proto)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(proto.SerializeToString())
    os.replace(tmp, path)
    return path


def _first_affine(ops):
    for op in ops:
        if isinstance(op, M.QuantizedLinear):
            return op
        if isinstance(op, M.QuantizedResidual):
            return op.conv1
    return None


def _input_shape(first, input_shape):
    if input_shape is not None:
        if not (isinstance(input_shape, (tuple, list)) and all(isinstance(d, (int, np.integer)) and d > 0
                                                               for d in input_shape)):
            fail("input_shape", "a tuple of positive ints (one sample's shape)", input_shape, TypeError)
        return [int(d) for d in input_shape]
    if first is None:
        fail("input_shape", "given for a model without conv or linear layers", None)
    conv = getattr(first, "conv", None) if isinstance(first, M._Affine) else isinstance(first, M.QuantizedConv2d)
    if conv:
        c = (first.weight.shape[1] if isinstance(first, M._Affine)
             else first.weight.shape[1] // (first.kernel_size[0] * first.kernel_size[1]))
        return [int(c), 28, 28]
    return [int(first.weight.shape[1])]
