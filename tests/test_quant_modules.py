"""Post-training int8 quantization: integer-only forward, against float references, backends, errors."""
import copy

import numpy as np
import pytest

import prunekit as pk
from prunekit import nn, quant
from prunekit.quant import modules as qm
from prunekit.quant.affine import dequantize, quant_params, quantize


def _data(shape, n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + shape).astype(np.float32), rng.integers(0, 10, n)


def _with_bn_statistics(model, x):
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    rng = np.random.default_rng(1)
    model.train()
    with pk.no_grad():
        for i in range(4):
            model(pk.Tensor(x[i * 16:(i + 1) * 16]))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data[:] = rng.uniform(0.5, 1.5, m.num_features)
            m.bias.data[:] = rng.uniform(-0.2, 0.2, m.num_features)
    return model.eval()


MODELS = {
    "mlp": (lambda: pk.models.mlp([64, 32, 10], seed=0), (64,)),
    "lenet_300_100": (lambda: pk.models.lenet_300_100(seed=0), (784,)),
    "lenet5": (lambda: pk.models.lenet5(seed=0), (1, 28, 28)),
    "resnet_small": (lambda: pk.models.resnet_small(channels=(8, 16), seed=0), (1, 28, 28)),
}


@pytest.fixture(scope="module", params=list(MODELS))
def quantized(request):
    make, shape = MODELS[request.param]
    x, y = _data(shape)
    model = make()
    if request.param == "resnet_small":
        _with_bn_statistics(model, x)
    model.eval()
    q = quant.quantize_model(model, (x, y), n_samples=64)
    xt = _data(shape, n=40, seed=5)[0]
    with pk.no_grad():
        ref = model(pk.Tensor(xt)).data
    return request.param, model, q, xt, ref


def test_int8_model_tracks_the_float_model(quantized):
    name, model, q, xt, ref = quantized
    out = q(xt)
    assert out.dtype == np.float32 and out.shape == ref.shape
    spread = ref.max() - ref.min()
    # a few output steps of error at most (each layer adds about half a step of rounding)
    assert np.abs(out - ref).max() < 0.05 * spread, (name, np.abs(out - ref).max(), spread)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9
    # Tensor in, Tensor out (so pk.evaluate works on it)
    t = q(pk.Tensor(xt))
    assert isinstance(t, pk.Tensor) and np.array_equal(t.data, out)


def test_forward_is_integer_only(quantized):
    name, model, q, xt, ref = quantized
    xq = q.quantize_input(xt)
    assert xq.dtype == np.int8
    trace = []
    yq = q.run_integer(xq, trace=trace)
    assert trace and all(a.dtype == np.int8 for _, a in trace), [(n, a.dtype) for n, a in trace]
    # every float the model holds (weight scales, activation scales) set to NaN: the integer path
    # must not read any of them, so its output is unchanged
    poisoned = copy.deepcopy(q)
    n_poisoned = _poison_floats(poisoned)
    assert n_poisoned > 0
    np.testing.assert_array_equal(poisoned.run_integer(xq), yq)
    with pytest.raises(TypeError, match="integers"):
        q.run_integer(xt)  # float input is refused by the integer path


def _poison_floats(obj, seen=None):
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    n = 0
    for k, v in list(vars(obj).items()):
        if k in ("float_model", "_parameters", "_modules", "_buffers"):
            continue
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            v[...] = np.nan
            n += 1
        elif isinstance(v, float):
            setattr(obj, k, float("nan"))
            n += 1
        elif isinstance(v, tuple) and any(isinstance(e, float) for e in v):
            object.__setattr__(obj, k, tuple(float("nan") if isinstance(e, float) else e for e in v))
            n += 1
        elif isinstance(v, list):
            for e in v:
                if hasattr(e, "__dict__"):
                    n += _poison_floats(e, seen)
        elif hasattr(v, "__dict__") and not isinstance(v, type):
            n += _poison_floats(v, seen)
    return n


def test_numpy_backend_gives_the_same_integers(quantized):
    name, model, q, xt, ref = quantized
    xq = q.quantize_input(xt)
    fast = q.run_integer(xq)
    with pk.backend("numpy"):
        slow = q.run_integer(xq)
    np.testing.assert_array_equal(fast, slow)


def _requantized_reference(acc_real, out_qp, lo=-128):
    s, z = out_qp
    return np.clip(np.rint(acc_real / s) + z, lo, 127)


