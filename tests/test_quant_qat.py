"""QAT: STE gradients (hand values and finite differences where defined), conversion, fp16, bit-width scan."""
import numpy as np
import pytest

import prunekit as pk
from prunekit import nn, quant
from prunekit.quant.affine import fake_quantize


def test_ste_passes_the_gradient_inside_the_range_and_blocks_it_outside():
    # scale 0.5, zero point 0, 4 bits: representable [-4.0, 3.5]
    x = pk.Tensor(np.array([-5.0, -4.0, -1.2, 0.3, 3.5, 3.6, 9.0]), requires_grad=True)
    y = quant.fake_quant(x, 0.5, 0, bits=4)
    np.testing.assert_array_equal(y.data, [-4.0, -4.0, -1.0, 0.5, 3.5, 3.5, 3.5])
    (y * pk.Tensor(np.arange(1.0, 8.0))).sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 2, 3, 4, 5, 0, 0])


def test_ste_equals_the_derivative_of_clip_checked_by_finite_differences():
    # the STE *is* the gradient of clip(x, lo, hi); gradcheck verifies that gradient, then we compare
    rng = np.random.default_rng(0)
    xs = rng.uniform(-6, 6, 40)
    xs = xs[np.abs(np.abs(xs) - 4) > 0.1]  # away from the kinks, where the derivative is defined
    s, z, bits = 0.5, 0, 4
    lo, hi = s * (-8 - z), s * (7 - z)
    pk.gradcheck(lambda t: t.clip(lo, hi), [pk.Tensor(xs.copy(), requires_grad=True)])
    t = pk.Tensor(xs.copy(), requires_grad=True)
    t.clip(lo, hi).sum().backward()
    u = pk.Tensor(xs.copy(), requires_grad=True)
    quant.fake_quant(u, s, z, bits).sum().backward()
    np.testing.assert_array_equal(u.grad, t.grad)


def test_per_channel_ste_and_gradcheck_of_a_qat_layer_where_defined():
    rng = np.random.default_rng(1)
    w = pk.Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    s = np.abs(w.data).max(axis=1) / 7
    y = quant.fake_quant(w, s, np.zeros(3, np.int32), bits=4, axis=0, narrow_range=True)
    np.testing.assert_allclose(y.data, fake_quantize(w.data, s, np.zeros(3, np.int32), 4, axis=0, narrow_range=True))
    y.sum().backward()
    np.testing.assert_array_equal(w.grad, np.ones((3, 4)))  # every weight is inside its channel's range
    # the bias of a fake-quantized layer has an ordinary gradient: checked by finite differences
    x = rng.standard_normal((5, 4))
    b = pk.Tensor(rng.standard_normal(3), requires_grad=True)
    wq = pk.Tensor(y.data)
    pk.gradcheck(lambda b_: pk.functional.linear(pk.Tensor(x), wq, b_).relu() * 2.0, [b])


def _digits_mlp():
    (x, y), (xt, yt) = pk.data.load_digits()
    m = pk.models.mlp([64, 32, 10], seed=0)
    pk.fit(m, pk.data.DataLoader(x, y, 64, shuffle=True, seed=0),
           pk.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), epochs=6, progress=False)
    return m, (x, y), (xt, yt)


@pytest.fixture(scope="module")
def digits():
    return _digits_mlp()


def test_qat_recovers_low_bit_accuracy_and_converts_to_the_integer_model(digits):
    m, (x, y), (xt, yt) = digits
    float_acc = pk.evaluate(m, (xt, yt))["accuracy"]
    ptq = pk.evaluate(quant.quantize_model(m, (x, y), weight_bits=2), (xt, yt))["accuracy"]
    qat = quant.prepare_qat(m, (x, y), weight_bits=2)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    pk.fit(qat, pk.data.DataLoader(x, y, 64, shuffle=True, seed=0),
           pk.optim.SGD(qat.parameters(), lr=0.01, momentum=0.9), epochs=3, progress=False)
    qat_acc = pk.evaluate(qat, (xt, yt))["accuracy"]
    assert qat_acc > ptq + 0.1, (ptq, qat_acc, float_acc)  # 2-bit PTQ loses a lot; QAT wins most of it back
    for k, v in m.state_dict().items():  # the float model is untouched
        np.testing.assert_array_equal(v, before[k])
    qi = quant.convert(qat)
    assert qi.ops[0].weight.q.min() >= -1 and qi.ops[0].weight.q.max() <= 1   # 2-bit symmetric: {-1, 0, 1}
    qat.eval()
    with pk.no_grad():
        fake = qat(pk.Tensor(xt)).data
    real = qi(xt)
    # the integer model computes what the fake-quant model simulated, up to one output step
    assert np.abs(fake - real).max() <= qi.output_qp[0] * 1.01 + 1e-6
    assert (fake.argmax(1) == real.argmax(1)).mean() > 0.98


def test_qat_on_a_residual_net_folds_bn_and_converts():
    rng = np.random.default_rng(2)
    x = rng.random((32, 1, 12, 12)).astype(np.float32)
    model = pk.models.resnet_small(channels=(4, 8), seed=0).eval()
    qat = quant.prepare_qat(model, (x, np.zeros(32)))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qat.modules())
    qi = quant.convert(qat)
    qat.eval()
    with pk.no_grad():
        fake = qat(pk.Tensor(x)).data
        ref = model(pk.Tensor(x)).data
    real = qi(x)
    assert np.abs(fake - real).max() <= 3 * qi.output_qp[0]
    assert np.abs(real - ref).max() < 0.1 * (ref.max() - ref.min())


def test_half_precision_model(digits):
    m, (x, y), (xt, yt) = digits
    h = quant.half(m)
    assert h.nbytes == m.num_parameters() * 2
    with pk.no_grad():
        ref = m(pk.Tensor(xt)).data
    out = h(pk.Tensor(xt)).data
    err = np.abs(out - ref).max()
    assert 0 < err < 1e-2 * np.abs(ref).max()  # float16 rounding: visible but small
    assert (out.argmax(1) == ref.argmax(1)).mean() > 0.99


def test_choose_bits_picks_the_fewest_bits_within_tolerance(digits):
    m, (x, y), (xt, yt) = digits
    plan = quant.choose_bits(m, (xt, yt), candidates=(8, 4, 2), tolerance=0.01)
    assert set(plan.bits) == {"0", "2"}
    for name, b in plan.bits.items():
        accs = plan.scan[name]
        assert accs[b] >= plan.baseline - 0.01
        smaller = [c for c in (8, 4, 2) if c < b]
        if smaller:  # the next narrower width was tried and failed
            assert accs[max(smaller)] < plan.baseline - 0.01
    q = quant.quantize_model(m, (x, y), weight_bits=plan.weight_bits())
    assert pk.evaluate(q, (xt, yt))["accuracy"] >= plan.baseline - 0.03
    assert "bits" in repr(plan) and "<table>" in plan._repr_html_()
    with pytest.raises(ValueError, match="weight_bits"):
        quant.quantize_model(m, (x, y), weight_bits={"nope": 4})


def test_qat_errors():
    with pytest.raises(ValueError, match="weight_bits"):
        quant.prepare_qat(pk.models.mlp([4, 2]), weight_bits=1)
    with pytest.raises(TypeError, match="qat_model"):
        quant.convert(pk.models.mlp([4, 2]))
    with pytest.raises(ValueError, match="qat_model"):
        quant.convert(quant.prepare_qat(pk.models.mlp([4, 2])))  # never saw data
