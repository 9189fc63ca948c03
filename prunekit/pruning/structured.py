"""Structured pruning: whole neurons, whole filters (with everything coupled to them), or N:M patterns.

    report = pruning.prune_structured(model, 0.5, structure="channel", score="l1",
                                      example_input=np.zeros((1, 1, 28, 28), np.float32))
    small = pruning.shrink(model, example_input=...)   # a physically smaller model, same outputs

The masks are the visible ``param.mask`` arrays of unstructured pruning, set a whole
row at a time: a removed neuron or filter has its weight row, its bias entry, and
the gamma and beta of the BatchNorm that follows it set to 0, so its output is
exactly 0 and :func:`~prunekit.pruning.shrink` can cut it out without changing the
model's outputs. Which rows go together comes from the dependency graph
(:mod:`prunekit.pruning.graph`): a residual addition couples channels of several
layers into one *unit*, scored and removed as one.

Counting and ties follow :mod:`prunekit.pruning.ranking` (torch's rules), applied
to units instead of weights: ``round(amount * n)`` of the ``n`` units still alive
in each group (``scope="layer"``) or over all groups (``scope="global"``, as in
network slimming); lowest score removed first, ties by lowest unit index. Every
group keeps at least one unit, and ``round_to=k`` keeps a multiple of ``k`` units
(rounding the kept count up), as Torch-Pruning's ``round_to``.

Group scores (a unit's score sums over its coupled producers):

==========  ==================================================  =========================
name        score of a neuron / filter                          from
==========  ==================================================  =========================
l1          ``sum |w|`` over the row (the filter)               Li et al. 2017
l2          ``sqrt(sum w^2)``                                   Li et al. 2017
taylor      ``sum |w * dL/dw|`` over the row (needs ``data``)   Molchanov et al. 2017
bn_scale    ``|gamma|`` of the following BatchNorm              Liu et al. 2017 (slimming)
fpgm        ``sum_k ||F_j - F_k||``: distance to the other      He et al. 2019
            filters; the nearest the geometric median go
random      uniform random numbers from ``seed``
<other>     any registered score, reduced over the row with
            its ``group_reduce`` ("sum" or "l2")
==========  ==================================================  =========================

N:M (``structure="2:4"``) keeps the N best of every M consecutive weights along the
input dimension of every chosen Linear and Conv2d, output layer included
(Mishra et al. 2021, NVIDIA's 2:4 sparsity). For a Conv2d the M weights are M
consecutive input channels at one kernel position (the reduction axis of its matrix
product). Ties drop the lowest index first, as in ``ranking``.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import nn
from .._table import Col, html_table, text_table
from .._validate import check_int, check_option, fail
from . import ranking
from ._targets import check_model
from .graph import PRODUCERS, dependency_groups
from .scores import _run_score, get_score, reduce_groups
from .unstructured import set_mask, sparsity

__all__ = ["prune_structured", "StructuredReport", "parse_structure", "nm_mask", "GROUP_SCORES"]

GROUP_SCORES = ("l1", "l2", "taylor", "bn_scale", "fpgm", "random")
SCOPES = ("layer", "global")


# ------------------------------------------------------------------ arguments
def parse_structure(structure):
    """``"neuron"`` / ``"channel"`` -> (name, None); ``"N:M"`` -> ("N:M", (N, M)); anything else is refused."""
    expected = "'neuron', 'channel' or 'N:M' such as '2:4'"
    if not isinstance(structure, str):
        fail("structure", expected, structure, TypeError)
    if structure in ("neuron", "channel"):
        return structure, None
    a, sep, b = structure.partition(":")
    if not sep:
        fail("structure", expected, structure)
    try:
        n, m = int(a), int(b)
    except ValueError:
        fail("structure", f"{expected} (N and M integers)", structure)
    if m < 2 or not 1 <= n < m:
        fail("structure", "'N:M' with 1 <= N < M (e.g. '2:4')", structure)
    return "N:M", (n, m)


def _ignored(model, ignored_layers):
    if isinstance(ignored_layers, (str, nn.Module)):
        ignored_layers = [ignored_layers]
    try:
        items = list(ignored_layers)
    except TypeError:
        fail("ignored_layers", "a list of layer names or modules", ignored_layers, TypeError)
    modules = list(model.named_modules())
    by_name, by_id = dict(modules), {id(m): n for n, m in modules}
    valid = ", ".join(repr(n) for n, m in modules if isinstance(m, PRODUCERS))
    out = set()
    for item in items:
        if isinstance(item, nn.Module):
            if id(item) not in by_id:
                fail("ignored_layers", "modules that are part of the model", type(item).__name__)
            out.add(by_id[id(item)])
        elif isinstance(item, str):
            name = item[:-len(".weight")] if item.endswith(".weight") and item not in by_name else item
            if name not in by_name:
                fail("ignored_layers", f"names of layers in the model (prunable: {valid})", repr(item))
            out.add(name)
        else:
            fail("ignored_layers", "layer names (str) or modules", item, TypeError)
    return out


def _element_score_name(score):
    return "magnitude" if score == "l1" else score


# ------------------------------------------------------------------ report
class StructuredReport:
    """What :func:`prune_structured` did, one row per dependency group.

    ``rows``: dicts with ``group, producers, kind, units, frozen, removed, new, kept``
    (``removed`` counts all removed units, ``new`` those removed by this call).
    """

    def __init__(self, rows, graph=None):
        self.rows = rows
        self.graph = graph
        self.units = sum(r["units"] for r in rows)
        self.removed = sum(r["removed"] for r in rows)
        self.new = sum(r["new"] for r in rows)

    def kept(self, layer):
        """Number of units kept in the group that ``layer`` (a producer name) belongs to."""
        for r in self.rows:
            if layer in r["producers"]:
                return r["kept"]
        fail("layer", f"a producer of one of the groups {[r['producers'] for r in self.rows]}", layer, KeyError)

    _COLUMNS = (Col("group", "group", ">5"), Col("kind", "kind", "<8"),
                Col("producers", lambda r: ", ".join(r["producers"]), "<30", clip=True), Col("units", "units", ">6"),
                Col("frozen", "frozen", ">6"), Col("removed", "removed", ">8"), Col("new", "new", ">5"),
                Col("kept", "kept", ">5"))

    def _total(self):
        return {"group": "total", "units": self.units, "removed": self.removed, "new": self.new,
                "kept": self.units - self.removed}

    def __repr__(self):
        return text_table(self._COLUMNS, self.rows, total=self._total())

    def _repr_html_(self):
        return html_table(self._COLUMNS, self.rows, total=self._total())

    def plot(self, ax=None):
        """Kept and removed units per group (horizontal bars)."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(6, 0.4 * len(self.rows) + 1.2))[1]
        labels = [f"{r['group']}: {r['producers'][0]}" + (" +" if len(r["producers"]) > 1 else "") for r in self.rows]
        kept = [r["kept"] for r in self.rows]
        removed = [r["removed"] for r in self.rows]
        y = np.arange(len(self.rows))
        ax.barh(y, kept, label="kept")
        ax.barh(y, removed, left=kept, label="removed", color="lightgrey")
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlabel("units (neurons or channels)")
        ax.set_title("structured pruning per dependency group")
        ax.legend()
        return ax