def test_linear_against_float_dequantized_reference():
    rng = np.random.default_rng(3)
    lin = nn.Linear(20, 7, seed=1)
    x = rng.standard_normal((50, 20)).astype(np.float32)
    q = quant.quantize_model(nn.Sequential(lin), (x, np.zeros(50)))
    op = q.ops[0]
    xq = q.quantize_input(x)
    got = op.run(xq).astype(np.int64)
    # the same layer in float64 on the dequantized integers: x_hat W_hat^T + b_hat
    x_hat = dequantize(xq, *q.input_qp).astype(np.float64)
    w_hat = op.weight.q.astype(np.float64) * op.weight.scales[:, None]
    b_hat = op.bias_q * (q.input_qp[0] * op.weight.scales.astype(np.float64))
    expect = _requantized_reference(x_hat @ w_hat.T + b_hat, op.out_qp)
    assert np.abs(got - expect).max() <= 1  # the fixed-point multiplier is within one unit
    assert (got == expect).mean() > 0.95


def test_conv_with_padding_and_stride_against_float_reference():
    rng = np.random.default_rng(4)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, seed=2)
    model = nn.Sequential(conv, nn.ReLU())
    x = rng.standard_normal((6, 3, 9, 9)).astype(np.float32)
    q = quant.quantize_model(model, (x, np.zeros(6)))
    op = q.ops[0]
    assert op.relu and op.lo == op.out_zero_point
    xq = q.quantize_input(x)
    got = op.run(xq).astype(np.int64)
    x_hat = dequantize(xq, *q.input_qp).astype(np.float64)
    w_hat = (op.weight.q.astype(np.float64) * op.weight.scales[:, None]).reshape(conv.weight.shape)
    b_hat = op.bias_q * (q.input_qp[0] * op.weight.scales.astype(np.float64))
    real = pk.functional.conv2d(pk.Tensor(x_hat), pk.Tensor(w_hat), pk.Tensor(b_hat), 2, 1).data
    expect = _requantized_reference(np.maximum(real, 0), op.out_qp, lo=op.out_zero_point)
    assert got.shape == expect.shape == (6, 5, 5, 5)
    assert np.abs(got - expect).max() <= 1


def test_batchnorm_is_folded_into_the_conv():
    rng = np.random.default_rng(5)
    conv, bn = nn.Conv2d(2, 4, 3, padding=1, seed=0), nn.BatchNorm2d(4)
    bn.running_mean[:] = rng.standard_normal(4)
    bn.running_var[:] = rng.uniform(0.5, 2, 4)
    bn.weight.data[:] = rng.uniform(0.5, 2, 4)
    bn.bias.data[:] = rng.standard_normal(4)
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    bn.eval()
    with pk.no_grad():
        ref = bn(conv(pk.Tensor(x))).data
    w, b = qm.fold_batchnorm(conv.weight.data, conv.bias.data, bn)
    folded = pk.functional.conv2d(pk.Tensor(x.astype(np.float64)), pk.Tensor(w), pk.Tensor(b), 1, 1).data
    np.testing.assert_allclose(folded, ref, rtol=1e-4, atol=1e-5)
    q = quant.quantize_model(nn.Sequential(conv, bn, nn.ReLU()), (x, np.zeros(3)))
    assert len(q.ops) == 1 and q.ops[0].relu  # one integer layer: conv + BN + ReLU


def test_residual_add_against_float_reference():
    a_qp, b_qp, out_qp = (0.05, -10), (0.02, 3), (0.06, -128)
    add = qm.QuantizedAdd(a_qp, b_qp, out_qp, relu=True)
    rng = np.random.default_rng(6)
    qa = rng.integers(-128, 128, 5000).astype(np.int8)
    qb = rng.integers(-128, 128, 5000).astype(np.int8)
    got = add.run(qa, qb).astype(np.int64)
    real = dequantize(qa, *a_qp).astype(np.float64) + dequantize(qb, *b_qp)
    expect = _requantized_reference(np.maximum(real, 0), out_qp, lo=out_qp[1])
    assert np.abs(got - expect).max() <= 1 and (got == expect).mean() > 0.95


def test_pools_on_integers_by_hand():
    q = np.array([[[[1, -3], [5, 2]]]], np.int8)       # one 2x2 window
    assert qm.QuantizedMaxPool2d((2, 2), (2, 2)).run(q).ravel().tolist() == [5]
    assert qm.QuantizedAvgPool2d((2, 2), (2, 2)).run(q).ravel().tolist() == [1]   # 5/4 -> 1
    q2 = np.array([[[[-1, -1], [-1, -2]]]], np.int8)   # -5/4 = -1.25 -> -1; ties away from zero:
    assert qm.QuantizedGlobalAvgPool2d().run(q2).tolist() == [[-1]]
    q3 = np.array([[[[-1, -1], [-2, -2]]]], np.int8)   # -6/4 = -1.5 -> -2
    assert qm.QuantizedGlobalAvgPool2d().run(q3).tolist() == [[-2]]


