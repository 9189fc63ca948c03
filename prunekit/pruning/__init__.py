"""Pruning: importance scores, masks, unstructured pruning, schedules, lottery tickets, sensitivity.

    from prunekit import pruning
    report = pruning.prune(model, 0.9, score="magnitude", scope="global")
    print(report)                            # per-layer and total sparsity
    pruning.masks(model)                     # {"0.weight": mask, ...}: 1 kept, 0 pruned
    pruning.prune(model, 0.5, score="taylor", data=(x, y))   # again: half of what is left
    pruning.remove(model)                    # keep the zeros, drop the masks

Every ``data`` argument takes a DataLoader, an ``(x, y)`` pair, a dataset or an iterable
of batches; every fine-tune is a :class:`FineTune` (or a callable ``finetune(model, step)``)::

    pruning.iterative_prune(model, 0.9, 3, pruning.FineTune(loader, lambda p: optim.SGD(p, lr=0.01), 1))

Modules, in reading order: ``ranking`` (scores -> masks, torch's counting rules),
``scores`` (the importance-score registry), ``unstructured`` (prune a model),
``schedules`` (iterative, AGP, learning-rate rewinding), ``lottery`` (lottery
tickets), ``sensitivity`` (per-layer scans); structured pruning: ``graph`` (which
channels are coupled), ``structured`` (neurons, channels, N:M), ``surgery``
(``shrink``: a physically smaller model), ``slimming`` (Liu et al. 2017), ``profile``
(parameters, MACs and measured time per layer)::

    pruning.prune(model, 0.5, structure="channel", example_input=x[:1])
    small = pruning.shrink(model, example_input=x[:1])
"""
from .ranking import bottom_k_mask, global_masks, layer_masks, n_to_prune
from .scores import (MovementTracker, ScoreContext, available_scores, compute_scores, get_score, grade_scores,
                     reduce_groups, register_score, spearman)
from .unstructured import (SparsityReport, apply_masks, batch_prune, is_pruned, masks, prunable_layers, prune,
                           prune_to, remove, set_mask, sparsity)
from .schedules import AGP, agp_sparsity, iterative_prune, rewind_learning_rate, sparsity_schedule
from .lottery import LotteryResult, WeightSnapshot, lottery_ticket, rewind_weights
from .sensitivity import SensitivityResult, plot_sensitivity, sensitivity_scan
from .graph import DependencyGraph, DependencyGroup, dependency_groups, plot_dependency_graph
from .structured import GROUP_SCORES, StructuredReport, nm_mask, parse_structure, prune_structured
from .surgery import shrink
from .slimming import BNL1Penalty, bn_gammas, bn_l1_penalty, slim
from .profile import ProfileReport, profile
from ..train import FineTune

__all__ = [
    "prune", "prune_to", "batch_prune", "masks", "sparsity", "remove", "is_pruned", "apply_masks", "set_mask",
    "prunable_layers", "SparsityReport",
    "register_score", "available_scores", "get_score", "compute_scores", "ScoreContext", "MovementTracker",
    "reduce_groups", "spearman", "grade_scores",
    "n_to_prune", "bottom_k_mask", "layer_masks", "global_masks",
    "AGP", "agp_sparsity", "sparsity_schedule", "iterative_prune", "rewind_learning_rate",
    "lottery_ticket", "LotteryResult", "WeightSnapshot", "rewind_weights",
    "sensitivity_scan", "SensitivityResult", "plot_sensitivity", "FineTune",
    "prune_structured", "StructuredReport", "nm_mask", "parse_structure", "GROUP_SCORES",
    "dependency_groups", "DependencyGroup", "DependencyGraph", "plot_dependency_graph", "shrink",
    "BNL1Penalty", "bn_l1_penalty", "slim", "bn_gammas", "profile", "ProfileReport",
]
