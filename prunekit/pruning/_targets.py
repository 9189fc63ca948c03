"""Which weights a pruning call acts on: every Linear/Conv2d weight, or the chosen layers."""
from __future__ import annotations

from collections import OrderedDict

from .. import nn
from .._validate import fail

PRUNABLE = (nn.Linear, nn.Conv2d)


def check_model(model):
    if not isinstance(model, nn.Module):
        fail("model", "a prunekit.nn.Module", type(model).__name__, TypeError)
    return model


def prunable_layers(model):
    """Names of the layers :func:`prune` acts on by default (every Linear and Conv2d)."""
    return [name for name, m in model.named_modules() if isinstance(m, PRUNABLE)]


def select_weights(model, layers=None):
    """Ordered dict ``"<layer>.weight" -> Parameter`` for the chosen layers, in model order.

    ``layers`` is None (every Linear and Conv2d), or a list of layer names (as in
    ``model.named_modules()``, e.g. ``"0"``; ``"0.weight"`` is accepted too) and/or
    module objects. Unknown names, modules that are not in the model, and layers
    without a weight are refused with the list of valid names.
    """
    check_model(model)
    modules = list(model.named_modules())
    default = [(n, m) for n, m in modules if isinstance(m, PRUNABLE)]
    if layers is None:
        chosen = default
    else:
        if isinstance(layers, (str, nn.Module)):
            layers = [layers]
        try:
            layers = list(layers)
        except TypeError:
            fail("layers", "None, or a list of layer names or modules", layers, TypeError)
        by_name = dict(modules)
        by_id = {id(m): n for n, m in modules}
        valid = ", ".join(repr(n) for n, _ in default) or "none"
        wanted = set()
        for item in layers:
            if isinstance(item, str):
                name = item
                if item not in by_name and (item.endswith(".weight") or item == "weight"):
                    name = item[:-len(".weight")] if item != "weight" else ""
                if name not in by_name:
                    fail("layers", f"names of layers in the model (prunable: {valid})", repr(item))
            elif isinstance(item, nn.Module):
                if id(item) not in by_id:
                    fail("layers", "modules that are part of the model", type(item).__name__)
                name = by_id[id(item)]
            else:
                fail("layers", "layer names (str) or modules", item, TypeError)
            weight = getattr(by_name[name], "weight", None)
            if not isinstance(weight, nn.Parameter):
                fail("layers", f"layers that have a weight (prunable: {valid})", repr(item))
            wanted.add(name)
        chosen = [(n, m) for n, m in modules if n in wanted]
    out = OrderedDict()
    for name, m in chosen:
        out[f"{name}.weight" if name else "weight"] = m.weight
    return out
