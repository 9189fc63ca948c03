"""Lottery tickets: iterative magnitude pruning with weight rewinding.

Frankle & Carbin (2019) found that a dense network contains a sparse subnetwork
(a "winning ticket") that, reset to its *initial* weights and trained alone,
matches the dense accuracy. The recipe:

1. remember the weights theta_k after k training steps (k = 0: the initialisation;
   Frankle et al. 2020 showed that a small k > 0 is needed for deeper networks);
2. train to the end;
3. prune ``amount`` of the remaining weights with the smallest magnitude;
4. rewind the surviving weights to theta_k and go back to 2.

Controls that show the ticket is special: the same mask with *random* weights
("reinit", each parameter's theta_0 values shuffled, i.e. a fresh draw from the
initial distribution), and a *random* mask of the same per-layer sparsity with
the rewound weights ("random_mask").
"""
from __future__ import annotations

import numpy as np

from .._validate import check_int, check_number, check_option, fail
from ..train import Callback, FineTune, as_evaluator, as_finetune
from ._targets import check_model, select_weights
from .unstructured import prune, prune_to, sparsity

__all__ = ["lottery_ticket", "LotteryResult", "WeightSnapshot", "rewind_weights"]

CONTROLS = ("reinit", "random_mask")


def _state(model):
    """Copies of every parameter's values and every buffer (masks are not included)."""
    values = {n: p.data.copy() for n, p in model.named_parameters()}
    values.update({"buffer:" + n: np.array(b, copy=True) for n, b in model.named_buffers()})
    return values


def rewind_weights(model, state):
    """Set every parameter (and buffer) back to ``state`` in place, keeping the masks: w = w_k * mask."""
    for n, p in model.named_parameters():
        p.data[...] = state[n]
        if p.mask is not None:
            p.data *= p.mask
        p.grad = None
    for n, b in model.named_buffers():
        b[...] = state["buffer:" + n]
    return model


class WeightSnapshot(Callback):
    """Training callback that copies the weights after batch ``step`` (``step=0``: before training)."""

    def __init__(self, step=0):
        self.step = check_int("step", step, 0)
        self.state = None

    def on_train_begin(self, state):
        if self.step == 0:
            self.state = _state(state.model)

    def on_batch_end(self, state):
        if state.step == self.step:
            self.state = _state(state.model)


