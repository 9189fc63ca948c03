"""When to prune: one-shot, iterative (prune, fine-tune, repeat) and gradual (AGP).

* **One-shot**: ``prune(model, 0.9)`` then fine-tune once.
* **Iterative** (Han et al. 2015): :func:`iterative_prune` reaches the target in
  ``steps`` rounds of prune + fine-tune; each round removes a little, so the
  network can recover before the next cut.
* **Gradual / AGP** (Zhu & Gupta 2017): the :class:`AGP` callback prunes *during*
  training, following the cubic schedule
  ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3``: fast at first, when there
  are many redundant weights, slowly at the end.
* **Learning-rate rewinding** (Renda et al. 2020): after pruning, retrain with the
  original learning-rate schedule replayed from an early epoch instead of
  fine-tuning at the final, small learning rate (:func:`rewind_learning_rate`).
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import _glue, optim
from .._validate import check_int, check_number, check_option, fail
from ..train import Callback, as_evaluator, as_finetune
from ._targets import check_model, select_weights
from .scores import check_score_options
from .unstructured import prune_to, sparsity

__all__ = ["agp_sparsity", "AGP", "sparsity_schedule", "iterative_prune", "rewind_learning_rate"]


def agp_sparsity(t, final_sparsity, begin_step, end_step, frequency=1, initial_sparsity=0.0):
    """Sparsity of the automated gradual pruner at step ``t`` (Zhu & Gupta 2017, eq. 1).

    ``s_t = s_f + (s_i - s_f) * (1 - (t_k - t0) / (t_end - t0))^3``, where ``t_k`` is
    the last pruning step at or before ``t`` (pruning happens every ``frequency`` steps
    from ``t0 = begin_step`` and at ``t_end = end_step``). Before ``t0`` the sparsity is
    0 (nothing is pruned yet); from ``t_end`` on it is exactly ``s_f``.
    With ``t_end = t0 + n * dt`` this is the paper's schedule.
    """
    s_f = check_number("final_sparsity", final_sparsity, 0, 1)
    s_i = check_number("initial_sparsity", initial_sparsity, 0, s_f)
    t0 = check_int("begin_step", begin_step, 0)
    t_end = check_int("end_step", end_step, t0 + 1)
    dt = check_int("frequency", frequency, 1)
    if t < t0:
        return 0.0
    if t >= t_end:
        return float(s_f)
    t_k = t0 + ((t - t0) // dt) * dt
    return float(s_f + (s_i - s_f) * (1.0 - (t_k - t0) / (t_end - t0)) ** 3)


class AGP(Callback):
    """Automated gradual pruning as a training callback (Zhu & Gupta 2017).

    ``fit(model, loader, opt, epochs, callbacks=[AGP(0.9)])`` prunes after batches
    ``begin_step, begin_step + frequency, ...`` and at ``end_step`` (default: the
    last batch of training) to the sparsity :func:`agp_sparsity` prescribes, so the
    chosen weights end at exactly ``final_sparsity`` (``round(s_f * n)`` weights per
    layer, or over all chosen weights with ``scope="global"``). Steps count batches
    (``state.step``). ``history`` lists ``(step, target, reached)``.
    ``score``, ``scope``, ``layers``, ``data`` (any data form), ``seed``, ``loss`` and
    the score's options are passed to :func:`prune_to`.
    """

    def __init__(self, final_sparsity, *, begin_step=0, end_step=None, frequency=1, initial_sparsity=0.0,
                 score="magnitude", scope="layer", layers=None, data=None, seed=None, loss="cross_entropy",
                 **options):
        self.final_sparsity = check_number("final_sparsity", final_sparsity, 0, 1)
        self.initial_sparsity = check_number("initial_sparsity", initial_sparsity, 0, final_sparsity)
        self.begin_step = check_int("begin_step", begin_step, 0)
        self.end_step = None if end_step is None else check_int("end_step", end_step, begin_step + 1)
        self.frequency = check_int("frequency", frequency, 1)
        check_score_options(score, options)   # now, not at the first pruning step during training
        if data is not None:
            data = _glue.batches(data, options.get("batch_size"), "data")
        self.kwargs = dict(score=score, scope=check_option("scope", scope, ("layer", "global")),
                           layers=layers, data=data, seed=seed, loss=loss, **options)
        self.history = []

    def target(self, t):
        """Scheduled sparsity after ``t`` batches."""
        return agp_sparsity(t, self.final_sparsity, self.begin_step, self._end, self.frequency,
                            self.initial_sparsity)

    def _prune(self, model, t):
        s = self.target(t)
        prune_to(model, s, **self.kwargs)
        reached = sparsity(model, self.kwargs["layers"]).total
        self.history.append((t, s, reached))

    def on_train_begin(self, state):
        total = state.epochs * state.steps_per_epoch
        self._end = self.end_step if self.end_step is not None else total
        if self._end <= self.begin_step:
            fail("end_step", f"greater than begin_step={self.begin_step} (training has {total} batches)",
                 self._end)
        if self._end > total:
            warnings.warn(f"AGP: end_step={self._end} is after the last batch ({total}); "
                          f"the final sparsity {self.final_sparsity} will not be reached.", stacklevel=2)
        self.history = []
        if self.begin_step == 0:
            self._prune(state.model, 0)

    def on_batch_end(self, state):
        t = state.step
        if self.begin_step <= t <= self._end and ((t - self.begin_step) % self.frequency == 0 or t == self._end):
            self._prune(state.model, t)


def sparsity_schedule(target, steps, *, kind="geometric"):
    """The sparsity after each of ``steps`` pruning rounds, ending exactly at ``target``.

    * "geometric": every round removes the same fraction of what is left,
      ``s_i = 1 - (1 - target)^(i / steps)`` (Han et al. 2015; Frankle & Carbin 2019);
    * "linear": ``s_i = target * i / steps``;
    * "cubic": the AGP curve ``s_i = target * (1 - (1 - i / steps)^3)``.
    """
    target = check_number("target", target, 0, 1)
    steps = check_int("steps", steps, 1)
    check_option("kind", kind, ("geometric", "linear", "cubic"))
    i = np.arange(1, steps + 1) / steps
    if kind == "geometric":
        s = 1 - (1 - target) ** i
    elif kind == "linear":
        s = target * i
    else:
        s = target * (1 - (1 - i) ** 3)
    s[-1] = target
    return [float(v) for v in s]


def rewind_learning_rate(scheduler, *, epoch=0):
    """Learning-rate rewinding (Renda et al. 2020): replay the schedule from ``epoch``.

    After pruning, keep the trained weights but set the learning rate back to what
    the schedule gave at ``epoch`` (usually 0, the start) and let it decay again.
    Accepts a ``prunekit.optim`` scheduler; returns it.
    """
    if not isinstance(scheduler, optim.LRScheduler):
        fail("scheduler", "a prunekit.optim learning-rate scheduler (StepLR, CosineAnnealingLR, ...)",
             type(scheduler).__name__, TypeError)
    scheduler.rewind(epoch)
    return scheduler


def iterative_prune(model, target, steps, finetune=None, *, score="magnitude", scope="layer", data=None,
                    layers=None, schedule="geometric", rewind_epoch=None, evaluate=None, seed=None,
                    loss="cross_entropy", **options):
    """Iterative pruning: ``steps`` rounds of (prune to the next sparsity, fine-tune) up to ``target``.

    ``finetune`` is a :class:`prunekit.train.FineTune` (data, an optimizer or a factory
    ``params -> Optimizer``, epochs, optionally a scheduler and callbacks) or a callable
    ``finetune(model, step)``. The sparsity after round i follows :func:`sparsity_schedule`
    (``schedule``), and ends exactly at ``target``. With ``rewind_epoch`` (and a FineTune
    holding a scheduler object) the learning rate is rewound before each fine-tune
    (Renda et al. 2020). ``evaluate`` (a callable model -> metrics, or any data form for
    :func:`prunekit.train.evaluate`) is run after each round. ``data`` feeds the
    data-driven scores. Returns a list of dicts per round:
    ``step, sparsity, report, finetune (its result), metrics``.
    """
    check_model(model)
    targets = sparsity_schedule(target, steps, kind=schedule)
    run = as_finetune(finetune)
    if rewind_epoch is not None:
        sched = getattr(run, "scheduler", None)
        if not isinstance(sched, optim.LRScheduler):
            fail("rewind_epoch", "None unless finetune is a FineTune with a scheduler object to rewind",
                 rewind_epoch)
        check_int("rewind_epoch", rewind_epoch, 0)
    evaluator = as_evaluator(evaluate, loss)
    select_weights(model, layers)  # validate early
    if data is not None:           # read a generator once, for every round
        data = _glue.batches(data, options.get("batch_size"), "data")
    results = []
    for i, s in enumerate(targets, start=1):
        report = prune_to(model, s, score=score, scope=scope, data=data, layers=layers, seed=seed,
                          loss=loss, **options)
        if rewind_epoch is not None:
            rewind_learning_rate(run.scheduler, epoch=rewind_epoch)
        out = run(model, i) if run is not None else None
        results.append({"step": i, "sparsity": s, "report": report, "finetune": out,
                        "metrics": evaluator(model) if evaluator else None})
    return results
