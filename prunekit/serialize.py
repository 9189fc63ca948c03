"""Save a model with its architecture, so a shrunk model loads without knowing its new shapes.

    serialize.save_model(small, "lenet_small")      # lenet_small.npz + lenet_small.json
    model = serialize.load_model("lenet_small")     # rebuilt: same layers, shapes and weights

Two files, both free of pickle:

* ``<path>.npz``: ``model.state_dict()`` exactly as :func:`prunekit.nn.save` writes it
  (so ``nn.load_state(model, path)`` keeps working on it);
* ``<path>.json``: the architecture, a tree of ``{"type", "config", "children"}``
  for prunekit's built-in module types, and the SHA-256 of the payload (the
  ``.npz`` bytes followed by the canonical JSON of the architecture).

:func:`load_model` checks the hash before building anything, builds the whole model,
loads the weights strictly, and only then returns it: a tampered or truncated file
raises a ``ValueError`` and leaves nothing half-built. A module type that is not
built in (your own ``nn.Module`` subclass) is refused by name, because its
``forward`` is code, and code is not data: at save time, or, when saved with
``allow_custom=True`` (the weights are still written), at load time.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np

from . import models, nn
from ._validate import fail

__all__ = ["save_model", "load_model", "architecture", "build", "FORMAT"]

FORMAT = "prunekit-model/1"

# leaf modules: type -> the constructor arguments read back from the instance
_LEAVES = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    nn.Conv2d: lambda m: {"in_channels": m.in_channels, "out_channels": m.out_channels,
                          "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                          "padding": list(m.padding), "bias": m.bias is not None},
    nn.BatchNorm1d: lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                               "affine": m.weight is not None},
    nn.BatchNorm2d: lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                               "affine": m.weight is not None},
    nn.MaxPool2d: lambda m: {"kernel_size": list(m.kernel_size), "stride": list(m.stride)},
    nn.AvgPool2d: lambda m: {"kernel_size": list(m.kernel_size), "stride": list(m.stride)},
    nn.Dropout: lambda m: {"p": m.p},
    nn.ReLU: lambda m: {}, nn.Tanh: lambda m: {}, nn.Sigmoid: lambda m: {},
    nn.Identity: lambda m: {}, nn.Flatten: lambda m: {},
    models.GlobalAvgPool2d: lambda m: {},
}


def _containers():
    """Modules whose forward uses only their children: rebuilt from the children alone."""
    from .pruning._testmodels import ConcatNet
    return (nn.Sequential, models.ResidualBlock, ConcatNet)


def _type_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _known_types():
    return {_type_name(c): c for c in (*_LEAVES, *_containers())}


def architecture(model, allow_custom=False):
    """The architecture tree of ``model`` as plain JSON data (types, constructor arguments, children).

    A module type that is not built in is refused (``TypeError`` naming it), or with
    ``allow_custom=True`` recorded by name only, so that :func:`load_model` can name it.
    """
    cls = type(model)
    if cls in _LEAVES:
        if model._modules:
            fail("model", f"built-in module types only ({cls.__name__} with sub-modules added)", _type_name(cls))
        return {"type": _type_name(cls), "config": _LEAVES[cls](model)}
    if cls in _containers():
        return {"type": _type_name(cls),
                "children": [[name, architecture(child, allow_custom)] for name, child in model.named_children()]}
    if allow_custom:
        return {"type": _type_name(cls), "custom": True}
    known = ", ".join(sorted(c.__name__ for c in _known_types().values()))
    fail("model", f"made of prunekit's built-in module types ({known}); save the weights with "
         f"nn.save and rebuild a custom module yourself", f"a module of type {_type_name(cls)!r}", TypeError)


def build(spec):
    """Rebuild a module (fresh weights) from an :func:`architecture` tree."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        fail("spec", "a dict with a 'type' string", type(spec).__name__, ValueError)
    known = _known_types()
    cls = known.get(spec["type"])
    if cls is None:
        fail("model", "made of prunekit's built-in module types to be rebuilt from its file (for your own "
             "module type, build the model yourself and load the weights with nn.load_state)",
             f"a module of type {spec['type']!r}", TypeError)
    if cls in _LEAVES:
        config = spec.get("config", {})
        if not isinstance(config, dict):
            fail("spec", "a 'config' dict", type(config).__name__)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        if cls in (nn.Linear, nn.Conv2d):
            kwargs["seed"] = 0   # placeholder weights, overwritten by the saved ones
        try:
            return cls(**kwargs)
        except TypeError as e:
            fail("spec", f"constructor arguments {cls.__name__} accepts", f"{config} ({e})")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for item in spec.get("children", []):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            fail("spec", "children as [name, spec] pairs", repr(item)[:80])
        setattr(module, item[0], build(item[1]))
    return module


def _paths(path):
    path = os.fspath(path)
    for ext in (".npz", ".json"):
        if path.endswith(ext):
            path = path[:-len(ext)]
    return path + ".npz", path + ".json"


def _digest(weights: bytes, arch) -> str:
    h = hashlib.sha256(weights)
    h.update(json.dumps(arch, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def save_model(model, path, *, allow_custom=False):
    """Write ``<path>.npz`` (the state dict) and ``<path>.json`` (architecture + SHA-256); return the two paths.

    Only prunekit's built-in module types can be rebuilt: a custom type gets a
    ``TypeError`` naming it, here, or (``allow_custom=True``, for ``nn.save``, which
    must keep saving any model's weights) when :func:`load_model` meets it. Both files
    are written to temporary names first and renamed, so a crash never leaves a
    half-written pair.
    """
    if not isinstance(model, nn.Module):
        fail("model", "a prunekit.nn.Module", type(model).__name__, TypeError)
    arch = architecture(model, allow_custom)
    buf = io.BytesIO()
    np.savez(buf, **model.state_dict())
    weights = buf.getvalue()
    npz, meta = _paths(path)
    doc = {"format": FORMAT, "weights": os.path.basename(npz), "sha256": _digest(weights, arch),
           "training": bool(model.training), "architecture": arch}
    for target, data in ((npz, weights), (meta, json.dumps(doc, indent=1).encode())):
        with open(target + ".tmp", "wb") as f:
            f.write(data)
    os.replace(npz + ".tmp", npz)
    os.replace(meta + ".tmp", meta)
    return npz, meta


def load_model(path):
    """Rebuild a model written by :func:`save_model` (``path`` with or without ``.npz`` / ``.json``).

    The SHA-256 in the JSON must match the weights and the architecture; the model is
    built and loaded completely before it is returned. Errors name the file.
    """
    npz, meta = _paths(path)
    for f in (npz, meta):
        if not os.path.exists(f):
            fail("path", "the name of a model saved by save_model (both .npz and .json present)", f"missing '{f}'")
    try:
        with open(meta, "rb") as f:
            doc = json.loads(f.read().decode())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        arch, digest = doc["architecture"], doc["sha256"]
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        fail("path", f"a readable {FORMAT} JSON file", f"'{meta}' ({e})")
    with open(npz, "rb") as f:
        weights = f.read()
    if _digest(weights, arch) != digest:
        fail("path", "a model whose files match their SHA-256 (they were changed or truncated after saving)",
             f"'{npz}' + '{meta}'")
    try:
        with np.load(io.BytesIO(weights), allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        fail("path", "a readable .npz file", f"'{npz}' ({e})")
    model = build(arch)
    try:
        model.load_state_dict(state, strict=True)
    except (KeyError, ValueError) as e:
        fail("path", "weights that fit the saved architecture", f"'{npz}' ({e})")
    return model.train(bool(doc.get("training", False)))
