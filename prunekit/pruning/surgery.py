"""Surgery: turn a structurally masked model into a physically smaller one with the same outputs.

Masks alone change nothing about speed or size: a masked filter is still computed
(then multiplied by 0) and still stored. :func:`shrink` builds a new model in which
every removed neuron or filter is gone, together with the matching input columns /
input channels of the layers that read it and the entries of the BatchNorm in
between. Because a removed unit's output was exactly 0 (weight row, bias and
BatchNorm gamma and beta all masked), dropping the columns that multiplied it
changes nothing: the outputs equal the masked model's up to float32 round-off.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import nn
from .._validate import fail
from ._targets import check_model
from .graph import dependency_groups, example_array
from .structured import _removed_units

__all__ = ["shrink"]


def _param(old, index):
    """A new Parameter holding ``old[index]`` (and its mask, dropped when nothing in it is pruned)."""
    p = nn.Parameter(np.ascontiguousarray(old.data[index]), requires_grad=old.requires_grad)
    if old.mask is not None:
        mask = np.ascontiguousarray(old.mask[index])
        p.mask = None if mask.all() else mask
    return p


def _cut(layer, out_keep=None, in_keep=None):
    """Keep the output rows ``out_keep`` and input columns ``in_keep`` (bool arrays) of a Linear/Conv2d/BatchNorm."""
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        for name in ("weight", "bias"):
            if getattr(layer, name) is not None:
                setattr(layer, name, _param(getattr(layer, name), out_keep))
        layer.running_mean = np.ascontiguousarray(layer.running_mean[out_keep])
        layer.running_var = np.ascontiguousarray(layer.running_var[out_keep])
        layer.num_features = int(out_keep.sum())
        return
    if out_keep is not None:
        layer.weight = _param(layer.weight, out_keep)
    if in_keep is not None:
        layer.weight = _param(layer.weight, (slice(None), in_keep))
    if layer.bias is not None and out_keep is not None:
        layer.bias = _param(layer.bias, out_keep)
    out_n, in_n = layer.weight.shape[:2]
    if isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = out_n, in_n
    else:
        layer.out_channels, layer.in_channels = out_n, in_n


def shrink(model, example_input=None):
    """A new, physically smaller copy of ``model`` without its structurally pruned neurons and filters.

    A unit (neuron, filter, or coupled channels after a residual addition) is removed
    when every row that produces it is masked to 0 (as :func:`prune_structured`
    leaves it). The next layers lose the matching input columns or channels, and
    BatchNorms lose the matching entries. ``model`` itself is not changed. Masks of
    unstructured pruning inside the kept rows are kept. ``example_input`` is an input
    batch to trace the model with (optional when its first layer is a Linear).
    Works on Sequential MLPs and CNNs, residual networks and concatenations.
    """
    check_model(model)
    x = example_array(model, example_input)
    graph = dependency_groups(model, x)
    modules = dict(model.named_modules())
    removed = {g.index: _removed_units(g, modules) & ~g.frozen for g in graph}
    if not any(r.any() for r in removed.values()):
        fail("model", "a model with structured masks (whole neurons or filters masked to 0, e.g. by "
             "pruning.prune_structured)", "no removed neuron or filter")
    new = copy.deepcopy(model)
    parts = dict(new.named_modules())
    out_keep, in_keep, norm_keep = {}, {}, {}
    for g in graph:
        r = removed[g.index]
        if not r.any():
            continue
        for name, units in g.producers.items():
            out_keep[name] = ~r[units]
        for name, (pos, units) in g.consumers.items():
            keep = in_keep.setdefault(name, np.ones(parts[name].weight.shape[1], dtype=bool))
            keep[pos[r[units]]] = False
        for name, (pos, units) in g.norms.items():
            keep = norm_keep.setdefault(name, np.ones(parts[name].num_features, dtype=bool))
            keep[pos[r[units]]] = False
    for name in set(out_keep) | set(in_keep):
        _cut(parts[name], out_keep.get(name), in_keep.get(name))
    for name, keep in norm_keep.items():
        _cut(parts[name], keep)
    _check_same(model, new, x)
    return new


def _check_same(model, new, x):
    """Refuse to return a model whose outputs differ from the masked model's (a bug, not a user error)."""
    from ..tensor import no_grad

    flags = [(m, m.training) for m in [*model.modules(), *new.modules()]]
    try:
        model.eval()
        new.eval()
        with no_grad():
            a, b = model(x).data, new(x).data
    finally:
        for m, flag in flags:
            object.__setattr__(m, "training", flag)
    scale = max(1.0, float(np.abs(a).max()) if a.size else 1.0)
    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-4 * scale):
        raise RuntimeError("shrink(): the shrunk model's outputs differ from the masked model's "
                           f"(largest difference {np.abs(a - b).max() if a.shape == b.shape else 'shape'}); "
                           "this is a bug in prunekit, please report it with the model.")
