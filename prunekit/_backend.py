"""Two backends, one set of results: ``"numpy"`` runs each op's readable reference, ``"numba"`` its kernel.

Every accelerated op in prunekit (convolution, pooling, optimizer updates, the
sparse and int8 products) exists twice: a few lines of NumPy that say what it
computes, and a numba kernel that computes the same thing fast. The backend says
which one runs::

    import prunekit as pk
    pk.get_backend()              # "numba" (or "numpy" where numba is not installed)
    with pk.backend("numpy"):     # read-along mode: every op runs its NumPy reference
        loss = train_one_step()
    pk.set_backend("numba")       # or PRUNEKIT_BACKEND=numpy in the environment

Under ``"numpy"`` numba is never imported. The choice is process-wide (like NumPy's
print options), not per thread. The tests hold both backends to the same results.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

from ._validate import check_option, fail

__all__ = ["get_backend", "set_backend", "backend", "use_numba", "BACKENDS"]

BACKENDS = ("numpy", "numba")

_current = None  # resolved on first use, so that `import prunekit` reads no environment and imports nothing


def _check(name):
    return check_option("name", name, BACKENDS)


def _numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


def _default() -> str:
    """PRUNEKIT_BACKEND if set, else "numba" where numba is installed, else "numpy" (with one warning)."""
    name = os.environ.get("PRUNEKIT_BACKEND", "numba").strip().lower() or "numba"
    if name not in BACKENDS:
        fail("the environment variable PRUNEKIT_BACKEND", "one of {'numpy', 'numba'} (or unset)",
             repr(os.environ["PRUNEKIT_BACKEND"]), where="prunekit")
    if name == "numba" and not _numba_installed():
        warnings.warn("prunekit: numba is not installed, so every op runs its NumPy reference "
                      "(correct, but slower). `pip install numba` for the fast kernels, or set "
                      "PRUNEKIT_BACKEND=numpy to silence this warning.", RuntimeWarning, stacklevel=3)
        name = "numpy"
    return name


def get_backend() -> str:
    """The backend in force: ``"numpy"`` (readable references) or ``"numba"`` (compiled kernels)."""
    global _current
    if _current is None:
        _current = _default()
    return _current


def use_numba() -> bool:
    """True when ops should run their numba kernels (the check every accelerated op makes)."""
    return (_current or get_backend()) == "numba"


def set_backend(name: str) -> None:
    """Make every op run its NumPy reference (``"numpy"``) or its numba kernel (``"numba"``)."""
    global _current
    _check(name)
    if name == "numba" and not _numba_installed():
        raise ModuleNotFoundError("set_backend(): the 'numba' backend needs numba (`pip install numba`); "
                                  "the 'numpy' backend needs nothing more.")
    _current = name


@contextlib.contextmanager
def backend(name: str):
    """``with backend("numpy"): ...`` runs the block on that backend, then restores the previous one."""
    _check(name)
    previous = get_backend()
    set_backend(name)
    try:
        yield name
    finally:
        set_backend(previous)
