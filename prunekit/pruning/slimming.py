"""Network slimming (Liu et al. 2017): push BatchNorm scales to 0 while training, then prune channels by them.

A BatchNorm multiplies each channel by its scale ``gamma``; a channel whose gamma
is 0 (and beta 0) outputs nothing. Training with an L1 penalty
``lambda * sum |gamma|`` added to the loss makes many gammas small, so those
channels can be removed with little damage:

    slimmer = pruning.BNL1Penalty(1e-4)
    fit(model, loader, opt, epochs=5, callbacks=[slimmer])
    pruning.slim(model, 0.5, example_input=x[:1])     # prune_structured(score="bn_scale", scope="global")

``fit`` calls the callbacks *after* the optimizer step, so :class:`BNL1Penalty`
applies the penalty as a proximal step right after it (soft-thresholding,
``gamma <- sign(gamma) * max(|gamma| - lr * lambda, 0)``, the ISTA update of an L1
term); this sets small gammas exactly to 0 instead of making them oscillate around
it as the subgradient ``lambda * sign(gamma)`` of the paper does. If you write your
own training loop, :func:`bn_l1_penalty` gives the penalty as a loss term instead.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from .._validate import check_number
from ..train import Callback
from ._targets import check_model
from .structured import prune_structured

__all__ = ["BNL1Penalty", "bn_l1_penalty", "slim", "bn_gammas"]

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def bn_gammas(model):
    """``{name: gamma}`` of every BatchNorm with a scale (the live arrays)."""
    check_model(model)
    return {n: m.weight.data for n, m in model.named_modules() if isinstance(m, NORMS) and m.weight is not None}


def bn_l1_penalty(model, strength):
    """The loss term ``strength * sum |gamma|`` over every BatchNorm scale (a differentiable Tensor)."""
    check_model(model)
    strength = check_number("strength", strength, 0)
    total = None
    for m in model.modules():
        if isinstance(m, NORMS) and m.weight is not None:
            term = m.weight.abs().sum()
            total = term if total is None else total + term
    if total is None:
        from ..tensor import Tensor
        return Tensor(np.zeros((), np.float32))
    return total * strength


class BNL1Penalty(Callback):
    """A :func:`prunekit.fit` callback: after each step, shrink every BatchNorm gamma by ``lr * strength`` toward 0."""

    def __init__(self, strength=1e-4):
        self.strength = check_number("strength", strength, 0)

    def on_batch_end(self, state):
        step = float(state.optimizer.lr) * self.strength
        for m in state.model.modules():
            if isinstance(m, NORMS) and m.weight is not None:
                g = m.weight.data
                g[...] = np.sign(g) * np.maximum(np.abs(g) - step, 0)
                if m.weight.mask is not None:
                    g *= m.weight.mask

    def __repr__(self):
        return f"BNL1Penalty(strength={self.strength})"


def slim(model, amount, *, example_input=None, ignored_layers=(), round_to=None):
    """Remove the fraction ``amount`` of BatchNorm-followed channels with the smallest ``|gamma|``, model-wide.

    The channels are ranked together across layers (Liu et al. 2017 use one global
    threshold); every layer keeps at least one channel. Returns a ``StructuredReport``.
    """
    return prune_structured(model, amount, structure="channel", score="bn_scale", scope="global",
                            ignored_layers=ignored_layers, round_to=round_to, example_input=example_input)
