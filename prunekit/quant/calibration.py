"""Calibration: choosing the range ``[lo, hi]`` an activation is quantized over, from data.

Weights are known ahead, activations are not: post-training quantization runs a
few hundred representative inputs through the float model and an *observer* at
each quantization point watches the values go by (TFLite recommends 100-500
samples; :data:`DEFAULT_SAMPLES`). The observer then proposes a range, and
:func:`~prunekit.quant.affine.quant_params`' rules turn it into a scale and zero point.

Built-in calibrators (a registry, like the pruning scores; add your own with
:func:`register_calibrator`):

==============  ==========================================================  ==========================
name            range                                                       from
==============  ==========================================================  ==========================
minmax          the smallest and largest value seen                         TFLite, PyTorch MinMaxObserver
moving_average  exponential moving average of each batch's min and max      Jacob et al. 2018 (sec. 3.1)
percentile      the ``100 - p`` and ``p`` percentiles (default p = 99.99)   McKinstry et al. 2019
mse             the clipping range minimising the quantization MSE          Banner et al. 2019 (ACIQ), Nagel et al. 2021 sec. 3.5
==============  ==========================================================  ==========================

Min-max never clips but spends its levels on rare outliers; percentile and MSE clip
a few outliers to get a finer step for the bulk. The percentile and MSE observers
keep a seeded random subsample of at most ``max_values`` values (memory stays bounded).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, NamedTuple

import numpy as np

from .._validate import check_int, check_number, check_option, fail
from .affine import quant_params

__all__ = ["Observer", "MinMaxObserver", "MovingAverageObserver", "PercentileObserver", "MSEObserver",
           "register_calibrator", "get_observer", "available_calibrators", "quantization_mse", "DEFAULT_SAMPLES"]

DEFAULT_SAMPLES = 256
"""Calibration samples used when the caller does not say (TFLite recommends 100-500)."""


class Observer:
    """Watches arrays go by (:meth:`observe`) and proposes a range (:meth:`range`).

    Subclasses implement ``_update(x)`` (x a 1-D float64 array) and ``_range()``.
    """

    name = "observer"

    def __init__(self):
        self.count = 0  # values seen

    def observe(self, x):
        """Take one batch of values (any shape); returns ``self``."""
        x = np.asarray(x.data if hasattr(x, "data") and not isinstance(x, np.ndarray) else x)
        if x.dtype.kind not in "fiu":
            fail("x", "an array of real numbers", str(x.dtype), TypeError)
        x = x.astype(np.float64, copy=False).ravel()
        if x.size == 0:
            return self
        if not np.isfinite(x).all():
            fail("x", "finite values (the float model produced NaN or inf during calibration)", "NaN or inf")
        self._update(x)
        self.count += x.size
        return self

    def range(self) -> tuple:
        """``(lo, hi)`` to quantize over (before widening to include 0)."""
        if self.count == 0:
            raise RuntimeError(f"{type(self).__name__}.range(): no values observed yet; call observe() first.")
        lo, hi = self._range()
        return float(lo), float(hi)

    def quant_params(self, bits=8, symmetric=False):
        """``(scale, zero_point)`` for this range with the TFLite rules of :func:`quant_params`."""
        lo, hi = self.range()
        return quant_params(np.array([lo, hi]), bits=bits, symmetric=symmetric)

    def _update(self, x):
        raise NotImplementedError

    def _range(self):
        raise NotImplementedError

    def __repr__(self):
        rng = f", range=({self.range()[0]:.4g}, {self.range()[1]:.4g})" if self.count else ""
        return f"{type(self).__name__}(values={self.count:,}{rng})"


class MinMaxObserver(Observer):
    """The range of every value seen: never clips."""

    name = "minmax"

    def __init__(self):
        super().__init__()
        self.lo, self.hi = np.inf, -np.inf

    def _update(self, x):
        self.lo, self.hi = min(self.lo, x.min()), max(self.hi, x.max())

    def _range(self):
        return self.lo, self.hi


class MovingAverageObserver(Observer):
    """Exponential moving average of each batch's min and max: ``m <- m + c (batch_min - m)``.

    What QAT uses for activations (Jacob et al. 2018); ``averaging_constant`` c = 0.01
    as in PyTorch's MovingAverageMinMaxObserver. The first batch sets the range.
    """

    name = "moving_average"

    def __init__(self, averaging_constant=0.01):
        super().__init__()
        self.c = check_number("averaging_constant", averaging_constant, 0, 1, "(]")
        self.lo = self.hi = None

    def _update(self, x):
        lo, hi = x.min(), x.max()
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo += self.c * (lo - self.lo)
            self.hi += self.c * (hi - self.hi)

    def _range(self):
        return self.lo, self.hi


class _Sampled(Observer):
    """Keeps a bounded, seeded random subsample of the values (plus the exact min and max)."""

    def __init__(self, max_values=1 << 18, seed=0):
        super().__init__()
        self.max_values = check_int("max_values", max_values, 2)
        self.rng = np.random.default_rng(seed)
        self.values = np.empty(0)
        self.lo, self.hi = np.inf, -np.inf

    def _update(self, x):
        self.lo, self.hi = min(self.lo, x.min()), max(self.hi, x.max())
        # keep each value with the same probability: subsample so that the pool holds at most
        # max_values, every value seen so far kept with probability ~ max_values / count
        total = self.count + x.size
        keep = min(1.0, self.max_values / total)
        if keep < 1.0:
            old = self.values[self.rng.random(self.values.size) < keep / max(self._kept, 1e-300)]
            new = x[self.rng.random(x.size) < keep]
            self.values = np.concatenate([old, new])
        else:
            self.values = np.concatenate([self.values, x])
        self._kept = keep

    _kept = 1.0


class PercentileObserver(_Sampled):
    """The ``100 - percentile`` and ``percentile`` percentiles: clips the rarest outliers."""

    name = "percentile"

    def __init__(self, percentile=99.99, max_values=1 << 18, seed=0):
        super().__init__(max_values, seed)
        self.percentile = check_number("percentile", percentile, 50, 100, "(]")

    def _range(self):
        return (np.percentile(self.values, 100 - self.percentile), np.percentile(self.values, self.percentile))


class MSEObserver(_Sampled):
    """The clipping range ``[lo', hi']`` inside ``[min, max]`` whose quantization error is smallest.

    For each candidate the values are quantized and dequantized with the range's
    asymmetric ``bits``-bit parameters, and the mean squared error against the
    original is measured; clipping a few outliers often wins (Banner et al. 2019).
    The search shrinks each end in turn over ``grid`` fractions of (0, 1] (two rounds).
    """

    name = "mse"

    def __init__(self, bits=8, grid=60, max_values=1 << 15, seed=0):
        super().__init__(max_values, seed)
        self.bits = check_int("bits", bits, 2, 16)
        self.grid = check_int("grid", grid, 1)

    def _range(self):
        v = self.values
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        fractions = np.linspace(1.0, 0.02, self.grid)
        # coordinate search: the best upper end for the current lower end, then the other way, twice
        for _ in range(2):
            hi = min((quantization_mse(v, lo, a * hi, self.bits), a * hi) for a in fractions)[1]
            lo = min((quantization_mse(v, a * lo, hi, self.bits), a * lo) for a in fractions)[1]
        return lo, hi


class CalibratorSpec(NamedTuple):
    """A registered calibrator: the observer class (or factory) and where it comes from."""

    name: str
    factory: Callable
    doc: str


_REGISTRY: "OrderedDict[str, CalibratorSpec]" = OrderedDict()


def register_calibrator(name, factory=None, *, overwrite=False):
    """Add an observer factory ``(**options) -> Observer`` under ``name`` (usable as a decorator)."""
    if not isinstance(name, str) or not name:
        fail("name", "a non-empty string", name, TypeError)

    def add(f):
        if not callable(f):
            fail("factory", "a callable returning an Observer", type(f).__name__, TypeError)
        if name in _REGISTRY and not overwrite:
            fail("name", f"a calibrator name not registered yet (pass overwrite=True to replace {name!r})", name)
        doc = (f.__doc__ or "").strip().splitlines()[0] if f.__doc__ else ""
        _REGISTRY[name] = CalibratorSpec(name, f, doc)
        return f

    return add if factory is None else add(factory)


for _cls in (MinMaxObserver, MovingAverageObserver, PercentileObserver, MSEObserver):
    register_calibrator(_cls.name, _cls)


def available_calibrators() -> tuple:
    """Names of the registered calibrators."""
    return tuple(_REGISTRY)


def get_observer(calibration="minmax", **options) -> Observer:
    """A fresh observer: ``calibration`` is a registered name or an :class:`Observer` class/factory."""
    if isinstance(calibration, Observer):
        fail("calibration", "a calibrator name or an Observer class (one observer per tensor is made from it)",
             "an Observer instance", TypeError)
    if callable(calibration):
        obs = calibration(**options)
    else:
        check_option("calibration", calibration, tuple(_REGISTRY))
        obs = _REGISTRY[calibration].factory(**options)
    if not isinstance(obs, Observer):
        fail("calibration", "a factory that returns an Observer", type(obs).__name__, TypeError)
    return obs


def quantization_mse(x, lo, hi, bits=8) -> float:
    """Mean squared error of quantizing ``x`` over ``[lo, hi]`` (asymmetric, ``bits`` bits)."""
    from .affine import fake_quantize

    x = np.asarray(x, np.float64)
    s, z = quant_params(np.array([lo, hi]), bits=bits, symmetric=False)
    return float(np.mean((fake_quantize(x, s, z, bits) - x) ** 2))

