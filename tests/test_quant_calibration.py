"""Calibration observers: ranges by hand, outlier handling, registry, errors."""
import numpy as np
import pytest

from prunekit.quant import calibration as cal


def test_minmax_is_the_range_of_everything_seen():
    obs = cal.get_observer("minmax")
    obs.observe(np.array([0.5, -1.0])).observe(np.array([[3.0, 0.0]]))
    assert obs.range() == (-1.0, 3.0)
    s, z = obs.quant_params()
    assert s == pytest.approx(4.0 / 255, rel=1e-6) and z == -128 - round(-1.0 / (4.0 / 255))


def test_moving_average_by_hand():
    obs = cal.get_observer("moving_average", averaging_constant=0.5)
    obs.observe(np.array([-2.0, 2.0]))   # first batch: (-2, 2)
    obs.observe(np.array([0.0, 6.0]))    # (-2 + 0.5 * 2, 2 + 0.5 * 4) = (-1, 4)
    assert obs.range() == (-1.0, 4.0)


def test_percentile_clips_outliers_and_minmax_does_not():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_000)
    x[:3] = [80.0, -90.0, 70.0]
    lo, hi = cal.get_observer("percentile", percentile=99.9).observe(x).range()
    assert -4 < lo < -2.5 and 2.5 < hi < 4
    np.testing.assert_allclose([lo, hi], np.percentile(x, [0.1, 99.9]))
    assert cal.get_observer("minmax").observe(x).range() == (-90.0, 80.0)


def test_mse_clipping_beats_minmax_on_heavy_tails():
    rng = np.random.default_rng(1)
    x = rng.laplace(size=30_000)  # below max_values: the observer sees every value
    lo, hi = cal.get_observer("mse", bits=4).observe(x).range()
    assert x.min() < lo < 0 < hi < x.max()  # it clipped both tails
    err_mse = cal.quantization_mse(x, lo, hi, bits=4)
    assert err_mse < 0.5 * cal.quantization_mse(x, x.min(), x.max(), bits=4)
    # the search starts at the min-max range, so it can never be worse than it
    x[0] = 60.0  # one far outlier: clipping it costs more than it saves, at 8 bits
    lo, hi = cal.get_observer("mse", bits=8).observe(x).range()
    assert cal.quantization_mse(x, lo, hi) <= cal.quantization_mse(x, x.min(), x.max())


def test_sampled_observers_keep_a_bounded_unbiased_subsample():
    obs = cal.PercentileObserver(percentile=99.0, max_values=5_000, seed=0)
    rng = np.random.default_rng(2)
    for i in range(20):  # later batches are shifted: a biased pool would overweight the first ones
        obs.observe(rng.standard_normal(2_000) + i * 0.1)
    assert obs.values.size <= 6_000 and obs.count == 40_000
    assert abs(obs.values.mean() - 0.95) < 0.1
    # same seed, same pool
    obs2 = cal.PercentileObserver(percentile=99.0, max_values=5_000, seed=0)
    rng = np.random.default_rng(2)
    for i in range(20):
        obs2.observe(rng.standard_normal(2_000) + i * 0.1)
    np.testing.assert_array_equal(obs.values, obs2.values)


def test_registry_and_custom_calibrator():
    assert set(cal.available_calibrators()) >= {"minmax", "moving_average", "percentile", "mse"}

    class Fixed(cal.Observer):
        """Always [-1, 1]."""

        def _update(self, x):
            pass

        def _range(self):
            return -1.0, 1.0

    cal.register_calibrator("fixed_test", Fixed)
    try:
        assert cal.get_observer("fixed_test").observe(np.ones(3)).range() == (-1.0, 1.0)
        with pytest.raises(ValueError, match="fixed_test"):
            cal.register_calibrator("fixed_test", Fixed)
    finally:
        cal._REGISTRY.pop("fixed_test")


def test_errors():
    with pytest.raises(ValueError, match="calibration"):
        cal.get_observer("histogram")
    with pytest.raises(RuntimeError, match="observe"):
        cal.get_observer("minmax").range()
    with pytest.raises(ValueError, match="NaN"):
        cal.get_observer("minmax").observe(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="percentile"):
        cal.get_observer("percentile", percentile=120)
    with pytest.raises(TypeError, match="calibration"):
        cal.get_observer(cal.MinMaxObserver())
