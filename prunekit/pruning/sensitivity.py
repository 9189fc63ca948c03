"""Sensitivity scan: how much can each layer be pruned on its own?

Han et al. (2015) prune one layer at a time to several sparsities, leave the others
dense, and measure the accuracy. Layers whose accuracy holds up (usually the big
fully-connected ones) can be pruned hard; sensitive layers (often the first and the
last) get a lower sparsity. :meth:`SensitivityResult.sparsities_for` turns a tolerated
accuracy drop into per-layer sparsities for :func:`prune_to`.

The sparsities here are absolute (the fraction of the layer's weights that are zero),
unlike :func:`prune`'s ``amount`` (a fraction of what is still unpruned).
"""
from __future__ import annotations

import numpy as np

from .. import _glue
from .._validate import check_number, fail
from ..train import as_evaluator, as_finetune
from ._targets import check_model, select_weights
from .unstructured import prune_to

__all__ = ["sensitivity_scan", "SensitivityResult", "plot_sensitivity"]

DEFAULT_SPARSITIES = (0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


class SensitivityResult:
    """Metric of the model with one layer pruned, per layer and sparsity.

    ``values[layer]`` lists the metric at each of ``sparsities``; ``baseline`` is the
    metric before pruning; ``higher_is_better`` is False for losses.
    """

    def __init__(self, sparsities, values, baseline, metric, higher_is_better):
        self.sparsities = list(sparsities)
        self.values = values
        self.baseline = baseline
        self.metric = metric
        self.higher_is_better = higher_is_better

    def drops(self, layer):
        """How much worse than the baseline each scanned sparsity is (positive = worse)."""
        v = np.asarray(self.values[layer], dtype=float)
        return self.baseline - v if self.higher_is_better else v - self.baseline

    def sparsities_for(self, max_drop):
        """Per-layer sparsity ``{"<layer>.weight": s}`` tolerating at most ``max_drop``.

        For each layer: the largest scanned sparsity such that it *and every smaller
        scanned sparsity* cost at most ``max_drop`` (0.0 if even the smallest does).
        Feed the result to ``prune_to(model, result.sparsities_for(0.01))``.
        """
        max_drop = check_number("max_drop", max_drop, 0, None)
        out = {}
        for layer in self.values:
            best = 0.0
            for a, d in zip(self.sparsities, self.drops(layer)):
                if d > max_drop:
                    break
                best = a
            out[layer] = best
        return out

    def __repr__(self):
        head = f"{'layer':<16}" + "".join(f"{a:>8.0%}" for a in self.sparsities)
        lines = [f"{self.metric} with one layer pruned (dense: {self.baseline:.4f})", head]
        for layer, vals in self.values.items():
            lines.append(f"{layer:<16}" + "".join(f"{v:>8.4f}" for v in vals))
        return "\n".join(lines)

    def plot(self, ax=None):
        """Metric against sparsity, one line per layer (see :func:`plot_sensitivity`)."""
        return plot_sensitivity(self, ax=ax)


def plot_sensitivity(result, *, ax=None):
    """Plot a :class:`SensitivityResult`: one line per layer, the dense baseline dashed."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 4))[1]
    xs = [100 * a for a in result.sparsities]
    for layer, vals in result.values.items():
        ax.plot(xs, vals, marker="o", label=layer)
    ax.axhline(result.baseline, color="gray", linestyle="--", label="dense")
    ax.set_xlabel("sparsity of the layer (%)")
    ax.set_ylabel(result.metric)
    ax.set_title("Sensitivity: one layer pruned at a time")
    ax.legend(fontsize="small")
    return ax


def _metric(evaluate, metric, loss):
    if evaluate is None:
        fail("evaluate", "a callable model -> metrics or data to evaluate the model on", None, TypeError)
    evaluator = as_evaluator(evaluate, loss)

    def run(model):
        out = evaluator(model)
        if isinstance(out, dict):
            if metric not in out:
                fail("metric", f"one of the evaluation keys {sorted(out)}", repr(metric))
            return float(out[metric])
        return float(out)
    return run


def sensitivity_scan(model, evaluate, *, sparsities=DEFAULT_SPARSITIES, layers=None, score="magnitude", data=None,
                     finetune=None, metric="accuracy", seed=None, loss="cross_entropy", **options):
    """Prune each layer alone to each sparsity in ``sparsities``, evaluate, and restore it.

    ``evaluate`` is a callable ``model -> metrics`` (a dict or a float) or any data form
    for :func:`prunekit.train.evaluate`; ``metric`` picks the key ("accuracy", "loss", ...).
    ``sparsities`` are absolute: the fraction of the layer's weights that are zero,
    already-pruned weights included (not :func:`prune`'s fraction of what is left).
    ``data`` feeds a data-driven ``score``. ``finetune`` (a :class:`prunekit.train.FineTune`
    or a callable ``finetune(model, step)``, as the schedules take it) is run after each
    cut and before the evaluation (Han et al. 2015 scan without retraining: the default).
    The model is left exactly as it was (weights, masks and buffers). Returns a
    :class:`SensitivityResult`.
    """
    check_model(model)
    params = select_weights(model, layers)
    if isinstance(sparsities, (str, bytes)) or not hasattr(sparsities, "__iter__"):
        fail("sparsities", "a non-empty list of sparsities in [0, 1]", sparsities, TypeError)
    sparsities = sorted(check_number("sparsities", a, 0, 1) for a in sparsities)
    if not sparsities:
        fail("sparsities", "a non-empty list of sparsities in [0, 1]", sparsities)
    if data is not None:  # read a generator once, for every layer
        data = _glue.batches(data, options.get("batch_size"), "data")
    run = _metric(evaluate, metric, loss)
    tune = as_finetune(finetune)
    baseline = run(model)
    values = {}
    step = 0
    for name, p in params.items():
        vals = []
        saved = _snapshot(model)
        try:
            for a in sparsities:
                prune_to(model, a, score=score, data=data, layers=[name], seed=seed, loss=loss, **options)
                if tune is not None:
                    step += 1
                    tune(model, step)
                vals.append(run(model))
                _restore(model, saved)
        finally:
            _restore(model, saved)
        values[name] = vals
    return SensitivityResult(sparsities, values, baseline, metric, metric != "loss")


def _snapshot(model):
    """Copies of every parameter's values and mask, and of every buffer."""
    params = [(p, p.data.copy(), None if p.mask is None else p.mask.copy()) for p in model.parameters()]
    buffers = [(m, name, np.array(getattr(m, name), copy=True)) for m in model.modules() for name in m._buffers]
    return params, buffers


def _restore(model, saved):
    params, buffers = saved
    for p, data, mask in params:
        p.data[...] = data
        p.mask = None if mask is None else mask.copy()
        p.grad = None
    for m, name, value in buffers:
        object.__setattr__(m, name, value.copy())   # as register_buffer stores it
