"""The int8 layers' fused kernels (prunekit/quant/_kernels.py) against their NumPy references, bit for bit,
and the layers' batch-1 (fused) path against their large-batch (matmul + requantize) path."""
import numpy as np
import pytest

import prunekit as pk
from prunekit.quant import _kernels, affine, fixed_point as fp
from prunekit.quant.modules import SERIAL_MATMUL_WORK, QuantizedConv2d, QuantizedLinear, QuantizedModel
from prunekit.sparse import Int8Weight


def _multipliers(rng, c, k):
    """Per-channel (multiplier, shift) that map sums of ``k`` int8 products to about +-40: half of them
    powers of two (then many accumulators are exact rounding ties), half random."""
    typical = 74.0 * 74.0 * np.sqrt(k) / 40  # |acc| / |output|
    real = rng.uniform(0.3, 3.0, size=c) / typical
    real[: c // 2] = 2.0 ** -np.round(np.log2(typical) + rng.integers(-1, 2, size=c // 2))
    return fp.quantize_multiplier(real)


def test_linear_kernel_by_hand_rounds_ties_away_from_zero():
    m, s = fp.quantize_multiplier(0.25)
    out = np.empty((2, 1), np.int8)
    x = np.array([[1, 2], [-1, -2]], np.int8)
    w = np.array([[3, 4]], np.int8)
    # acc = 11 + bias (-5) = 6 and -11 - 5 = -16: 6/4 = 1.5 -> 2 (both roundings go up); -16/4 = -4
    _kernels.linear_requantize_kernel(x, w, np.array([-5], np.int32), np.atleast_1d(np.int32(m)),
                                      np.atleast_1d(np.int32(s)), 1, -128, 127, out)
    assert out.tolist() == [[3], [-3]]


@pytest.mark.parametrize("b, k, c, zp, relu", [(1, 7, 5, 0, False), (3, 64, 33, -7, True), (2, 300, 17, 120, False)])
def test_linear_kernel_matches_reference(b, k, c, zp, relu):
    rng = np.random.default_rng(k)
    x = rng.integers(-128, 128, size=(b, k)).astype(np.int8)
    w = rng.integers(-127, 128, size=(c, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, size=c).astype(np.int32)
    bias[:2] = [fp.INT32_MAX, fp.INT32_MIN]  # accumulators that wrap around in int32, in both
    m, s = _multipliers(rng, c, k)
    lo = zp if relu else -128
    got, ref = np.empty((b, c), np.int8), np.empty((b, c), np.int8)
    _kernels.linear_requantize_kernel(x, w, bias, m, s, zp, lo, 127, got)
    _kernels.linear_requantize_reference(x, w, bias, m, s, zp, lo, 127, ref)
    np.testing.assert_array_equal(got, ref)
    assert got.min() >= lo and len(np.unique(got)) > 3


CONVS = [  # (n, c, h, w, o, kh, kw, sh, sw, ph, pw)
    (1, 1, 28, 28, 6, 5, 5, 1, 1, 2, 2),
    (1, 6, 14, 14, 16, 5, 5, 1, 1, 0, 0),
    (2, 3, 9, 11, 4, 3, 3, 2, 2, 1, 1),
    (3, 2, 8, 7, 5, 3, 2, 2, 1, 0, 1),
    (1, 4, 5, 5, 3, 1, 1, 1, 1, 0, 0),
]


@pytest.mark.parametrize("shape", CONVS)
@pytest.mark.parametrize("in_zp", [-128, 3, 127])
def test_conv_kernel_matches_reference(shape, in_zp):
    n, c, h, w, o, kh, kw, sh, sw, ph, pw = shape
    rng = np.random.default_rng(h * w + in_zp + 128)
    x = rng.integers(-128, 128, size=(n, c, h, w)).astype(np.int8)
    wq = rng.integers(-127, 128, size=(o, c * kh * kw)).astype(np.int8)
    bias = rng.integers(-3000, 3000, size=o).astype(np.int32)
    m, s = _multipliers(rng, o, c * kh * kw)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    got, ref = np.empty((n, o, oh, ow), np.int8), np.empty((n, o, oh, ow), np.int8)
    args = (x, wq, bias, in_zp, kh, kw, sh, sw, ph, pw, m, s, -4, -4, 127)
    _kernels.conv_requantize_kernel(*args, got)
    _kernels.conv_requantize_reference(*args, ref)
    np.testing.assert_array_equal(got, ref)
    assert len(np.unique(got)) > 3


def _input_model(scale, zero_point, shape=(6,)):
    return QuantizedModel([], (scale, zero_point), (scale, zero_point), sample_shape=shape)


@pytest.mark.parametrize("scale, zero_point", [(0.25, 0), (0.1, -3), (0.0078125, 127), (0.02, -128)])
def test_quantize_input_gives_affine_quantize_integers(scale, zero_point):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1.5, size=(4, 6)).astype(np.float32)
    x[0] = (np.arange(-3, 3) + 0.5) * np.float32(scale)  # exact ties: round half to even, as np.rint
    x[1, :3] = [1e6, -1e6, -0.0]                           # clamped, and a negative zero
    q = _input_model(scale, zero_point)
    expect = affine.quantize(x, scale, zero_point)
    got = q.quantize_input(x)
    assert got.dtype == np.int8 and got.shape == x.shape
    np.testing.assert_array_equal(got, expect)
    with pk.backend("numpy"):
        np.testing.assert_array_equal(q.quantize_input(x), expect)
    np.testing.assert_array_equal(q.quantize_input(x[:, ::2]), expect[:, ::2])  # not contiguous
    np.testing.assert_array_equal(q.quantize_input(x.astype(np.float64)), expect)


def test_quantize_input_ties_by_hand_and_refuses_nan_and_inf():
    q = _input_model(0.5, 1)
    # x / 0.5 = 1.5, 2.5, -1.5, 400 -> rint 2, 2, -2, 400 -> + 1 -> 3, 3, -1, 127 (clamped)
    x = np.array([[0.75, 1.25, -0.75, 200.0, 0, 0]], np.float32)
    assert q.quantize_input(x).tolist() == [[3, 3, -1, 127, 1, 1]]
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros((2, 6), np.float32)
        x[1, 5] = bad
        with pytest.raises(ValueError, match="x.*finite"):
            q.quantize_input(x)
        with pytest.raises(ValueError, match="finite"):
            q.run(x)


def _conv_layer(rng, c, o, k, stride, padding, relu):
    w = rng.integers(-127, 128, size=(o, c * k * k)).astype(np.int8)
    return QuantizedConv2d(Int8Weight(w, rng.uniform(0.001, 0.01, o).astype(np.float32)),
                           rng.integers(-500, 500, o), (0.05, 4), (0.1, -10), (k, k), stride, padding, relu)


@pytest.mark.parametrize("layer", ["linear", "linear_relu", "conv", "conv_strided"])
def test_batch_one_path_gives_the_large_batch_integers(layer):
    """A batch big enough for the parallel matmul + requantize path, against the same samples run
    one at a time through the fused kernels."""
    rng = np.random.default_rng(0)
    if layer.startswith("linear"):
        w = rng.integers(-127, 128, size=(256, 512)).astype(np.int8)
        op = QuantizedLinear(Int8Weight(w, rng.uniform(0.001, 0.01, 256).astype(np.float32)),
                             rng.integers(-500, 500, 256), (0.05, 4), (0.2, -10), relu=layer.endswith("relu"))
        x = rng.integers(-128, 128, size=(16, 512)).astype(np.int8)
        big = x.shape[0] * w.size
    else:
        op = _conv_layer(rng, 3, 16, 3, (2, 2) if layer.endswith("strided") else (1, 1), (1, 1), relu=True)
        x = rng.integers(-128, 128, size=(12, 3, 32, 32)).astype(np.int8)
        big = x.shape[0] * 32 * 32 * op.weight.q.size
    assert big >= SERIAL_MATMUL_WORK > big // x.shape[0]
    whole = op.run(x)
    one_by_one = np.concatenate([op.run(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(whole, one_by_one)
    with pk.backend("numpy"):
        np.testing.assert_array_equal(op.run(x[:2]), whole[:2])
    assert len(np.unique(whole)) > 10


def test_run_equals_its_three_public_steps():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(64, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 64)
    model = pk.nn.Sequential(pk.nn.Conv2d(1, 4, 3, padding=1, seed=0), pk.nn.ReLU(), pk.nn.MaxPool2d(2),
                             pk.nn.Flatten(), pk.nn.Linear(64, 3, seed=1))
    from prunekit import quant

    q = quant.quantize_model(model, (x, y))
    out = q.run(x[:5])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, q.dequantize_output(q.run_integer(q.quantize_input(x[:5]))))
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        q.run(x[:2, :, :7])
