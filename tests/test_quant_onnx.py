"""ONNX export checked in ONNX Runtime: float to float tolerance, QDQ within one step of prunekit's int8 model."""
import os

import numpy as np
import pytest

import prunekit as pk
from prunekit import quant

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def fashion():
    (x, y), (xt, yt) = pk.data.load_fashion_mnist(flatten=False)
    return (x[:3000], y[:3000]), (xt[:1000], yt[:1000])


def _session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _check(model, x_cal, y_cal, xt, tmp_path, name):
    model.eval()
    q = quant.quantize_model(model, (x_cal, y_cal))
    float_path = quant.export_onnx(model, tmp_path / f"{name}.onnx", input_shape=x_cal.shape[1:])
    qdq_path = quant.export_onnx(q, tmp_path / f"{name}_int8.onnx", quantized=True)
    with pk.no_grad():
        ref = model(pk.Tensor(xt)).data
    got = _session(float_path).run(None, {"input": xt})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    ours = q(xt)
    theirs = _session(qdq_path).run(None, {"input": xt})[0]
    step = q.output_qp[0]
    assert np.abs(theirs - ours).max() <= step * 1.001, np.abs(theirs - ours).max() / step
    return q, qdq_path


def test_lenet_300_100_float_and_qdq_agree_with_onnx_runtime(fashion, tmp_path):
    (x, y), (xt, yt) = fashion
    x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    model = pk.models.lenet_300_100(seed=0)
    pk.fit(model, pk.data.DataLoader(x, y, 64, shuffle=True, seed=0),
           pk.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), epochs=1, progress=False)
    q, qdq_path = _check(model, x, y, xt, tmp_path, "mlp")
    # the QDQ graph carries int8 weights with one scale per output channel
    g = onnx.load(qdq_path).graph
    assert sum(n.op_type == "QuantizeLinear" for n in g.node) == 4  # input + 3 layer outputs
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    w = [v for k, v in inits.items() if k.startswith("weight_q")]
    assert [a.dtype for a in w] == [np.int8] * 3 and w[0].shape == (300, 784)
    assert [v.shape for k, v in inits.items() if k.startswith("weight_scale")][0] == (300,)
    np.testing.assert_array_equal(w[0], q.ops[0].weight.q)


def test_lenet5_float_and_qdq_agree_with_onnx_runtime(fashion, tmp_path):
    (x, y), (xt, yt) = fashion
    _check(pk.models.lenet5(seed=0), x[:500], y[:500], xt, tmp_path, "lenet5")


def test_residual_net_float_and_qdq_agree_with_onnx_runtime(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 12, 12)).astype(np.float32)
    model = pk.models.resnet_small(channels=(4, 8), seed=0)
    model.train()
    with pk.no_grad():
        model(pk.Tensor(x))  # non-trivial BatchNorm statistics
    _check(model, x, np.zeros(64), x[:32], tmp_path, "resnet")


def test_export_onnx_errors(tmp_path):
    m = pk.models.mlp([4, 3])
    with pytest.raises(TypeError, match="QuantizedModel"):
        quant.export_onnx(m, tmp_path / "a.onnx", quantized=True)
    q = quant.quantize_model(m, (np.ones((4, 4), np.float32), np.zeros(4)))
    with pytest.raises(TypeError, match="float prunekit model"):
        quant.export_onnx(q, tmp_path / "b.onnx")
    with pytest.raises(TypeError, match="input_shape"):
        quant.export_onnx(m, tmp_path / "c.onnx", input_shape=(4.0,))
    assert not os.path.exists(tmp_path / "a.onnx")
