"""Shared by the backend parity tests."""
import prunekit as pk


def on_both(fn):
    """``fn()`` under the numba backend and under the numpy backend: (numba result, numpy result)."""
    with pk.backend("numba"):
        fast = fn()
    with pk.backend("numpy"):
        ref = fn()
    return fast, ref
