"""Layers: Module, Parameter, Sequential, Linear, Conv2d, BatchNorm, activations; save/load.

The API follows PyTorch (``model.parameters()``, ``state_dict()``, ``model.eval()``)
with one deliberate difference: pruning is explicit. A :class:`Parameter` may
carry a ``mask`` (an array of 0s and 1s, same shape as the weight). Optimizers
multiply the gradient and the updated weight by it, so a pruned weight stays
exactly zero; ``state_dict()`` saves it next to the weight as ``<name>_mask``.
"""
from __future__ import annotations

import itertools
import math
import os
import zipfile
from collections import OrderedDict

import numpy as np

from . import functional as F
from ._validate import check_int, check_number, fail
from .tensor import Tensor

__all__ = [
    "Parameter", "Module", "Sequential", "Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d",
    "ReLU", "Tanh", "Sigmoid", "Flatten", "MaxPool2d", "AvgPool2d", "Dropout", "Identity",
    "save", "load", "load_state", "RemovableHandle",
]


class Parameter(Tensor):
    """A Tensor that a Module learns; ``requires_grad`` is on. ``mask`` is None or a 0/1 array."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)
        self.mask = None

    def __repr__(self):
        pruned = "" if self.mask is None else f", pruned {1 - self.mask.mean():.1%}"
        return f"Parameter(shape={self.shape}, dtype={self.dtype}{pruned})"


class _Hooks:
    """The forward hooks of one module: ``pre`` and ``post`` dicts id -> hook; falsy when both are empty."""

    _ids = itertools.count()

    def __init__(self):
        self.pre, self.post = OrderedDict(), OrderedDict()

    def __bool__(self):
        return bool(self.pre) or bool(self.post)

    def add(self, kind, hook):
        table = getattr(self, kind)
        key = next(self._ids)
        table[key] = hook
        return RemovableHandle(table, key)


class RemovableHandle:
    """What ``register_forward_hook`` returns: ``.remove()`` takes the hook off (also as a context manager)."""

    def __init__(self, table, key):
        self._table, self.id = table, key

    def remove(self):
        """Unregister the hook (doing it twice is harmless)."""
        self._table.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    def __repr__(self):
        return f"RemovableHandle(id={self.id}, {'active' if self.id in self._table else 'removed'})"


class Module:
    """Base class of every layer and model.

    Subclasses set attributes in ``__init__`` (Parameters, sub-Modules, and
    ``self.register_buffer(name, array)`` for non-learned state such as
    running means) and implement ``forward``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first.")
        # Replacing a child keeps its place (a Sequential must not reorder); a name that
        # changes kind (say a Module becoming None) leaves its old registry.
        if not isinstance(value, Parameter):
            self._parameters.pop(name, None)
        if not isinstance(value, Module):
            self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._buffers.pop(name, None)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._buffers.pop(name, None)
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """Keep ``array`` as state that is saved and loaded but not learned."""
        self._buffers[name] = None
        object.__setattr__(self, name, array)

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} must implement forward().")

    _hooks = None  # a _Hooks once a hook was registered on this module (see register_forward_hook)

    def __call__(self, x, *args, **kwargs):
        if not isinstance(x, Tensor):
            x = Tensor(x)
        if self._hooks:            # the only cost of hooks for a module that has none
            return self._call_with_hooks(x, *args, **kwargs)
        return self.forward(x, *args, **kwargs)

    # -------------------------------------------------------------- hooks
    def _call_with_hooks(self, *inputs, **kwargs):
        for hook in list(self._hooks.pre.values()):
            new = hook(self, inputs)
            if new is not None:
                inputs = new if isinstance(new, tuple) else (new,)
        output = self.forward(*inputs, **kwargs)
        for hook in list(self._hooks.post.values()):
            new = hook(self, inputs, output)
            if new is not None:
                output = new
        return output

    def _hook_table(self):
        if self.__dict__.get("_hooks") is None:
            object.__setattr__(self, "_hooks", _Hooks())
        return self._hooks

    def register_forward_hook(self, hook):
        """Call ``hook(module, inputs, output)`` after every forward of this module (PyTorch's signature).

        ``inputs`` is the tuple of positional inputs; a hook that returns something
        other than None replaces the output. Returns a :class:`RemovableHandle`:
        ``handle.remove()``, or ``with model[0].register_forward_hook(f): ...``.
        Hooks run in the order they were registered.
        """
        if not callable(hook):
            fail("hook", "a callable hook(module, inputs, output)", type(hook).__name__, TypeError)
        return self._hook_table().add("post", hook)

    def register_forward_pre_hook(self, hook):
        """Call ``hook(module, inputs)`` before every forward of this module (PyTorch's signature).

        A hook that returns something other than None replaces the inputs (a single
        value is wrapped in a tuple). Returns a :class:`RemovableHandle`.
        """
        if not callable(hook):
            fail("hook", "a callable hook(module, inputs)", type(hook).__name__, TypeError)
        return self._hook_table().add("pre", hook)

    # ----------------------------------------------------------- traversal
    def named_children(self):
        """Yield (name, module) for the direct sub-modules."""
        yield from self._modules.items()

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix="", _seen=None):
        """Yield (name, module) for this module (name ``prefix``) and all below it, depth first.

        A module used in two places is listed once, under its first name (as in PyTorch).
        """
        _seen = set() if _seen is None else _seen
        if id(self) in _seen:
            return
        _seen.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name, _seen)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self):
        """Yield (dotted name, Parameter) pairs, e.g. ("0.weight", ...); a shared Parameter once."""
        seen = set()
        for mname, m in self.named_modules():
            for pname, p in m._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for mname, m in self.named_modules():
            for bname in m._buffers:
                yield (f"{mname}.{bname}" if mname else bname), getattr(m, bname)

    def num_parameters(self) -> int:
        """Total number of learned scalars."""
        return sum(p.size for p in self.parameters())

    # -------------------------------------------------------------- modes
    def train(self, mode: bool = True):
        """Switch to training mode (dropout on, batch norm uses batch statistics)."""
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """Switch to evaluation mode."""
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # -------------------------------------------------------------- state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter, mask (``<name>_mask``) and buffer, by dotted name."""
        state = OrderedDict()
        for name, p in self.named_parameters():
            state[name] = p.data.copy()
            if p.mask is not None:
                state[name + "_mask"] = p.mask.copy()
        for name, b in self.named_buffers():
            state[name] = np.array(b, copy=True)
        return state

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays from ``state`` into this model in place (shapes must match).

        A ``<name>_mask`` entry restores that parameter's pruning mask; a parameter
        without one in ``state`` loses its mask.
        """
        params = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        expected = set(params) | set(buffers)
        masks = {k[:-5] for k in state if k.endswith("_mask") and k[:-5] in params}
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected - {m + "_mask" for m in masks})
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}.")
        for name, target in list(params.items()) + list(buffers.items()):
            if name not in state:
                continue
            value = np.asarray(state[name])
            current = target.data if isinstance(target, Tensor) else target
            if value.shape != current.shape:
                raise ValueError(f"load_state_dict: key '{name}' has shape {value.shape}, "
                                 f"the model expects {current.shape}.")
            current[...] = value
        for name, p in params.items():
            if name in masks:
                mask = np.asarray(state[name + "_mask"], dtype=p.dtype)
                if mask.shape != p.shape:
                    raise ValueError(f"load_state_dict: key '{name}_mask' has shape {mask.shape}, "
                                     f"the model expects {p.shape}.")
                p.mask = mask.copy()
                p.data *= p.mask
            elif name in state:
                p.mask = None
        return self

    # --------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied one after another; indexable (``model[0]``), iterable and sized."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                fail(f"modules[{i}]", "a Module", type(m).__name__, TypeError)
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


def _uniform(rng, bound, shape):
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


class Linear(Module):
    """y = x @ W.T + b with W of shape (out_features, in_features).

    Initialised as PyTorch does: W and b ~ U(-1/sqrt(in), 1/sqrt(in)) (Kaiming-uniform
    with a = sqrt(5)). Pass ``seed`` or ``rng`` for reproducible weights.
    """

    def __init__(self, in_features, out_features, bias=True, *, seed=None, rng=None):
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        rng = rng if rng is not None else np.random.default_rng(seed)
        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(_uniform(rng, bound, (out_features, in_features)))
        self.bias = Parameter(_uniform(rng, bound, (out_features,))) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution over NCHW input; weight (out, in, kh, kw), PyTorch's initialisation."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *, bias=True, seed=None,
                 rng=None):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.out_channels = check_int("out_channels", out_channels, 1)
        self.kernel_size = F._pair("kernel_size", kernel_size)
        self.stride = F._pair("stride", stride)
        self.padding = F._pair("padding", padding)
        rng = rng if rng is not None else np.random.default_rng(seed)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1 / math.sqrt(fan_in)
        self.weight = Parameter(_uniform(rng, bound, (out_channels, in_channels) + self.kernel_size))
        self.bias = Parameter(_uniform(rng, bound, (out_channels,))) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class _BatchNorm(Module):
    _ndim = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        super().__init__()
        self.num_features = check_int("num_features", num_features, 1)
        self.eps = check_number("eps", eps, 0, None, "(]")
        self.momentum = check_number("momentum", momentum, 0, 1)
        self.weight = Parameter(np.ones(num_features, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_features, np.float32)) if affine else None
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))

    def forward(self, x):
        if x.ndim not in self._ndim or x.shape[1] != self.num_features:
            fail("x", f"a {' or '.join(map(str, self._ndim))}-D input with {self.num_features} channels "
                 f"in axis 1", f"shape {x.shape}")
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) inputs."""
    _ndim = (2,)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs, per channel."""
    _ndim = (4,)


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x):
        return x.relu()


class Tanh(Module):
    """tanh(x)."""

    def forward(self, x):
        return x.tanh()


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, x):
        return x.sigmoid()


class Identity(Module):
    """Returns its input (a placeholder, e.g. for a removed layer)."""

    def forward(self, x):
        return x


class Flatten(Module):
    """Merge every axis after the batch axis: (N, C, H, W) -> (N, C*H*W)."""

    def forward(self, x):
        return F.flatten(x)


class _Pool2d(Module):
    """What max and average pooling share: a window (``kernel_size``) slid by ``stride``."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = F._pair("kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else F._pair("stride", stride)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class MaxPool2d(_Pool2d):
    """Max over kernel_size windows (stride defaults to kernel_size)."""

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride)