def test_per_tensor_weights_lose_more_than_per_channel():
    rng = np.random.default_rng(7)
    lin = nn.Linear(32, 16, seed=0)
    lin.weight.data *= np.logspace(-2, 0, 16, dtype=np.float32)[:, None]  # rows of very different size
    model = nn.Sequential(lin)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    errs = {}
    for pc in (True, False):
        q = quant.quantize_model(model, (x, np.zeros(64)), per_channel=pc)
        w_hat = q.ops[0].weight.to_dense()
        errs[pc] = np.abs(w_hat - lin.weight.data)[:4].mean()  # the small rows
        assert len(np.unique(q.ops[0].weight.scales)) == (16 if pc else 1)
    # one scale for all rows spends the small rows' values on few levels (about 1-2 here)
    assert errs[True] < errs[False] / 10


def test_low_weight_bits_use_fewer_levels():
    x, y = _data((64,))
    q = quant.quantize_model(pk.models.mlp([64, 32, 10], seed=0), (x, y), weight_bits=4)
    wq = q.ops[0].weight.q
    assert wq.min() >= -7 and wq.max() <= 7


def test_calibrators_and_sample_count():
    x, y = _data((64,), n=300)
    model = pk.models.mlp([64, 32, 10], seed=0)
    for c in ("minmax", "moving_average", "percentile", "mse"):
        q = quant.quantize_model(model, (x, y), calibration=c, n_samples=100)
        assert np.isfinite(q(x[:5])).all()
    # only the first n_samples are used: the range of 10 samples differs from that of 300
    q10 = quant.quantize_model(model, (x, y), n_samples=10)
    s10 = quant_params(np.r_[0.0, x[:10].min(), x[:10].max()], symmetric=False)
    assert q10.input_qp == s10


def test_errors_are_clear():
    x, y = _data((64,))
    with pytest.raises(TypeError, match="Tanh"):
        quant.quantize_model(pk.models.mlp([64, 8, 10], activation="tanh"), (x, y))
    with pytest.raises(ValueError, match="weight_bits"):
        quant.quantize_model(pk.models.mlp([64, 10]), (x, y), weight_bits=9)
    with pytest.raises(ValueError, match="calibration"):
        quant.quantize_model(pk.models.mlp([64, 10]), (x, y), calibration="kl")
    with pytest.raises(ValueError, match="data"):
        quant.quantize_model(pk.models.mlp([64, 10]), (x[:0], y[:0]))
    with pytest.raises(TypeError, match="model"):
        quant.quantize_model("not a model", (x, y))
    q = quant.quantize_model(pk.models.mlp([64, 10]), (x, y))
    with pytest.raises(ValueError, match=r"\(N, 64\)"):
        q(np.ones((2, 63), np.float32))
    with pytest.raises(ValueError, match="finite"):
        q(np.full((2, 64), np.nan, np.float32))


def test_float_model_is_left_unchanged():
    x, y = _data((64,))
    model = pk.models.mlp([64, 32, 10], seed=0).train()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    quant.quantize_model(model, (x, y))
    assert model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_compare_reports_each_layer(quantized):
    name, model, q, xt, ref = quantized
    rep = quant.compare(q, (xt, np.zeros(len(xt), np.int64)), n_samples=20)
    assert len(rep.rows) == len(q.ops)
    finite = [r["sqnr_db"] for r in rep.rows if np.isfinite(r["sqnr_db"])]
    assert min(finite) > 20  # int8 everywhere: far above the ~6 dB of one bit
    # the last row is the model output: its error matches the direct comparison
    out = q(xt[:20])
    with pk.no_grad():
        f = model(pk.Tensor(xt[:20])).data
    assert rep.max_abs_error == pytest.approx(float(np.abs(out - f).max()), rel=1e-3, abs=1e-5)
    assert "SQNR" in repr(rep) and "<table>" in rep._repr_html_()
    with pytest.raises(TypeError, match="qmodel"):
        quant.compare(model, (xt, None))


def test_an_empty_batch_gives_an_empty_output_as_the_float_model_does(quantized):
    # PyTorch's models accept a batch of 0 samples; Flatten's reshape(n, -1) could not (0 rows, -1 unknown).
    name, model, q, xt, ref = quantized
    with pk.no_grad():
        float_out = model(pk.Tensor(xt[:0])).data
    out = q(xt[:0])
    assert float_out.shape == out.shape == (0, ref.shape[1])