# ------------------------------------------------------------------ unit scores
def _removed_units(g, modules):
    """Bool per unit: every row that produces it is masked to 0 (weight and bias), and so are the
    gamma and beta of every BatchNorm entry it passes through (else its output would not be 0)."""
    removed = np.ones(g.n_units, dtype=bool)
    for name, units in g.producers.items():
        layer = modules[name]
        for p in (layer.weight, layer.bias):
            if p is None:
                continue
            if p.mask is None:
                removed[units] = False
            else:
                dead = ~p.mask.reshape(len(units), -1).any(axis=1)
                live = np.zeros(g.n_units, dtype=bool)
                np.logical_or.at(live, units, ~dead)
                removed &= ~live
    for name, (pos, units) in g.norms.items():   # a BatchNorm after it must output 0 too
        bn = modules[name]
        if bn.weight is None:
            removed[units] = False
            continue
        for p in (bn.weight, bn.bias):
            off = p.data[pos] != 0 if p.mask is None else p.mask[pos] != 0
            removed[units[off]] = False
    return removed


def _scores_per_unit(model, groups, modules, score, data, loss, seed):
    """{group index: float64 array of unit scores} (groups a score cannot rank are left out)."""
    out = OrderedDict()
    if score == "bn_scale":
        for g in groups:
            if g.norms:
                s = np.zeros(g.n_units)
                for name, (pos, units) in g.norms.items():
                    bn = modules[name]
                    if bn.weight is not None:
                        np.add.at(s, units, np.abs(bn.weight.data[pos].astype(np.float64)))
                out[g.index] = s
        if not out:
            fail("score", "a score other than 'bn_scale' for a model without BatchNorm after the chosen layers",
                 score)
        return out
    if score == "random":
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        return OrderedDict((g.index, rng.random(g.n_units)) for g in groups)
    if score == "fpgm":
        for g in groups:
            s = np.zeros(g.n_units)
            for name, units in g.producers.items():
                w = modules[name].weight.data.reshape(len(units), -1).astype(np.float64)
                sq = (w * w).sum(axis=1)
                d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * (w @ w.T), 0.0)
                np.add.at(s, units, np.sqrt(d2).sum(axis=1))
            out[g.index] = s
        return out
    name = _element_score_name(score)
    spec = get_score(name)
    params = OrderedDict((f"{p}.weight", modules[p].weight) for g in groups for p in g.producers)
    elem = _run_score(model, params, name if isinstance(name, str) else spec, data, loss, seed, {})
    for g in groups:
        s = np.zeros(g.n_units)
        for p, units in g.producers.items():
            e = elem[f"{p}.weight"]
            row = reduce_groups(e.reshape(len(units), -1), axes=1, how=spec.group_reduce)
            np.add.at(s, units, row if spec.group_reduce == "sum" else row ** 2)
        out[g.index] = s if spec.group_reduce == "sum" else np.sqrt(s)
    return out


