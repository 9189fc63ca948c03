"""quant_params / quantize / dequantize: hand-computed TFLite values, round-trip properties, errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from prunekit import quant
from prunekit.quant import dequantize, qrange, quant_params, quantize


def test_qrange_follows_the_tflite_spec():
    assert qrange(8, symmetric=True) == (-127, 127)
    assert qrange(8, symmetric=False) == (-128, 127)
    assert qrange(4, symmetric=True) == (-7, 7)
    assert qrange(2, symmetric=False) == (-2, 1)
    assert qrange(16, symmetric=True) == (-32767, 32767)


def test_symmetric_params_by_hand():
    # max |x| = 2.54 -> scale 2.54 / 127 = 0.02, zero point 0
    s, z = quant_params(np.array([-1.0, 0.5, 2.54]))
    assert s == pytest.approx(0.02, rel=1e-7) and z == 0
    assert isinstance(s, float) and isinstance(z, int)
    q = quantize(np.array([-1.0, 0.5, 2.54, 0.03], np.float32), s, z)
    # -1 / 0.02 = -50, 0.5 / 0.02 = 25, 2.54 / 0.02 = 127, 0.03 / 0.02 = 1.5 -> 2 (ties to even)
    np.testing.assert_array_equal(q, [-50, 25, 127, 2])
    assert q.dtype == np.int8


def test_asymmetric_params_by_hand():
    # range [-0.55, 2.0]: scale 2.55 / 255 = 0.01, zero point -128 - round(-55) = -73
    s, z = quant_params(np.array([-0.55, 2.0]), symmetric=False)
    assert s == pytest.approx(0.01, rel=1e-7) and z == -73
    q = quantize(np.array([-0.55, 0.0, 2.0], np.float32), s, z)
    np.testing.assert_array_equal(q, [-128, -73, 127])
    np.testing.assert_allclose(dequantize(q, s, z), [-0.55, 0.0, 2.0], atol=1e-6)


def test_asymmetric_range_is_widened_to_include_zero():
    # all positive [0.5, 3.05]: the range becomes [0, 3.05], so 0 is exact and zero point is qmin
    s, z = quant_params(np.array([0.5, 3.05]), symmetric=False)
    assert z == -128 and s == pytest.approx(3.05 / 255, rel=1e-6)
    assert dequantize(quantize(np.float32(0.0), s, z), s, z) == 0.0
    # all negative [-2.55, -1]: range [-2.55, 0], zero point at the top
    s, z = quant_params(np.array([-2.55, -1.0]), symmetric=False)
    assert z == 127 and s == pytest.approx(0.01, rel=1e-6)


def test_per_channel_params_by_hand():
    w = np.array([[0.0, -1.27, 0.5], [2.54, 1.0, -0.3]], np.float32)
    s, z = quant_params(w, axis=0)
    np.testing.assert_allclose(s, [0.01, 0.02], rtol=1e-6)
    assert s.dtype == np.float32 and z.dtype == np.int32 and not z.any()
    q = quantize(w, s, z, axis=0)
    np.testing.assert_array_equal(q, [[0, -127, 50], [127, 50, -15]])
    # the same per column (axis=1 / axis=-1)
    s1, _ = quant_params(w, axis=-1)
    np.testing.assert_allclose(s1, np.abs(w).max(axis=0) / 127, rtol=1e-6)


def test_all_zero_tensor_gets_unit_scale_and_zero_is_exact():
    s, z = quant_params(np.zeros(5))
    assert (s, z) == (1.0, 0)
    s, z = quant_params(np.zeros((2, 3)), symmetric=False, axis=0)
    np.testing.assert_array_equal(s, [1, 1])
    assert not dequantize(quantize(np.zeros((2, 3)), s, z, axis=0), s, z, axis=0).any()


def test_low_and_high_bit_widths():
    x = np.linspace(-1, 1, 9)
    s, z = quant_params(x, bits=2)  # symmetric 2-bit: {-1, 0, 1}
    assert s == 1.0 and z == 0
    np.testing.assert_array_equal(np.unique(quantize(x, s, z, bits=2)), [-1, 0, 1])
    s, z = quant_params(x, bits=16)
    q = quantize(x, s, z, bits=16)
    assert q.dtype == np.int16 and q.max() == 32767 and q.min() == -32767


def test_narrow_range_clamps_to_the_symmetric_range():
    x = np.array([-5.0, 5.0])
    assert quantize(x, 0.01, 0).tolist() == [-128, 127]
    assert quantize(x, 0.01, 0, narrow_range=True).tolist() == [-127, 127]


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 40), elements=finite), st.integers(2, 16), st.booleans())
def test_round_trip_error_is_at_most_half_a_step(x, bits, symmetric):
    s, z = quant_params(x, bits=bits, symmetric=symmetric)
    back = dequantize(quantize(x, s, z, bits=bits), s, z)
    # inside the calibrated range every value is within half a step (plus float32 rounding)
    err = np.abs(back.astype(np.float64) - x)
    assert (err <= s / 2 * (1 + 1e-5) + 1e-6 * np.abs(x)).all(), (err.max(), s)
    qmin, qmax = qrange(bits, symmetric)
    q = quantize(x, s, z, bits=bits)
    assert q.min() >= qmin and q.max() <= qmax


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 7)), elements=finite), st.booleans())
def test_per_channel_round_trip_and_zero_is_exact(x, symmetric):
    s, z = quant_params(x, symmetric=symmetric, axis=1)
    back = dequantize(quantize(x, s, z, axis=1), s, z, axis=1)
    assert (np.abs(back - x) <= s[None, :] / 2 * (1 + 1e-5) + 1e-6 * np.abs(x)).all()
    zeros = np.zeros((1, x.shape[1]), np.float32)
    assert not dequantize(quantize(zeros, s, z, axis=1), s, z, axis=1).any()


@pytest.mark.parametrize("bits", [1, 17, 0, -3])
def test_bad_bits_is_a_clear_error(bits):
    with pytest.raises(ValueError, match=r"bits.*\[2, 16\]"):
        quant_params(np.ones(3), bits=bits)
    with pytest.raises(ValueError, match="bits"):
        quantize(np.ones(3), 0.1, 0, bits=bits)


def test_bad_bits_type_and_bad_axis():
    with pytest.raises(TypeError, match="bits"):
        quant_params(np.ones(3), bits=8.0)
    with pytest.raises(ValueError, match=r"axis.*\[-2, 1\].*2-D"):
        quant_params(np.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="axis"):
        quant_params(np.ones((2, 3)), axis=-3)
    with pytest.raises(TypeError, match="axis"):
        quant_params(np.ones((2, 3)), axis=1.0)


def test_bad_values_and_parameters():
    with pytest.raises(ValueError, match="NaN"):
        quant_params(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="non-empty"):
        quant_params(np.zeros(0))
    with pytest.raises(ValueError, match="scale"):
        quantize(np.ones(3), 0.0, 0)
    with pytest.raises(ValueError, match="scale"):
        quantize(np.ones(3), -1.0, 0)
    with pytest.raises(ValueError, match="zero_point"):
        quantize(np.ones(3), 0.1, 200)
    with pytest.raises(TypeError, match="zero_point"):
        quantize(np.ones(3), 0.1, 0.5)
    with pytest.raises(ValueError, match="axis"):  # per-channel scales without saying along which axis
        quantize(np.ones((2, 3)), np.array([0.1, 0.2]), 0)
    with pytest.raises(ValueError, match="scale"):  # wrong number of per-channel scales
        quantize(np.ones((2, 3)), np.array([0.1, 0.2]), 0, axis=1)
    with pytest.raises(TypeError, match="q"):
        dequantize(np.ones(3), 0.1, 0)


def test_fake_quantize_is_dequantize_of_quantize():
    x = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    s, z = quant_params(x, bits=4, symmetric=False)
    f = quant.fake_quantize(x, s, z, bits=4)
    np.testing.assert_array_equal(f, dequantize(quantize(x, s, z, bits=4), s, z))
    assert len(np.unique(f)) <= 16


def test_a_denormal_range_gets_the_smallest_float32_scale_not_zero():
    """Found by hypothesis: x = 4e-45 gave scale 4e-45 / 255, which is 0 in float32, and quantize refused it."""
    from prunekit.quant import affine

    for symmetric in (True, False):
        scale, zero = affine.quant_params(np.array([4e-45], np.float32), symmetric=symmetric)
        assert scale == np.float32(np.finfo(np.float32).eps)
        q = affine.quantize(np.array([0.0, 4e-45], np.float32), scale, zero)
        assert affine.dequantize(q, scale, zero)[0] == 0.0