class LotteryResult:
    """Outcome of :func:`lottery_ticket`: metrics per round and of the controls.

    ``rounds``: list of dicts ``round, sparsity, metrics``; ``controls``: dict name ->
    ``{"sparsity", "metrics"}``; ``masks``: the final ticket's masks; ``rewind_state``: theta_k.
    """

    def __init__(self, rounds, controls, masks, rewind_state, metric):
        self.rounds, self.controls, self.masks = rounds, controls, masks
        self.rewind_state = rewind_state
        self.metric = metric

    def _value(self, metrics):
        if isinstance(metrics, dict):
            return metrics.get(self.metric, float("nan"))
        return float(metrics)

    def __repr__(self):
        lines = [f"{'round':<14} {'sparsity':>9} {self.metric:>10}"]
        for r in self.rounds:
            lines.append(f"{r['round']:<14} {r['sparsity']:>8.1%} {self._value(r['metrics']):>10.4f}")
        for name, c in self.controls.items():
            lines.append(f"{'ctrl ' + name:<14} {c['sparsity']:>8.1%} {self._value(c['metrics']):>10.4f}")
        return "\n".join(lines)

    def plot(self, ax=None):
        """Metric against sparsity for the tickets (and the controls as points); returns the axes."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(5, 3.5))[1]
        xs = [100 * r["sparsity"] for r in self.rounds]
        ax.plot(xs, [self._value(r["metrics"]) for r in self.rounds], marker="o", label="winning ticket")
        for name, c in self.controls.items():
            ax.scatter([100 * c["sparsity"]], [self._value(c["metrics"])], marker="x", s=60, label=name)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel(self.metric)
        ax.legend()
        return ax


def lottery_ticket(model, train, rounds, *, amount=0.2, rewind_step=0, scope="layer", layers=None,
                   evaluate=None, controls=CONTROLS, metric="accuracy", seed=None, loss="cross_entropy"):
    """Find a winning ticket by iterative magnitude pruning with rewinding (Frankle & Carbin 2019).

    ``train``: a :class:`prunekit.train.FineTune`, e.g. ``FineTune(loader, lambda p:
    optim.SGD(p, lr=0.1), epochs=5)`` (an optimizer factory gives every run a fresh
    optimizer, as the paper does), or a callable ``train(model, step)`` that trains
    ``model`` (step 0: the dense run; r: round r; the controls get ``rounds``); a plain
    callable allows only ``rewind_step=0`` (a FineTune records theta_k during the run).
    Each of ``rounds`` rounds prunes ``amount`` of the remaining weights by magnitude
    (``scope`` "layer" or "global"), rewinds the survivors to their values after
    ``rewind_step`` batches of the first training run (0 = initialisation; Frankle et
    al. 2020 rewind to an early iteration k) and retrains. After round r the sparsity is
    ``1 - (1 - amount)^r``. ``evaluate``: a callable model -> metrics (dict or float) or
    any data form for :func:`prunekit.train.evaluate`. ``controls``: any of "reinit" (ticket mask,
    shuffled initial weights) and "random_mask" (random mask with the ticket's per-layer
    sparsity, rewound weights); each is trained like the ticket. The model ends as the
    trained final ticket. Returns a :class:`LotteryResult`.
    """
    check_model(model)
    rounds = check_int("rounds", rounds, 1)
    amount = check_number("amount", amount, 0, 1, "(]")
    rewind_step = check_int("rewind_step", rewind_step, 0)
    check_option("scope", scope, ("layer", "global"))
    controls = tuple(controls or ())
    for c in controls:
        check_option("controls", c, CONTROLS)
    params = select_weights(model, layers)
    if train is None:
        fail("train", "a FineTune(data, optimizer, epochs) or a callable train(model, step)", None, TypeError)
    run = as_finetune(train, "train")
    if not isinstance(run, FineTune) and rewind_step != 0:
        fail("rewind_step", "0 when train is a plain callable (pass a FineTune to rewind to a later step)",
             rewind_step)
    if evaluate is None:
        fail("evaluate", "a callable model -> metrics or data to evaluate the tickets on", None)
    evaluator = as_evaluator(evaluate, loss)
    rng = np.random.default_rng(seed)

    theta_0 = _state(model)
    snap = WeightSnapshot(rewind_step)
    if isinstance(run, FineTune):
        run(model, 0, callbacks=[snap])
    else:
        snap.state = _state(model)
        run(model, 0)
    if snap.state is None:
        fail("rewind_step", "at most the number of batches of one training run", rewind_step)
    theta_k = snap.state
    history = [{"round": 0, "sparsity": sparsity(model, list(params)).total, "metrics": evaluator(model)}]
    for r in range(1, rounds + 1):
        prune(model, amount, score="magnitude", scope=scope, layers=list(params))
        rewind_weights(model, theta_k)
        run(model, r)
        history.append({"round": r, "sparsity": sparsity(model, list(params)).total, "metrics": evaluator(model)})

    ticket_state = model.state_dict()
    ticket_masks = {n: p.mask.copy() for n, p in params.items()}
    results = {}
    for c in controls:
        model.load_state_dict(ticket_state)  # the ticket's masks
        if c == "reinit":
            shuffled = {k: rng.permutation(v.reshape(-1)).reshape(v.shape) if not k.startswith("buffer:") else v
                        for k, v in theta_0.items()}
            rewind_weights(model, shuffled)
        else:
            for p in params.values():
                p.mask = None
            rewind_weights(model, theta_k)
            prune_to(model, {n: 1 - float(m.mean()) for n, m in ticket_masks.items()}, score="random",
                     layers=list(params), seed=rng)
        run(model, rounds)
        results[c] = {"sparsity": sparsity(model, list(params)).total, "metrics": evaluator(model)}
    if controls:
        model.load_state_dict(ticket_state)
    return LotteryResult(history, results, ticket_masks, theta_k, metric)