def _fix_counts(scores, remove, alive, round_to):
    """Give back the best removed units until at least one is kept and the kept count is a multiple of round_to."""
    restore = np.flatnonzero(remove)
    restore = restore[np.argsort(-scores[restore], kind="stable")]  # best first
    kept = int((alive & ~remove).sum())
    i = 0
    while i < len(restore) and (kept < 1 or (round_to and kept % round_to)):
        remove[restore[i]] = False
        kept += 1
        i += 1
    return remove


# ------------------------------------------------------------------ pruning
def prune_structured(model, amount, *, structure="channel", score="l1", scope="layer", data=None,
                     loss="cross_entropy", ignored_layers=(), round_to=None, example_input=None, seed=None):
    """Remove whole neurons / filters (and what is coupled to them), or impose N:M sparsity; return a report.

    ``structure``: ``"neuron"`` (rows of the Linear layers), ``"channel"`` (filters of
    the Conv2d layers and neurons of the Linear layers), or ``"N:M"`` such as ``"2:4"``.
    ``amount``: fraction of the units still alive in each group (``scope="layer"``)
    or over all groups (``scope="global"``), or an int count; ignored for N:M.
    ``score``: one of ``GROUP_SCORES`` or any registered score name (see the module
    docstring); ``"taylor"`` and other data scores need ``data`` (and ``loss``).
    ``ignored_layers``: layer names or modules whose outputs are never pruned (for
    N:M: layers left dense). ``round_to``: keep a multiple of this many units.
    ``example_input``: an input batch to trace the model with (optional when the
    first layer is a Linear). The output layer never loses its output units.
    Returns a :class:`StructuredReport` (a ``SparsityReport`` for N:M).
    """
    check_model(model)
    kind, nm = parse_structure(structure)
    ignored = _ignored(model, ignored_layers)
    if round_to is not None:
        check_int("round_to", round_to, 1)
    check_option("scope", scope, SCOPES)
    if not callable(score) and not isinstance(score, str):
        fail("score", f"a score name (one of {GROUP_SCORES} or a registered score) or a callable", score, TypeError)
    if kind == "N:M":
        if score in ("bn_scale", "fpgm"):
            fail("score", "an element score for N:M ('l1', 'l2', 'taylor', 'random' or a registered score)", score)
        return _prune_nm(model, nm, score, ignored, data, loss, seed)
    amount = ranking.check_amount(amount)
    if isinstance(score, str) and score not in ("bn_scale", "fpgm", "random"):
        get_score(_element_score_name(score))   # unknown names fail before the trace
    graph = dependency_groups(model, example_input)
    modules = dict(model.named_modules())
    chosen = [g for g in graph if (kind == "channel" or g.kind == "neuron") and not (ignored & set(g.producers))
              and not g.frozen.all()]
    removed_before = {g.index: _removed_units(g, modules) for g in graph}
    scores = _scores_per_unit(model, chosen, modules, score, data, loss, seed) if chosen else {}
    chosen = [g for g in chosen if g.index in scores]
    candidates = OrderedDict((g.index, ~removed_before[g.index] & ~g.frozen) for g in chosen)
    if scope == "global":
        ranking.n_to_prune(amount, sum(int(c.sum()) for c in candidates.values()))
        keep = ranking.global_masks(OrderedDict((i, scores[i]) for i in candidates), amount, candidates)
        remove = {i: candidates[i] & ~keep[i] for i in candidates}
    else:
        remove = {}
        for i, cand in candidates.items():
            k = ranking.n_to_prune(amount, int(cand.sum()))
            remove[i] = cand & ~ranking.bottom_k_mask(scores[i], k, cand)
    for g in chosen:
        alive = ~removed_before[g.index]
        remove[g.index] = _fix_counts(scores[g.index], remove[g.index], alive, round_to)
        _mask_units(g, modules, np.flatnonzero(remove[g.index]))
    rows = []
    for g in graph:
        removed = _removed_units(g, modules)
        rows.append({"group": g.index, "producers": list(g.producers), "kind": g.kind, "units": g.n_units,
                     "frozen": int(g.frozen.sum()), "removed": int(removed.sum()),
                     "new": int(removed.sum() - removed_before[g.index].sum()),
                     "kept": int(g.n_units - removed.sum())})
    return StructuredReport(rows, graph)


