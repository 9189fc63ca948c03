"""Importance scores: a number per weight saying how much the weight matters.

Pruning removes the weights with the *smallest* scores. A score is a function
``fn(ctx) -> {name: array}`` that receives a :class:`ScoreContext` (the weights,
the model, the data, the loss, a random generator) and returns one array per
weight, of the weight's shape. The built-in scores live in a registry; add your own::

    @pruning.register_score("cubic")
    def cubic(ctx):
        return {name: np.abs(w) ** 3 for name, w in ctx.weights.items()}

    pruning.prune(model, 0.5, score="cubic")

Built-in scores (``ΔL_j`` is the change of the loss on ``data`` when weight
``w_j`` is set to zero; ``g`` the gradient of the loss):

============  ===================================================  ===========================
name          score of weight j                                    from
============  ===================================================  ===========================
magnitude     ``|w_j|``                                            Han et al. 2015 (L1)
l2            ``|w_j|``; groups are reduced with sqrt(sum s^2)     Li et al. 2017 (groups)
random        uniform random numbers (seeded) -- the baseline
gradient      ``mean_b |g_j|`` over the batches of ``data``
taylor        ``|w_j * g_j|`` = first-order estimate of |ΔL_j|     Molchanov et al. 2017
obd           ``0.5 * w_j^2 * H_jj``, H_jj ~ Fisher mean of g^2    LeCun et al. 1990 (OBD)
snip          ``|w_j g_j| / sum_k |w_k g_k|``                      Lee et al. 2019 (SNIP)
movement      ``-w_j * sum_b g_j``  (or a :class:`MovementTracker`)  Sanh et al. 2020
activation    ``mean |a_i|``, a_i the output unit w_j feeds        Molchanov et al. 2017
oracle        ``ΔL_j`` exactly (one loss evaluation per weight)    brute force
oracle_abs    ``|ΔL_j|`` (what the cheap scores estimate)          Molchanov et al. 2017
============  ===================================================  ===========================

Gradients are computed with the model in ``eval()`` mode (no dropout, batch norm
uses its running statistics); the training flags and any ``.grad`` the
parameters held are restored afterwards.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable, NamedTuple

import numpy as np

from .. import _glue
from .. import nn
from ..tensor import Tensor, no_grad
from .._validate import check_int, check_option, fail
from ..train import Callback

__all__ = [
    "ScoreSpec", "ScoreContext", "register_score", "get_score", "available_scores", "compute_scores",
    "reduce_groups", "MovementTracker", "DATA_FREE_SCORES",
    "spearman", "grade_scores",
]

class ScoreSpec(NamedTuple):
    """A registered score: its function and whether it needs ``data``."""

    name: str
    fn: Callable
    needs_data: bool
    group_reduce: str  # how element scores combine over a group: "sum" (L1) or "l2"
    doc: str
    options: tuple = ()  # extra keyword options the score reads with ctx.option(...)


# options every score may receive (batch_size: how array data is cut into batches)
COMMON_OPTIONS = ("batch_size",)


_REGISTRY: "OrderedDict[str, ScoreSpec]" = OrderedDict()


def register_score(name, fn=None, *, needs_data=False, group_reduce="sum", options=(), overwrite=False):
    """Add a score ``fn(ctx) -> {name: array}`` to the registry (usable as a decorator).

    ``needs_data=True`` makes :func:`prune` refuse to run it without ``data``.
    ``group_reduce`` ("sum" or "l2") says how element scores combine over a group
    of weights in structured pruning. ``options`` names the extra keyword arguments
    it reads with ``ctx.option(key, default)`` (others are refused as typos).
    Re-registering a name needs ``overwrite=True``.
    """
    if not isinstance(name, str) or not name:
        fail("name", "a non-empty string", name, TypeError)
    check_option("group_reduce", group_reduce, ("sum", "l2"))

    def add(f):
        if not callable(f):
            fail("fn", "a callable fn(ctx) -> {name: array}", f, TypeError)
        if name in _REGISTRY and not overwrite:
            fail("name", f"a new score name (pass overwrite=True to replace {name!r})", name)
        doc = (f.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = ScoreSpec(name, f, bool(needs_data), group_reduce, doc, tuple(options))
        return f

    return add if fn is None else add(fn)


def available_scores():
    """Names of the registered scores."""
    return list(_REGISTRY)


def get_score(score):
    """Turn a name, a :class:`ScoreSpec` or a callable into a :class:`ScoreSpec`."""
    if isinstance(score, ScoreSpec):
        return score
    if isinstance(score, str):
        if score not in _REGISTRY:
            check_option("score", score, tuple(_REGISTRY))
        return _REGISTRY[score]
    if callable(score):
        name = getattr(score, "__name__", type(score).__name__)
        return ScoreSpec(name, score, bool(getattr(score, "needs_data", False)), "sum", "", None)
    fail("score", f"a score name (one of {available_scores()}), a callable fn(ctx) or a dict of arrays",
         type(score).__name__, TypeError)


@contextlib.contextmanager
def _scoring(model, params):
    """Eval mode and fresh gradients inside; training flags and old grads restored after."""
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    model.eval()
    try:
        yield
    finally:
        for m, t in flags:
            object.__setattr__(m, "training", t)
        for p, g in grads:
            p.grad = g


# ------------------------------------------------------------------ context
class ScoreContext:
    """Everything a score function may use; gradient statistics are computed once and cached.

    Attributes: ``model``, ``params`` (name -> Parameter), ``weights`` (name -> ndarray,
    the live ``param.data``), ``masks`` (name -> mask or None), ``data`` (any data form,
    see :func:`prunekit._glue.batches`), ``loss`` (a function ``loss(output, y) -> Tensor``),
    ``rng`` (numpy Generator), ``options`` (extra keyword arguments given to :func:`prune`),
    ``score_name``. Methods give what scores are made of: :meth:`batches`,
    :meth:`mean_gradient`, :meth:`mean_abs_gradient`, :meth:`fisher_diagonal`,
    :meth:`loss_value` and :meth:`activations` (the layers' outputs, recorded with
    forward hooks).
    """

    def __init__(self, model, params, data=None, loss="cross_entropy", seed=None, options=None,
                 score_name="score"):
        self.model = model
        self.params = OrderedDict(params)
        self.data = data
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "loss")
        self.loss = _glue.get_loss(loss, "loss")
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.options = dict(options or {})
        self.score_name = score_name
        self._cache = {}

    @property
    def weights(self):
        return OrderedDict((n, p.data) for n, p in self.params.items())

    @property
    def masks(self):
        return OrderedDict((n, p.mask) for n, p in self.params.items())

    def option(self, key, default):
        return self.options.get(key, default)

    def require_data(self):
        if self.data is None:
            fail("data", f"{_glue.FORMS} for score {self.score_name!r} (it needs gradients or losses on data)",
                 None)

    def batches(self):
        """Iterate over the ``(x, y)`` batches of ``data`` (arrays: ``batch_size`` samples, an option)."""
        self.require_data()
        yield from _glue.batches(self.data, self.option("batch_size", None), "data")

    def activations(self):
        """``{weight name: output of the layer that owns it}`` over all of ``data`` (cached).

        Recorded with forward hooks (:meth:`prunekit.nn.Module.register_forward_hook`) in
        evaluation mode without gradients; the arrays are the layers' outputs for every
        sample, concatenated batch after batch (e.g. shape (N, out_features) for a Linear,
        (N, C, H, W) for a Conv2d). The hooks are removed afterwards.
        """
        if "activations" not in self._cache:
            owners = {}
            for mname, m in self.model.named_modules():
                for pname, p in m._parameters.items():
                    for n, q in self.params.items():
                        if p is q and n not in owners:
                            owners[n] = m
            missing = [n for n in self.params if n not in owners]
            if missing:
                fail("layers", "weights owned by a module of the model (to record its outputs)", missing)
            recorded = {n: [] for n in self.params}
            handles = []
            for n, m in owners.items():
                def record(module, inputs, output, n=n):
                    recorded[n].append(np.array(output.data, copy=True))
                handles.append(m.register_forward_hook(record))
            try:
                with no_grad(), _scoring(self.model, self.params):
                    for x, _ in self.batches():
                        self.model(x)
            finally:
                for h in handles:
                    h.remove()
            if any(not v for v in recorded.values()):
                fail("data", "at least one sample that reaches every chosen layer", "an empty dataset")
            self._cache["activations"] = OrderedDict((n, np.concatenate(v)) for n, v in recorded.items())
        return self._cache["activations"]

    # ---- losses and gradients
    def batch_loss(self, x, y):
        """The loss Tensor of one batch (builds the graph)."""
        return self.loss(self.model(x), y)

    def loss_value(self, batches=None):
        """Mean loss over all samples of ``data`` (float), with gradients off."""
        total, n = 0.0, 0
        with no_grad(), _scoring(self.model, self.params):
            for x, y in (batches if batches is not None else self.batches()):
                total += float(self.batch_loss(x, y).item()) * len(x)
                n += len(x)
        return total / max(n, 1)

    def batch_gradients(self):
        """Yield ``(batch_size, {name: gradient of the batch's mean loss})`` for each batch."""
        with _scoring(self.model, self.params):
            for x, y in self.batches():
                for p in self.model.parameters():
                    p.grad = None
                self.batch_loss(x, y).backward()
                yield len(x), {n: (np.zeros_like(p.data) if p.grad is None else np.array(p.grad, np.float64))
                               for n, p in self.params.items()}

    def _gradient_stats(self):
        if "mean" not in self._cache:
            mean = {n: 0.0 for n in self.params}
            mean_abs = {n: 0.0 for n in self.params}
            summed = {n: 0.0 for n in self.params}
            total = 0
            for b, grads in self.batch_gradients():
                for n, g in grads.items():
                    mean[n] = mean[n] + b * g
                    mean_abs[n] = mean_abs[n] + b * np.abs(g)
                    summed[n] = summed[n] + g
                total += b
            if total == 0:
                fail("data", "at least one sample", "an empty dataset")
            self._cache["mean"] = {n: g / total for n, g in mean.items()}
            self._cache["mean_abs"] = {n: g / total for n, g in mean_abs.items()}
            self._cache["sum"] = summed
        return self._cache

    def mean_gradient(self):
        """Gradient of the mean loss over all of ``data``: sum_b |b| g_b / N."""
        return self._gradient_stats()["mean"]

    def mean_abs_gradient(self):
        """Average over batches (weighted by batch size) of the absolute batch gradient |g_b|."""
        return self._gradient_stats()["mean_abs"]

    def fisher_diagonal(self):
        """Empirical Fisher diagonal: mean over samples of (d loss_i / d w)^2.

        For a loss that is a mean of per-sample log-likelihoods this is the
        Gauss-Newton / Fisher estimate of the Hessian diagonal near a minimum.
        Uses one backward pass per sample, on at most ``max_samples`` samples
        (an option of :func:`prune`, default 256).
        """
        if "fisher" not in self._cache:
            limit = check_int("max_samples", self.option("max_samples", 256), 1)
            acc = {n: 0.0 for n in self.params}
            count = 0
            with _scoring(self.model, self.params):
                for x, y in self.batches():
                    for i in range(len(x)):
                        if count >= limit:
                            break
                        for p in self.model.parameters():
                            p.grad = None
                        self.batch_loss(x[i:i + 1], y[i:i + 1]).backward()
                        for n, p in self.params.items():
                            if p.grad is not None:
                                acc[n] = acc[n] + np.asarray(p.grad, np.float64) ** 2
                        count += 1
                    if count >= limit:
                        break
            if count == 0:
                fail("data", "at least one sample", "an empty dataset")
            self._cache["fisher"] = {n: (a / count if not np.isscalar(a) else np.zeros(self.params[n].shape))
                                     for n, a in acc.items()}
        return self._cache["fisher"]


def reduce_groups(scores, axes, *, how="sum"):
    """Combine element scores over ``axes`` (e.g. a neuron's row): sum (L1) or sqrt(sum s^2) (L2)."""
    check_option("how", how, ("sum", "l2"))
    scores = np.asarray(scores, dtype=np.float64)
    if how == "sum":
        return np.abs(scores).sum(axis=axes)
    return np.sqrt((scores ** 2).sum(axis=axes))


# ------------------------------------------------------------------ built-in scores
@register_score("magnitude")
def magnitude(ctx):
    """|w|: small weights matter least (Han et al. 2015)."""
    return {n: np.abs(w) for n, w in ctx.weights.items()}


@register_score("l2", group_reduce="l2")
def l2(ctx):
    """|w| per weight; a group (neuron, channel) is scored by its L2 norm sqrt(sum w^2) (Li et al. 2017)."""
    return {n: np.abs(w) for n, w in ctx.weights.items()}


@register_score("random")
def random(ctx):
    """Uniform random numbers from ``seed``: the baseline every score must beat."""
    return {n: ctx.rng.random(w.shape) for n, w in ctx.weights.items()}


@register_score("gradient", needs_data=True)
def gradient(ctx):
    """mean over batches of |dL/dw|: how strongly the loss reacts to the weight."""
    return ctx.mean_abs_gradient()


@register_score("taylor", needs_data=True)
def taylor(ctx):
    """|w * g|: first-order Taylor estimate of the loss change when w is removed (Molchanov et al. 2017).

    Removing w_j means dw_j = -w_j, so dL ~ g_j * (-w_j); g is the gradient of the
    mean loss over all of ``data``.
    """
    g = ctx.mean_gradient()
    return {n: np.abs(w * g[n]) for n, w in ctx.weights.items()}


@register_score("obd", needs_data=True, options=("max_samples",))
def obd(ctx):
    """0.5 * w^2 * H_jj: second-order saliency of Optimal Brain Damage (LeCun et al. 1990).

    At a minimum the gradient term vanishes and dL ~ 0.5 * H_jj * w_j^2; the Hessian
    diagonal is estimated by the empirical Fisher, mean_i (d loss_i / d w_j)^2.
    """
    h = ctx.fisher_diagonal()
    return {n: 0.5 * w.astype(np.float64) ** 2 * h[n] for n, w in ctx.weights.items()}


@register_score("snip", needs_data=True)
def snip(ctx):
    """|w g| / sum |w g|: connection sensitivity at initialisation (Lee et al. 2019).

    SNIP multiplies each weight by a gate c_j = 1; dL/dc_j = w_j g_j. The scores are
    normalised to sum to 1 over all scored weights (that does not change the ranking).
    """
    g = ctx.mean_gradient()
    s = {n: np.abs(w * g[n]) for n, w in ctx.weights.items()}
    total = sum(float(v.sum()) for v in s.values())
    return {n: v / total if total > 0 else v for n, v in s.items()}  # all zero: nothing to normalise


@register_score("movement", needs_data=True)
def movement(ctx):
    """-w * sum_b g_b: weights moving away from zero matter (Sanh et al. 2020).

    Movement pruning accumulates S_j = -sum_t g_j(t) w_j(t) during fine-tuning; use a
    :class:`MovementTracker` callback for that (``score=tracker``). Without one, this
    accumulates over the batches of ``data`` at the current weights.
    """
    g_sum = ctx._gradient_stats()["sum"]
    return {n: -w * g_sum[n] for n, w in ctx.weights.items()}


@register_score("activation", needs_data=True)
def activation(ctx):
    """mean |a_i| of output unit i over ``data``, given to every weight of unit i (Molchanov et al. 2017).

    ``a`` is the layer's own output (before any nonlinearity that follows it), recorded
    with a forward hook: for a Linear, unit i is output column i and weight row
    ``W[i, :]``; for a Conv2d, unit i is output channel i (averaged over samples and
    positions) and filter ``W[i]``. A unit whose output stays near zero passes little
    on. Molchanov et al. 2017 use the mean activation as a neuron criterion; Hu et al.
    2016 (APoZ) count the zeros after the ReLU instead. All weights of a unit tie, so
    element-wise pruning with this score removes whole units, lowest index first.
    """
    acts = ctx.activations()
    out = OrderedDict()
    for n, w in ctx.weights.items():
        a = np.abs(np.asarray(acts[n], dtype=np.float64))
        if a.ndim < 2 or a.shape[1] != w.shape[0]:
            fail("layers", f"layers whose output has one channel per row of the weight for score 'activation' "
                 f"({n!r}: weight {w.shape}, output {a.shape})", n)
        unit = a.mean(axis=tuple(i for i in range(a.ndim) if i != 1))
        out[n] = np.broadcast_to(unit.reshape(-1, *([1] * (w.ndim - 1))), w.shape).copy()
    return out


@register_score("oracle", needs_data=True, options=("max_weights",))
def oracle(ctx):
    """ΔL_j = L(w with w_j = 0) - L(w) on ``data``, exactly, one weight at a time.

    The loss is evaluated once per unpruned weight, in float64, so this is only for
    small layers (at most ``max_weights`` unpruned weights, option, default 10000).
    It is the ground truth the cheap scores are graded against. Already-pruned
    weights score 0. A negative ΔL means removing the weight *lowers* the loss.
    For a Linear layer inside a Sequential only the layers after it are re-run:
    zeroing W_ij changes just column i of that layer's output, by -W_ij x_j.
    """
    limit = check_int("max_weights", ctx.option("max_weights", 10_000), 1)
    n_alive = sum(int(p.size if p.mask is None else (p.mask != 0).sum()) for p in ctx.params.values())
    if n_alive > limit:
        fail("score", f"a cheaper score than 'oracle' for more than max_weights={limit} weights "
             "(it evaluates the loss once per weight; pass max_weights=... to raise the limit)",
             f"'oracle' on {n_alive} weights")
    batches = list(ctx.batches())
    originals = [(p, p.data) for p in ctx.model.parameters()]
    try:
        for p, d in originals:          # float64 so tiny loss changes are not lost in rounding
            p.data = d.astype(np.float64)
        batches64 = [(np.asarray(x, np.float64) if np.asarray(x).dtype.kind == "f" else x, y)
                     for x, y in batches]
        out = OrderedDict()
        with no_grad(), _scoring(ctx.model, ctx.params):
            for n, p in ctx.params.items():
                out[n] = _oracle_one(ctx, p, batches64)
    finally:
        for p, d in originals:
            p.data = d
    return out


@register_score("oracle_abs", needs_data=True, options=("max_weights",))
def oracle_abs(ctx):
    """|ΔL_j|: how much the loss moves, either way, when w_j alone is removed (Molchanov et al. 2017's Oracle-abs).

    The cheap scores (taylor, obd, gradient, magnitude) estimate this magnitude, so
    it is the reference they are graded against; ``oracle`` keeps the sign.
    """
    return {n: np.abs(v) for n, v in oracle(ctx).items()}


def _alive(p):
    return np.ones(p.size, bool) if p.mask is None else p.mask.reshape(-1) != 0


def _oracle_one(ctx, p, batches):
    """ΔL for every unpruned entry of ``p`` (fast path for a Linear in a Sequential)."""
    s = np.zeros(p.shape)
    sflat, flat = s.reshape(-1), p.data.reshape(-1)
    model = ctx.model
    idx = None
    if isinstance(model, nn.Sequential):
        idx = next((i for i, m in enumerate(model) if isinstance(m, nn.Linear) and m.weight is p), None)
    if idx is None:                     # generic: full forward per weight
        return _oracle_generic(ctx, p, batches, s)
    head, layer, tail = model[:idx], model[idx], model[idx + 1:]
    x_in = np.concatenate([head(x).data for x, _ in batches])
    y = np.concatenate([np.asarray(yb) for _, yb in batches])
    z = layer(x_in).data
    x_in = x_in.reshape(-1, x_in.shape[-1]) if x_in.ndim > 2 else x_in

    def loss_of(zz):
        return float(ctx.loss(tail(zz) if len(tail) else Tensor(zz), y).item())

    if z.ndim != 2:                     # (unusual) Linear on >2-D input: generic path
        return _oracle_generic(ctx, p, batches, s)
    base = loss_of(z)
    out_f = p.shape[1]
    for j in np.flatnonzero(_alive(p)):
        w = flat[j]
        if w == 0:
            continue
        i, k = divmod(int(j), out_f)
        col = z[:, i].copy()
        z[:, i] -= w * x_in[:, k]
        sflat[j] = loss_of(z) - base
        z[:, i] = col
    return s


def _oracle_generic(ctx, p, batches, s):
    sflat, flat = s.reshape(-1), p.data.reshape(-1)
    base = ctx.loss_value(batches)
    for j in np.flatnonzero(_alive(p)):
        old = flat[j]
        if old != 0:
            flat[j] = 0.0
            sflat[j] = ctx.loss_value(batches) - base
            flat[j] = old
    return s


DATA_FREE_SCORES = ("magnitude", "l2", "random")  # every other built-in score needs data


# ------------------------------------------------------------------ movement tracker
class MovementTracker(Callback):
    """Training callback that accumulates movement scores S = -sum_t g(t) * w(t) (Sanh et al. 2020).

    Attach it to :func:`prunekit.train.fit`, then prune with ``score=tracker``.
    ``w(t)`` is the weight *before* step t (the one the gradient was computed at).
    """

    needs_data = False

    def __init__(self, layers=None):
        self.layers = layers
        self.scores = None
        self._before = None
        self.__name__ = "movement"

    def on_train_begin(self, state):
        from ._targets import select_weights
        self.params = select_weights(state.model, self.layers)
        if self.scores is None:
            self.scores = OrderedDict((n, np.zeros(p.shape)) for n, p in self.params.items())
        self._before = {n: p.data.copy() for n, p in self.params.items()}

    def on_batch_end(self, state):
        for n, p in self.params.items():
            if p.grad is not None:
                g = p.grad if p.mask is None else p.grad * p.mask
                self.scores[n] -= g * self._before[n]
            self._before[n][...] = p.data

    def reset(self):
        """Forget the accumulated scores."""
        self.scores = None

    def __call__(self, ctx):
        if self.scores is None:
            fail("score", "a MovementTracker that was used in training (fit(..., callbacks=[tracker]))",
                 "a tracker with no accumulated scores")
        missing = [n for n in ctx.params if n not in self.scores]
        if missing:
            fail("layers", f"layers the MovementTracker followed ({list(self.scores)})", missing)
        return {n: self.scores[n] for n in ctx.params}


# ------------------------------------------------------------------ public entry
def compute_scores(model, score="magnitude", *, layers=None, data=None, loss="cross_entropy", seed=None,
                   **options):
    """Scores of the chosen weights as a dict ``"<layer>.weight" -> array`` (for plots and grading)."""
    from ._targets import select_weights
    params = select_weights(model, layers)
    return _run_score(model, params, score, data, loss, seed, options)


def check_score_options(score, options):
    """Refuse keyword options the score does not declare (a typo must not pass silently); return its spec.

    Every score takes ``batch_size`` (samples per batch of array data); a dict of
    precomputed scores takes none; an unregistered callable may read anything.
    """
    if isinstance(score, dict):
        if options:
            key = sorted(options)[0]
            fail(key, "a keyword a score function reads (precomputed scores take none)", options[key], TypeError)
        return None
    spec = get_score(score)
    if spec.options is not None:
        allowed = COMMON_OPTIONS + spec.options
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            fail(unknown[0], f"a keyword score {spec.name!r} knows (it accepts: {', '.join(allowed)})",
                 options[unknown[0]], TypeError)
    return spec


def _run_score(model, params, score, data, loss, seed, options):
    """Evaluate ``score`` (name, callable or dict of arrays) and check what it returned."""
    if isinstance(score, dict):
        name, scores = "dict", score
    else:
        spec = check_score_options(score, options)
        name = spec.name
        _glue.get_loss(loss, "loss")
        if spec.needs_data and data is None:
            fail("data", f"{_glue.FORMS} for score {name!r} (it needs gradients, losses or activations "
                 f"on data; data-free scores: {list(DATA_FREE_SCORES)})", None)
        if data is not None:
            data = _glue.batches(data, options.get("batch_size"), "data")  # a wrong form fails here
        ctx = ScoreContext(model, params, data, loss, seed, options, name)
        scores = spec.fn(ctx)
    if not isinstance(scores, dict):
        fail("score", "a function returning a dict {name: array}", type(scores).__name__, TypeError)
    out = OrderedDict()
    for n, p in params.items():
        if n not in scores:
            fail("score", f"scores for every chosen weight (missing {n!r})", sorted(scores))
        s = np.asarray(scores[n])
        if s.shape != p.shape:
            fail("score", f"an array of shape {p.shape} for {n!r}", f"shape {s.shape}")
        if s.dtype.kind not in "fiub":
            fail("score", f"a numeric array for {n!r}", str(s.dtype), TypeError)
        if np.isnan(s).any():
            fail("score", f"finite values for {n!r} (score {name!r})", "NaN")
        out[n] = s
    return out


# ------------------------------------------------------------------ grading scores
def _flat(scores, masks=None):
    if isinstance(scores, dict):
        keys = list(scores)
        parts = []
        for k in keys:
            v = np.asarray(scores[k], dtype=np.float64).reshape(-1)
            m = None if masks is None else masks.get(k)
            parts.append(v if m is None else v[np.asarray(m).reshape(-1) != 0])
        return np.concatenate(parts) if parts else np.zeros(0)
    v = np.asarray(scores, dtype=np.float64).reshape(-1)
    return v if masks is None else v[np.asarray(masks).reshape(-1) != 0]


def _ranks(v):
    """Ranks 1..n, ties get the average of the ranks they span."""
    order = np.argsort(v, kind="stable")
    sv = v[order]
    ranks = np.empty(len(v))
    start = 0
    while start < len(v):
        end = start
        while end + 1 < len(v) and sv[end + 1] == sv[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a, b, *, masks=None):
    """Spearman rank correlation of two scores (arrays, or dicts with the same keys).

    rho = Pearson correlation of the ranks (ties share their average rank); 1 means
    the two scores order the weights identically. ``masks`` (dict or array) restricts
    the comparison to unpruned weights.
    """
    if isinstance(a, dict) and isinstance(b, dict) and list(a) != list(b):
        fail("b", f"a dict with the same keys as a ({list(a)})", list(b))
    x, y = _flat(a, masks), _flat(b, masks)
    if x.shape != y.shape:
        fail("b", f"scores with as many entries as a ({x.size})", y.size)
    if x.size < 2:
        fail("a", "scores with at least 2 entries", x.size)
    rx, ry = _ranks(x), _ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def grade_scores(model, data, *, scores=("magnitude", "gradient", "taylor", "obd", "random"),
                 reference="oracle_abs", layers=None, loss="cross_entropy", seed=0, **options):
    """Spearman correlation of each score with ``reference`` (default |ΔL|, the exact loss change).

    Returns ``{score name: rho}`` over the unpruned weights of the chosen layers.
    The cheap scores estimate |ΔL| (Molchanov et al. 2017 grade against "Oracle-abs");
    pass ``reference="oracle"`` to compare with the signed change instead.
    """
    from ._targets import select_weights
    params = select_weights(model, layers)
    every = [reference, *scores]

    def accepts(sc):  # None: an unregistered callable, which may read any option
        return None if isinstance(sc, dict) else (
            None if get_score(sc).options is None else set(COMMON_OPTIONS + get_score(sc).options))

    # An option goes only to the scores that read it (e.g. max_weights to the oracle);
    # one that no score reads is still refused, so a typo does not pass silently.
    known = set().union(*(a for a in map(accepts, every) if a is not None))
    if all(accepts(sc) is not None for sc in every):
        for key in sorted(set(options) - known):
            fail(key, f"an option one of the graded scores reads ({', '.join(sorted(known))})", options[key], TypeError)

    def own(sc):
        a = accepts(sc)
        return dict(options) if a is None else {k: v for k, v in options.items() if k in a}

    data = _glue.batches(data, options.get("batch_size"), "data")  # a generator is read once, for every score
    ref = _run_score(model, params, reference, data, loss, seed, own(reference))
    masks = {n: p.mask for n, p in params.items() if p.mask is not None}
    out = OrderedDict()
    for sc in scores:
        got = _run_score(model, params, sc, data, loss, seed, own(sc))
        name = "dict" if isinstance(sc, dict) else get_score(sc).name
        out[name] = spearman(got, ref, masks=masks or None)
    return out
