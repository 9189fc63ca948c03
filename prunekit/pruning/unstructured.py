"""Unstructured (element-wise) pruning of a model's weights, with explicit masks.

A pruned weight is a plain pair you can look at: ``layer.weight.data`` (the
values, exactly 0 where pruned) and ``layer.weight.mask`` (1 = kept, 0 = pruned).
The optimizers multiply the gradient and the updated weight by the mask, so pruned
weights stay 0 through training, and ``nn.save`` stores the mask as ``<name>_mask``.

    report = pruning.prune(model, 0.9, score="magnitude", scope="global")
    print(report)                      # per-layer and total sparsity
    pruning.masks(model)["0.weight"]   # the mask itself
    pruning.remove(model)              # keep the zeros, drop the masks
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import _glue, nn
from .._validate import check_int, check_option, fail
from . import ranking
from ._targets import check_model, prunable_layers, select_weights
from .scores import _run_score

__all__ = [
    "prune", "prune_to", "batch_prune", "masks", "sparsity", "remove", "is_pruned", "apply_masks",
    "set_mask", "SparsityReport", "prunable_layers",
]

SCOPES = ("layer", "global")


# ------------------------------------------------------------------ report
class SparsityReport:
    """Per-layer and total sparsity; prints as a table.

    ``rows`` is a list of dicts with keys ``name, shape, size, pruned, sparsity``
    (and ``new``: weights removed by the call that made the report).
    ``report["0.weight"]`` is one layer's sparsity, ``report.total`` the overall one.
    """

    def __init__(self, rows):
        self.rows = rows
        self.size = sum(r["size"] for r in rows)
        self.pruned = sum(r["pruned"] for r in rows)
        self.total = self.pruned / self.size if self.size else 0.0

    def __getitem__(self, name):
        for r in self.rows:
            if r["name"] == name:
                return r["sparsity"]
        fail("name", f"one of {[r['name'] for r in self.rows]}", name, KeyError)

    def as_dict(self):
        """``{name: sparsity}`` for each layer plus ``"total"``."""
        out = {r["name"]: r["sparsity"] for r in self.rows}
        out["total"] = self.total
        return out

    def __repr__(self):
        show_new = any("new" in r for r in self.rows)
        head = f"{'layer':<16} {'shape':<18} {'weights':>9} {'pruned':>9} {'sparsity':>9}"
        head += f" {'new':>8}" if show_new else ""
        lines = [head, "-" * len(head)]
        for r in self.rows:
            line = (f"{r['name']:<16} {str(tuple(r['shape'])):<18} {r['size']:>9,d} {r['pruned']:>9,d} "
                    f"{r['sparsity']:>8.1%}")
            lines.append(line + (f" {r.get('new', 0):>8,d}" if show_new else ""))
        lines.append("-" * len(head))
        total = f"{'total':<16} {'':<18} {self.size:>9,d} {self.pruned:>9,d} {self.total:>8.1%}"
        if show_new:
            total += f" {sum(r.get('new', 0) for r in self.rows):>8,d}"
        lines.append(total)
        return "\n".join(lines)

    def _repr_html_(self):
        cells = "".join(
            f"<tr><td>{r['name']}</td><td>{tuple(r['shape'])}</td><td>{r['size']:,}</td>"
            f"<td>{r['pruned']:,}</td><td>{r['sparsity']:.1%}</td></tr>" for r in self.rows)
        return ("<table><tr><th>layer</th><th>shape</th><th>weights</th><th>pruned</th><th>sparsity</th></tr>"
                f"{cells}<tr><th>total</th><td></td><th>{self.size:,}</th><th>{self.pruned:,}</th>"
                f"<th>{self.total:.1%}</th></tr></table>")


def _n_pruned(p):
    """Pruned entries: zeros of the mask, or (no mask) exact zeros of the weight."""
    return int(p.size - np.count_nonzero(p.mask if p.mask is not None else p.data))


def _report(params, before=None):
    rows = []
    for n, p in params.items():
        k = _n_pruned(p)
        row = {"name": n, "shape": p.shape, "size": p.size, "pruned": k, "sparsity": k / p.size}
        if before is not None:
            row["new"] = k - before[n]
        rows.append(row)
    return SparsityReport(rows)


# ------------------------------------------------------------------ masks on a model
def set_mask(param, mask):
    """Prune ``param`` with ``mask`` (1 kept, 0 pruned), on top of any mask it has; zero the pruned weights.

    Like torch's ``prune.custom_from_mask``, masks compose: the new mask is multiplied
    into the old one, so a weight an earlier mask pruned stays pruned whatever
    ``mask`` says there. The mask is stored with the weight's dtype; a pending
    ``param.grad`` is masked too. To start over, :func:`remove` the masks first.
    """
    mask = _checked_mask(param, mask)
    if param.mask is not None:
        mask = mask * param.mask
    return _replace_mask(param, mask)


def _checked_mask(param, mask):
    if not isinstance(param, nn.Parameter):
        fail("param", "a prunekit.nn.Parameter", type(param).__name__, TypeError)
    mask = np.asarray(mask)
    if mask.shape != param.shape:
        fail("mask", f"an array of shape {param.shape}", f"shape {mask.shape}")
    if not np.isin(mask, (0, 1)).all():
        fail("mask", "an array of 0s and 1s", "other values")
    return mask


def _replace_mask(param, mask):
    """Give ``param`` exactly ``mask`` (prune() builds its masks from the old ones, so it replaces)."""
    param.mask = np.asarray(mask).astype(param.dtype)
    param.data *= param.mask
    if param.grad is not None:
        param.grad = param.grad * param.mask
    return param


def masks(model):
    """``{"<name>": mask}`` for every parameter of ``model`` that has a mask (the live arrays)."""
    check_model(model)
    return OrderedDict((n, p.mask) for n, p in model.named_parameters() if p.mask is not None)


def is_pruned(model):
    """True if any parameter of ``model`` carries a mask (torch: ``prune.is_pruned``)."""
    check_model(model)
    return any(p.mask is not None for p in model.parameters())


def apply_masks(model):
    """Zero every masked weight again (after you edited ``param.data`` or a mask by hand)."""
    for p in check_model(model).parameters():
        if p.mask is not None:
            p.data *= p.mask


def remove(model):
    """Make pruning permanent: keep the zeros in the weights and drop the masks (torch: ``prune.remove``).

    Afterwards training may move the zeroed weights again. Returns the model.
    """
    apply_masks(model)
    for p in model.parameters():
        p.mask = None
    return model


def sparsity(model, layers=None):
    """A :class:`SparsityReport` of the Linear/Conv2d weights (or ``layers``).

    A masked weight counts the zeros of its mask; a weight without a mask (e.g.
    after :func:`remove`) counts its exact zeros.
    """
    return _report(select_weights(model, layers))


# ------------------------------------------------------------------ pruning
def _check_amount(amount, params, scope):
    if isinstance(amount, dict):
        if scope == "global":
            fail("amount", "a single number with scope='global' (a dict gives per-layer amounts)", "a dict")
        unknown = [k for k in amount if k not in params]
        if unknown:
            fail("amount", f"a dict keyed by the chosen weights {list(params)}", f"keys {unknown}")
        return {k: ranking.check_amount(v, f"amount[{k!r}]") for k, v in amount.items()}
    return ranking.check_amount(amount)


def prune(model, amount, *, score="magnitude", scope="layer", structure=None, data=None, layers=None,
          seed=None, loss="cross_entropy", ignored_layers=(), round_to=None, example_input=None, **options):
    """Remove the lowest-scored weights of every Linear and Conv2d (or of ``layers``); return a report.

    ``amount``: fraction of the still-unpruned weights to remove (0 <= amount <= 1),
    an int count (as in torch, ``1`` is one weight and ``1.0`` is all of them), or
    (scope="layer") a dict ``{"<layer>.weight": amount}``.
    The count is ``round(amount * n_unpruned)`` and the ``k`` smallest scores go,
    exactly as ``torch.nn.utils.prune.l1_unstructured`` (scope="layer") and
    ``global_unstructured`` (scope="global"); ties: lowest flat index first.
    Pruning again composes: pruned weights stay pruned, ``amount`` applies to what is left.

    ``score``: a registered name (see ``available_scores()``), a function
    ``fn(ctx) -> {name: array}``, or a dict of precomputed arrays. Scores that use
    gradients, losses or activations need ``data`` (a DataLoader, an (x, y) pair, a
    dataset or an iterable of batches) and ``loss`` ("cross_entropy", "mse" or a
    callable). ``seed`` feeds the "random" score.
    ``structure``: None (element-wise), or "neuron", "channel" or "N:M" (e.g. "2:4"): then
    this is :func:`prunekit.pruning.prune_structured` (whole neurons / filters and what is
    coupled to them, or N:M groups), with ``ignored_layers``, ``round_to`` and
    ``example_input`` passed on, and ``score="magnitude"`` meaning the group's L1 norm.
    Extra keyword ``options`` go to the score and are checked against the options it
    declares (``max_weights`` for "oracle", ``max_samples`` for "obd"; every score:
    ``batch_size``, the samples per batch of array data).
    """
    check_model(model)
    if structure is not None:
        from .structured import prune_structured  # imports this module: imported here, not at the top

        if layers is not None or options:
            fail("layers", "None with a structure (use ignored_layers=; score options are not taken)",
                 repr(layers) if layers is not None else f"options {sorted(options)}")
        return prune_structured(model, amount, structure=structure, score="l1" if score == "magnitude" else score,
                                scope=scope, data=data, loss=loss, ignored_layers=ignored_layers,
                                round_to=round_to, example_input=example_input, seed=seed)
    if ignored_layers or round_to is not None or example_input is not None:
        fail("structure", "given for ignored_layers, round_to or example_input (they apply to structured pruning)",
             None)
    check_option("scope", scope, SCOPES)
    params = select_weights(model, layers)
    amount = _check_amount(amount, params, scope)
    if isinstance(amount, dict):      # only the layers named in the dict
        params = OrderedDict((n, p) for n, p in params.items() if n in amount)
    old = OrderedDict((n, p.mask) for n, p in params.items())
    before = {n: _n_pruned(p) for n, p in params.items()}
    # fail on impossible int counts before spending time on the scores
    alive = {n: p.size if m is None else int(np.count_nonzero(m)) for (n, p), m in zip(params.items(), old.values())}
    if scope == "global":
        ranking.n_to_prune(amount, sum(alive.values()))
    else:
        for n in params:
            a = amount[n] if isinstance(amount, dict) else amount
            ranking.n_to_prune(a, alive[n], f"amount[{n!r}]" if isinstance(amount, dict) else "amount")
    scores = _run_score(model, params, score, data, loss, seed, options)
    if scope == "global":
        new = ranking.global_masks(scores, amount, old)
    else:
        new = ranking.layer_masks(scores, amount, old)
    for n, p in params.items():
        _replace_mask(p, new[n])
    return _report(params, before)


def prune_to(model, sparsity, *, score="magnitude", scope="layer", data=None, layers=None, seed=None,
             loss="cross_entropy", **options):
    """Prune more weights until the chosen weights have ``sparsity``; never un-prunes.

    Unlike :func:`prune`, ``sparsity`` counts the weights already pruned: the number
    removed is ``round(sparsity * n) - already_pruned`` per layer (scope="layer") or
    over all chosen weights (scope="global"), so schedules land exactly on their
    targets. ``sparsity`` may be a dict ``{"<layer>.weight": sparsity}`` (layer scope),
    e.g. from :meth:`SensitivityResult.sparsities_for`.
    """
    check_model(model)
    check_option("scope", scope, SCOPES)
    if isinstance(sparsity, dict):
        if scope == "global":
            fail("sparsity", "a single number with scope='global' (a dict gives per-layer targets)", "a dict")
        params = select_weights(model, list(sparsity) if layers is None else layers)
        unknown = [k for k in sparsity if k not in params]
        if unknown:
            fail("sparsity", f"a dict keyed by the chosen weights {list(params)}", f"keys {unknown}")
        targets = {n: _check_fraction(v, f"sparsity[{n!r}]") for n, v in sparsity.items()}
    else:
        params = select_weights(model, layers)
        targets = {n: _check_fraction(sparsity, "sparsity") for n in params}
    if scope == "global":
        s = next(iter(targets.values()), 0.0)
        n = sum(p.size for p in params.values())
        done = sum(_n_masked(p) for p in params.values())
        amount = max(int(round(s * n)) - done, 0)
    else:
        amount = {name: max(int(round(targets[name] * params[name].size)) - _n_masked(params[name]), 0)
                  for name in targets}
    return prune(model, amount, score=score, scope=scope, data=data, layers=list(params), seed=seed,
                 loss=loss, **options)


def _check_fraction(value, name):
    s = ranking.check_amount(value, name)
    if isinstance(s, int) and not isinstance(value, float):
        if s in (0, 1):
            return float(s)
        fail(name, "a float in the range [0, 1]", value)
    return s


def _n_masked(p):
    return 0 if p.mask is None else int(p.size - np.count_nonzero(p.mask))


def batch_prune(model, amount, *, rounds=None, weights_per_round=None, score="magnitude", scope="layer",
                data=None, layers=None, seed=None, loss="cross_entropy", **options):
    """Prune ``amount`` in several rounds, re-scoring the weights before each round.

    After a round's weights are removed the network has changed, so data-driven scores
    (gradient, Taylor, OBD, oracle) are computed afresh before the next round: the
    classic mask-based recipe (prune a few, re-score, prune a few more). Give either
    ``rounds`` or ``weights_per_round`` (how many weights each round removes, per layer
    with scope="layer", over all chosen weights with scope="global"). ``amount`` is a
    fraction of the unpruned weights or an int count, counted once at the start. Returns
    the final report. With a data-free score like magnitude the result equals one call
    to :func:`prune` (the scores do not change in between).
    """
    check_model(model)
    check_option("scope", scope, SCOPES)
    params = select_weights(model, layers)
    alive = sum(p.size - _n_masked(p) for p in params.values()) if scope == "global" else None
    if scope == "layer":
        counts = {n: ranking.n_to_prune(amount, p.size - _n_masked(p)) for n, p in params.items()}
        total = max(counts.values()) if counts else 0
    else:
        total = ranking.n_to_prune(amount, alive)
    if (rounds is None) == (weights_per_round is None):
        fail("rounds", "given, or weights_per_round given (exactly one of them)", rounds)
    if rounds is not None:
        check_int("rounds", rounds, 1)
    else:
        check_int("weights_per_round", weights_per_round, 1)
        rounds = max(1, -(-total // weights_per_round))
    if data is not None:  # read a generator once, for every round
        data = _glue.batches(data, options.get("batch_size"), "data")
    before = {n: _n_pruned(p) for n, p in params.items()}
    for i in range(1, rounds + 1):
        if scope == "global":
            step = total * i // rounds - total * (i - 1) // rounds
        else:
            step = {n: c * i // rounds - c * (i - 1) // rounds for n, c in counts.items()}
        prune(model, step, score=score, scope=scope, data=data, layers=list(params), seed=seed,
              loss=loss, **options)
        if seed is not None and not isinstance(seed, np.random.Generator):
            seed = seed + 1  # a fresh random stream per round for the "random" score
    return _report(params, before)