def _mask_units(g, modules, units):
    """Mask every row that produces one of ``units`` (weight, bias) and their BatchNorm gamma and beta."""
    if not len(units):
        return
    for name, unit_of in g.producers.items():
        rows = np.isin(unit_of, units)
        layer = modules[name]
        for p in (layer.weight, layer.bias):
            if p is not None:
                mask = np.ones(p.shape, p.dtype) if p.mask is None else p.mask.copy()
                mask[rows] = 0
                set_mask(p, mask)
    for name, (pos, unit_of) in g.norms.items():
        bn = modules[name]
        for p in (bn.weight, bn.bias):
            if p is not None:
                mask = np.ones(p.shape, p.dtype) if p.mask is None else p.mask.copy()
                mask[pos[np.isin(unit_of, units)]] = 0
                set_mask(p, mask)


# ------------------------------------------------------------------ N:M
def nm_mask(scores, n, m, mask=None):
    """Keep the ``n`` best-scored of every ``m`` consecutive entries along the last axis (1 kept, 0 pruned).

    Entries already 0 in ``mask`` rank lowest. Ties: the lowest index is dropped
    first (``ranking``'s rule, applied to each group of ``m`` with a stable sort).
    """
    s = np.asarray(scores, dtype=np.float64).copy()
    if s.shape[-1] % m:
        fail("scores", f"a last axis that is a multiple of M={m}", f"shape {s.shape}")
    if mask is not None:
        s[np.asarray(mask) == 0] = -np.inf
    groups = s.reshape(-1, m)
    order = np.argsort(groups, axis=1, kind="stable")
    keep = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :m - n], False, axis=1)
    keep = keep.reshape(s.shape)
    if mask is not None:
        keep &= np.asarray(mask) != 0
    return keep


def _prune_nm(model, nm, score, ignored, data, loss, seed):
    n, m = nm
    params = OrderedDict((f"{name}.weight", mod.weight) for name, mod in model.named_modules()
                         if isinstance(mod, PRODUCERS) and name not in ignored)
    if not params:
        fail("ignored_layers", "a list that leaves at least one Linear or Conv2d to prune", sorted(ignored))
    for key, p in params.items():
        if p.shape[1] % m:
            fail("structure", f"'N:M' with M dividing the input width of every chosen layer (layer "
                 f"{key[:-7]!r} has {p.shape[1]} inputs, not a multiple of {m}; pass it in ignored_layers)",
                 f"{n}:{m}")
    if score == "random":
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        scores = OrderedDict((k, rng.random(p.shape)) for k, p in params.items())
    else:
        name = _element_score_name(score)
        get_score(name)
        scores = _run_score(model, params, name, data, loss, seed, {})
    for key, p in params.items():
        s = scores[key]
        if p.ndim == 4:   # (O, C, kh, kw): groups of M input channels at each kernel position
            s_t = np.moveaxis(s, 1, -1)
            mask_t = None if p.mask is None else np.moveaxis(p.mask, 1, -1)
            keep = np.moveaxis(nm_mask(s_t, n, m, mask_t), -1, 1)
        else:
            keep = nm_mask(s, n, m, p.mask)
        set_mask(p, keep)
    return sparsity(model, [k[:-len(".weight")] for k in params])