class AvgPool2d(_Pool2d):
    """Mean over kernel_size windows (stride defaults to kernel_size)."""

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride)


class Dropout(Module):
    """Inverted dropout: zero with probability p in training, identity in eval."""

    def __init__(self, p=0.5, *, seed=None):
        super().__init__()
        self.p = check_number("p", p, 0, 1, "[)")
        self.rng = np.random.default_rng(seed)

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self):
        return f"p={self.p}"


# ------------------------------------------------------------ save / load
def save(model: Module, path) -> None:
    """Write the weights to ``<path>.npz`` and the architecture to ``<path>.json`` (no pickle).

    The ``.npz`` is ``model.state_dict()`` (read it back into a model of the same shape
    with :func:`load_state`); the JSON describes prunekit's built-in layers and holds a
    SHA-256 of both, so :func:`load` can rebuild a model whose shapes you do not know
    (e.g. one made smaller by ``pruning.shrink``). Both files are written to temporary
    names and renamed, so a crash never leaves a half-written model behind. A model with
    a layer type of your own still saves its weights; :func:`load` then names that type.
    """
    from .serialize import save_model  # serialize imports this module

    save_model(model, path, allow_custom=True)


def load(path) -> Module:
    """Rebuild and return the model saved by :func:`save` at ``path`` (architecture and weights).

    A tampered or truncated file, or a layer type that is not prunekit's, raises an
    error naming the file; nothing half-built is returned.
    """
    from .serialize import load_model

    return load_model(path)


def load_state(model: Module, path, *, strict: bool = True) -> Module:
    """Load a file written by :func:`save` into ``model`` (in place) and return the model.

    A missing file raises ``FileNotFoundError``; a truncated or corrupt file, a
    missing key or a wrong shape raises an error naming the file and the key.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        if not os.path.exists(path + ".npz"):
            nor = "" if path.endswith(".npz") else f", nor {path + '.npz'!r}"
            fail("path", "an existing file written by save()", f"{path!r} (no such file{nor})",
                 FileNotFoundError)
        path += ".npz"  # save() adds the suffix, so load_state accepts the same name
    try:
        with np.load(path, allow_pickle=False) as f:
            state = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"load_state(): '{path}' is not a readable prunekit .npz file ({e}).") from e
    try:
        return model.load_state_dict(state, strict=strict)
    except (KeyError, ValueError) as e:
        raise type(e)(f"{e.args[0]} (file '{path}')") from e
