"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules, with PyTorch's update rules.

Every update is done in place on ``param.data`` (its identity never changes, so
code holding ``layer.weight.data`` sees the new values). Pruning is respected:
if ``param.mask`` is set, the gradient is masked before the update and the
weight after it, so pruned weights stay exactly zero whatever the momentum or
weight decay.
"""
from __future__ import annotations

import math

import numpy as np

from ._jit import njit
from ._validate import check_int, check_number, fail
from .tensor import Tensor

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR", "LambdaLR"]


class Optimizer:
    """Base class: holds the parameters, the learning rate and per-parameter state."""

    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            fail("params", "a non-empty iterable of Parameters", "an empty list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                fail(f"params[{i}]", "a Parameter (Tensor)", type(p).__name__, TypeError)
        self.lr = lr
        self.state = [{} for _ in self.params]
        self.steps = 0

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = check_number("lr", value, 0, None)

    def zero_grad(self):
        """Forget the gradients of the last backward pass."""
        for p in self.params:
            p.grad = None

    def step(self):
        """Apply one update to every parameter that has a gradient."""
        self.steps += 1
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            mask = getattr(p, "mask", None)
            g = p.grad if mask is None else p.grad * mask
            self._update(p.data, g.astype(p.dtype, copy=False), state)
            if mask is not None:
                p.data *= mask

    def _update(self, w, g, state):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Learning rate, step count and every state array, as a flat dict of arrays."""
        out = {"lr": np.asarray(self.lr), "steps": np.asarray(self.steps)}
        for i, s in enumerate(self.state):
            for k, v in s.items():
                out[f"{i}.{k}"] = np.array(v, copy=True)
        return out

    def load_state_dict(self, state: dict):
        """Restore what :meth:`state_dict` returned."""
        self.lr = float(state["lr"])
        self.steps = int(state["steps"])
        self.state = [{} for _ in self.params]
        for key, v in state.items():
            if "." in key:
                i, k = key.split(".", 1)
                self.state[int(i)][k] = np.array(v, copy=True)
        return self

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.lr}, {len(self.params)} parameters)"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay.

    g <- g + wd * w;  b <- mu * b + g (b = g on the first step);
    w <- w - lr * (g + mu * b if nesterov else b)   (PyTorch's formulation)
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum = check_number("momentum", momentum, 0, None)
        self.weight_decay = check_number("weight_decay", weight_decay, 0, None)
        if nesterov and momentum == 0:
            fail("nesterov", "False when momentum is 0 (Nesterov needs momentum)", nesterov)
        self.nesterov = bool(nesterov)

    def _update(self, w, g, state):
        if not self.momentum:
            w -= self.lr * (g + self.weight_decay * w if self.weight_decay else g)
            return
        buf = state.get("momentum_buffer")
        if buf is None:  # a zero buffer makes the first step's b exactly g, as in PyTorch
            buf = state["momentum_buffer"] = np.zeros_like(w)
        if _fusable(w, g, buf):
            # The same arithmetic in one pass over memory (about 1.5x faster); under the
            # "numpy" backend the kernel runs _sgd_momentum_reference instead.
            t = w.dtype.type
            _sgd_momentum_kernel(w.reshape(-1), g.reshape(-1), buf.reshape(-1), t(self.lr), t(self.momentum),
                                 t(self.weight_decay), self.nesterov)
        else:
            _sgd_momentum_reference(w, g, buf, self.lr, self.momentum, self.weight_decay, self.nesterov)


def _fusable(*arrays):
    a = arrays[0]
    return a.dtype.kind == "f" and all(x.dtype == a.dtype and x.flags.c_contiguous and x.shape == a.shape for x in arrays)


def _sgd_momentum_reference(w, g, buf, lr, momentum, weight_decay, nesterov):
    """SGD with momentum in NumPy, in place on ``w`` and ``buf``: the update rule of :class:`SGD`, as written.

    g <- g + wd * w;  b <- mu * b + g;  w <- w - lr * (g + mu * b if nesterov else b)
    """
    if weight_decay:
        g = g + weight_decay * w
    buf *= momentum
    buf += g
    w -= lr * (g + momentum * buf if nesterov else buf)


@njit(reference=_sgd_momentum_reference)
def _sgd_momentum_kernel(w, g, buf, lr, momentum, weight_decay, nesterov):
    """SGD with momentum on flat arrays, in place: the loop form of :func:`_sgd_momentum_reference`.

    One thread on purpose: a parallel kernel would also quieten OpenBLAS's threads
    (see ``_threads``), which makes a pure-BLAS model like LeNet-300-100 slower.
    """
    for i in range(w.size):
        gi = g[i] + weight_decay * w[i]
        b = momentum * buf[i] + gi
        buf[i] = b
        w[i] -= lr * (gi + momentum * b if nesterov else b)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction and optional L2 weight decay.

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    w <- w - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    """

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            fail("betas", "a pair (beta1, beta2)", betas)
        self.betas = (check_number("betas[0]", betas[0], 0, 1, "[)"), check_number("betas[1]", betas[1], 0, 1, "[)"))
        self.eps = check_number("eps", eps, 0, None, "(]")
        self.weight_decay = check_number("weight_decay", weight_decay, 0, None)

    def _update(self, w, g, state):
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                w *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * w
        if "exp_avg" not in state:
            state["exp_avg"] = np.zeros_like(w)
            state["exp_avg_sq"] = np.zeros_like(w)
            state["step"] = 0
        m, v = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        t = state["step"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + self.eps
        w -= (self.lr / (1 - b1 ** t)) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): w <- w (1 - lr wd) before the Adam step."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


# ------------------------------------------------------------- schedules
class LRScheduler:
    """Sets ``optimizer.lr`` from the number of times :meth:`step` was called (usually once per epoch)."""

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            fail("optimizer", "a prunekit.optim.Optimizer", type(optimizer).__name__, TypeError)
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def rewind(self, epoch: int = 0):
        """Jump back to ``epoch`` (learning-rate rewinding, Renda et al. 2020)."""
        self.last_epoch = check_int("epoch", epoch, 0)
        self.optimizer.lr = self.lr_at(epoch)


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        self.step_size = check_int("step_size", step_size, 1)
        self.gamma = check_number("gamma", gamma, 0, None)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2 (Loshchilov & Hutter 2017).

    After ``T_max`` epochs the rate stays at ``eta_min`` (one half-cosine, no restarts;
    PyTorch's version would climb back up).
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        super().__init__(optimizer)
        self.T_max = check_int("T_max", T_max, 1)
        self.eta_min = check_number("eta_min", eta_min, 0, None)

    def lr_at(self, epoch):
        t = min(epoch, self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class LambdaLR(LRScheduler):
    """lr = base_lr * fn(epoch) for any function ``fn``."""

    def __init__(self, optimizer, fn):
        super().__init__(optimizer)
        if not callable(fn):
            fail("fn", "a callable epoch -> factor", fn, TypeError)
        self.fn = fn

    def lr_at(self, epoch):
        return self.base_lr * self.fn(epoch)
