"""prunekit: neural-network pruning from first principles, in NumPy.

    import prunekit as pk
    (x, y), (xt, yt) = pk.data.load_digits()
    model = pk.models.mlp([64, 128, 10], seed=0)
    opt = pk.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pk.fit(model, pk.data.DataLoader(x, y, 64, shuffle=True, seed=0), opt, epochs=20)
    pk.evaluate(model, (xt, yt))

The core (tensor, functional, nn, optim, models, train) is imported eagerly and
needs only NumPy. The other modules (data, pruning, sparse, viz, widgets) are
imported on first access, and numba kernels compile on first use, so
``import prunekit`` stays fast. ``pk.set_backend("numpy")`` (or the environment
variable ``PRUNEKIT_BACKEND=numpy``) runs every op's NumPy reference instead of
its numba kernel.
"""
from __future__ import annotations

import importlib

from . import functional, models, nn, optim, tensor, train
from ._backend import backend, get_backend, set_backend
from .tensor import Tensor, gradcheck, no_grad
from .train import evaluate, fit

__version__ = "0.1.0"

# Subpackages imported on first access (each must exist: `from prunekit import *` imports them all).
_LAZY = ("data", "distributed", "pruning", "quant", "sparse", "viz", "widgets")

__all__ = ["Tensor", "no_grad", "gradcheck", "fit", "evaluate", "get_backend", "set_backend", "backend",
           "tensor", "functional", "nn", "optim", "models", "train", *_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
