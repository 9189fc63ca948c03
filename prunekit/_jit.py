"""Lazy numba compilation, so that ``import prunekit`` never imports numba.

A kernel is written as an ordinary Python function and decorated with
:func:`njit`. Nothing happens at import time; the first call imports numba,
compiles the function (with ``cache=True`` so later processes load it from
disk) and from then on calls the compiled version.

The first parallel kernel also tells NumPy's OpenBLAS to put its worker threads
to sleep right after each product (:mod:`prunekit._threads`), so they do not spin
on the cores that numba's threads need.

Two conveniences make kernels readable as plain Python:

* a module may define ``prange = range``; when a kernel with ``parallel=True``
  is compiled, that global is swapped for ``numba.prange``.
* a kernel may call another lazy kernel of the same module by name; the callee
  is compiled first and handed to numba as a compiled dispatcher.

``kernel.py_func`` is the uncompiled function (useful in tests and debugging).

Backends (:mod:`prunekit._backend`): under the ``"numpy"`` backend a kernel is
never compiled. A kernel declared with ``@njit(reference=f)`` then calls ``f``
with the same arguments (``f`` is its NumPy reference, written to the kernel's
signature); any other kernel refuses to run, so an op that forgot its NumPy path
fails loudly instead of importing numba behind the learner's back.

Serial or parallel: ``kernel.for_work(n)`` is the kernel itself for ``n`` units of
work or more (``PARALLEL_MIN_WORK``) and its single-thread twin below that.
"""
from __future__ import annotations

import os
import threading

from . import _backend

__all__ = ["njit", "LazyKernel", "PARALLEL_MIN_WORK"]

_LOCK = threading.RLock()

PARALLEL_MIN_WORK = 1 << 16
"""Below this many elements (or multiply-adds) a kernel runs on one thread: waking the
worker threads would cost more than the loop (tens of microseconds, far more on a busy machine)."""


def _quiet_idle_threads():
    """Let numba's OpenMP workers sleep, not spin, between parallel kernels (unless the user chose).

    With the default (spinning) policy, idle workers keep the cores busy for a while
    after each kernel, fighting NumPy's BLAS threads and any other process: measured
    on a 2-core machine, a LeNet-5 training step took 48-232 ms instead of 19 ms.
    libgomp reads this once, when numba first loads it for a parallel kernel.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # ...but only after a short spin (microseconds), so back-to-back kernels find them awake:
    # measured, batch-1 CSR at 95% went from 5.6x to 11x dense NumPy (benchmarks/BENCHMARKS_kernels.md).
    os.environ.setdefault("GOMP_SPINCOUNT", "20000")


class LazyKernel:
    """A function compiled by numba the first time it is called."""

    def __init__(self, py_func, options, reference=None):
        self.py_func = py_func
        self.reference = reference
        self.options = {"cache": True, **options}
        self._dispatcher = None
        self._serial = None
        self.__name__ = py_func.__name__
        self.__qualname__ = py_func.__qualname__
        self.__doc__ = py_func.__doc__
        self.__module__ = py_func.__module__
        self.__wrapped__ = py_func

    def compiled(self):
        """Return the numba dispatcher, compiling on first use."""
        if self._dispatcher is None:
            if not _backend.use_numba():
                raise RuntimeError(
                    f"{self.__qualname__}: this numba kernel was called under the 'numpy' backend, which never "
                    f"compiles kernels; the op that called it lacks its NumPy path (a prunekit bug).")
            with _LOCK:
                if self._dispatcher is None:
                    _quiet_idle_threads()
                    import numba

                    g = self.py_func.__globals__
                    if self.options.get("parallel") and g.get("prange") is range:
                        g["prange"] = numba.prange
                    for name in self.py_func.__code__.co_names:
                        callee = g.get(name)
                        if isinstance(callee, LazyKernel):
                            g[name] = callee.compiled()
                    self._dispatcher = numba.njit(**self.options)(self.py_func)
                    if self.options.get("parallel"):
                        from . import _threads

                        _threads.install()  # once: OpenBLAS's idle workers then sleep instead of spinning
        return self._dispatcher

    @property
    def serial(self) -> "LazyKernel":
        """The same kernel compiled without ``parallel``: for small inputs, where starting
        the worker threads costs more than the loop, or on a machine already busy."""
        if not self.options.get("parallel"):
            return self
        if self._serial is None:
            import types

            f = self.py_func
            twin = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
            # a distinct qualname gives the on-disk cache its own file for this variant
            twin.__qualname__ = f.__qualname__ + "_serial"
            twin.__module__ = f.__module__
            twin.__doc__ = f.__doc__
            self._serial = LazyKernel(twin, {**self.options, "parallel": False}, self.reference)
        return self._serial

    def for_work(self, work) -> "LazyKernel":
        """This kernel for ``work >= PARALLEL_MIN_WORK``, its single-thread twin below."""
        return self if work >= PARALLEL_MIN_WORK else self.serial

    def __call__(self, *args):
        d = self._dispatcher
        if d is None:
            if self.reference is not None and not _backend.use_numba():
                return self.reference(*args)
            d = self.compiled()
        elif _backend._current == "numpy":  # compiled earlier, but the learner switched to the references
            if self.reference is None:
                self.compiled()  # raises the error above
            return self.reference(*args)
        return d(*args)

    def __repr__(self):
        state = "compiled" if self._dispatcher is not None else "not yet compiled"
        return f"<numba kernel {self.__qualname__} ({state})>"


def njit(func=None, *, reference=None, **options):
    """Decorator: like ``numba.njit(cache=True, **options)`` but compiled lazily.

    ``reference``: the NumPy function with the kernel's signature that runs instead
    under the ``"numpy"`` backend.
    """
    if func is not None and callable(func):
        return LazyKernel(func, options, reference)
    return lambda f: LazyKernel(f, options, reference)
