"""Integer requantization: hand-computed gemmlowp/TFLite cases, float reference (<= 1 LSB), kernel vs reference."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import prunekit as pk
from prunekit.quant import fixed_point as fp

I32 = st.integers(fp.INT32_MIN, fp.INT32_MAX)


def test_quantize_multiplier_by_hand():
    assert fp.quantize_multiplier(0.75) == (1610612736, 0)           # 0.75 * 2^31
    assert fp.quantize_multiplier(0.1) == (1717986918, -3)           # 0.8 * 2^31, 0.1 = 0.8 / 8
    assert fp.quantize_multiplier(0.5) == (1 << 30, 0)
    assert fp.quantize_multiplier(1.0) == (1 << 30, 1)               # 1 = 0.5 * 2^1
    assert fp.quantize_multiplier(3.0) == (3 << 29, 2)               # 3 = 0.75 * 2^2
    assert fp.quantize_multiplier(0.0) == (0, 0)
    assert fp.quantize_multiplier(2.0 ** -40) == (0, 0)              # flushed: too small for 31 bits of shift
    # a fraction that rounds up to 2^31 moves to the next power of two
    assert fp.quantize_multiplier(1 - 2.0 ** -40) == (1 << 30, 1)
    m, s = fp.quantize_multiplier(np.array([0.75, 0.1]))
    assert m.dtype == np.int32 and m.tolist() == [1610612736, 1717986918] and s.tolist() == [0, -3]
    with pytest.raises(ValueError, match="real_multiplier"):
        fp.quantize_multiplier(-0.5)


def test_srdhm_by_hand():
    f = fp.saturating_rounding_doubling_high_mul
    assert f(100, 1 << 30) == 50             # 100 * 0.5
    assert f(101, 1 << 30) == 51             # 50.5 rounds up
    assert f(-101, 1 << 30) == -50           # -50.5 rounds up too (gemmlowp's nudge)
    assert f(-102, 1 << 30) == -51
    assert f(fp.INT32_MIN, fp.INT32_MIN) == fp.INT32_MAX   # the one overflow saturates
    assert f(fp.INT32_MAX, fp.INT32_MAX) == fp.INT32_MAX - 1
    assert f(fp.INT32_MIN, fp.INT32_MAX) == -fp.INT32_MAX


def test_rounding_divide_by_pot_by_hand():
    f = fp.rounding_divide_by_pot
    assert f(3, 1) == 2 and f(-3, 1) == -2      # +-1.5 -> +-2 (ties away from zero)
    assert f(5, 2) == 1 and f(-5, 2) == -1      # +-1.25 -> +-1
    assert f(6, 2) == 2 and f(-6, 2) == -2      # +-1.5 -> +-2
    assert f(7, 2) == 2 and f(-7, 2) == -2      # +-1.75 -> +-2
    assert f(12345, 0) == 12345
    with pytest.raises(ValueError, match="exponent"):
        f(1, 32)


def test_multiply_by_quantized_multiplier_tflite_example():
    # TFLite requantizes acc = 1000 with M = s_in * s_w / s_out = 0.5 * 0.25 / 0.1 = 1.25
    m, s = fp.quantize_multiplier(1.25)
    assert (m, s) == (1342177280, 1)             # 0.625 * 2^31, shift 1
    assert fp.multiply_by_quantized_multiplier(1000, m, s) == 1250
    m, s = fp.quantize_multiplier(0.0123)
    # 0.0123 = 0.7872 * 2^-6; 1000 * 0.0123 = 12.3 -> 12; -1000 -> -12; 2000 -> 24.6 -> 25
    assert fp.multiply_by_quantized_multiplier(np.array([1000, -1000, 2000]), m, s).tolist() == [12, -12, 25]


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2 ** 24), 2 ** 24), st.floats(1e-6, 0.999, allow_nan=False))
def test_integer_requantization_is_within_one_lsb_of_the_float_reference(acc, real):
    m, s = fp.quantize_multiplier(real)
    got = int(fp.multiply_by_quantized_multiplier(acc, m, s))
    assert abs(got - acc * real) <= 1.0, (acc, real, got)


def test_double_rounding_can_cost_one_unit():
    # 1 * 0.25: the high multiply rounds 0.5 up to 1, then the shift rounds 0.5 up again -> 1, not 0
    m, s = fp.quantize_multiplier(0.25)
    assert (m, s) == (1 << 30, -1)
    assert fp.multiply_by_quantized_multiplier(1, m, s) == 1


@settings(max_examples=50, deadline=None)
@given(I32, I32)
def test_srdhm_matches_exact_rational_rounding(a, b):
    got = int(fp.saturating_rounding_doubling_high_mul(a, b))
    if a == b == fp.INT32_MIN:
        assert got == fp.INT32_MAX
    else:
        # floor(a*b / 2^31 + 1/2) for ab >= 0; for ab < 0 ties go up as well: ceil(ab/2^31 - 1/2)
        num = a * b
        expect = (num + (1 << 30)) >> 31 if num >= 0 else -((-num + (1 << 30) - 1) >> 31)
        assert got == expect


@pytest.mark.parametrize("n, c", [(7, 5), (300, 64)])
def test_requantize_kernel_matches_the_numpy_reference_bit_for_bit(n, c):
    rng = np.random.default_rng(n)
    acc = rng.integers(-(2 ** 22), 2 ** 22, size=(n, c)).astype(np.int32)
    acc[0, :2] = [fp.INT32_MIN, fp.INT32_MAX]
    real = rng.uniform(1e-5, 2.0, size=c)
    m, s = fp.quantize_multiplier(real)
    got = fp.requantize(acc, m, s, zero_point=-5, qmin=-128, qmax=127)
    with pk.backend("numpy"):
        ref = fp.requantize(acc, m, s, zero_point=-5, qmin=-128, qmax=127)
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == np.int8
    # against the float formula: at most one unit apart (before clamping)
    flt = np.clip(np.rint(acc.astype(np.float64) * real) - 5, -128, 127)
    assert np.abs(got.astype(np.int64) - flt).max() <= 1


def test_requantize_fused_relu_and_int16_output():
    acc = np.array([[-1000, 0, 1000]], np.int32)
    m, s = fp.quantize_multiplier(0.01)
    out = fp.requantize(acc, m, s, zero_point=3, qmin=3, qmax=127)  # ReLU: clamp at the zero point
    assert out.tolist() == [[3, 3, 13]]
    out16 = fp.requantize(acc * 100, m, s, 0, -32768, 32767, out_dtype=np.int16)
    assert out16.dtype == np.int16 and out16.tolist() == [[-1000, 0, 1000]]
    with pytest.raises(TypeError, match="acc"):
        fp.requantize(acc.astype(np.int64), m, s, 0)
