"""Keep NumPy's BLAS threads from spinning on the cores that prunekit's kernels need.

The problem
-----------
A training step of a small CNN alternates between BLAS matrix products (NumPy's
OpenBLAS, with its own pthreads pool) and numba kernels (im2col, pooling, col2im,
with numba's OpenMP pool). After each product OpenBLAS keeps its workers
*spinning* for about 0.1 s (2^28 cycles), waiting for more work. On a 2-core
machine the next numba kernel then shares a core with a spinning thread, and the
half of its work on that core runs at a fraction of its speed. Measured here: a
LeNet-5 step at batch 128 took 22-25 ms this way and 14 ms when OpenBLAS's
workers go to sleep as soon as their job is done. The cost of sleeping: a
product that follows another one must wake the workers (a few microseconds),
which makes pure-BLAS models (LeNet-300-100) about 10 % slower, so this is only
done in processes that run prunekit's parallel kernels.

The fix
-------
OpenBLAS reads its spin time from ``OPENBLAS_THREAD_TIMEOUT`` (2^n cycles, n >= 4)
when it starts its threads. NumPy has started them long before prunekit runs, so
:func:`install` sets the variable (unless you did), makes OpenBLAS re-read its
environment (``openblas_read_env``) and stops its threads
(``blas_thread_shutdown_``, what OpenBLAS itself does after a fork); the next
parallel product starts them again with the short spin. It is installed the
first time a parallel prunekit kernel is compiled. Set ``PRUNEKIT_QUIET_BLAS=0``
to leave OpenBLAS alone; :func:`status` says what happened.

(A tried and rejected alternative: OpenBLAS 0.3.27+ can hand its parallel jobs to
a caller-supplied callback, which could run them on numba's pool. It was as fast,
but two Python threads solving linear systems at the same time deadlocked in
LAPACK's parallel LU, and a process-wide hook must never do that.)
"""
from __future__ import annotations

import ctypes
import os

__all__ = ["install", "status", "matmul", "SPIN_EXPONENT", "SMALL_PRODUCT"]

SPIN_EXPONENT = "4"
"""OPENBLAS_THREAD_TIMEOUT we set: workers spin 2^4 cycles (i.e. not at all) after a job."""

_STATE = {"installed": False, "reason": "not tried yet", "libraries": []}


def _openblas_libraries():
    """Loaded shared libraries whose file name mentions OpenBLAS (Linux: from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if ".so" in os.path.basename(p))


def _openblas_with(*symbols):
    """``[(path, CDLL)]`` of the loaded OpenBLAS libraries that export all of ``symbols``."""
    libs = []
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if all(hasattr(lib, name) for name in symbols):
            libs.append((path, lib))
    return libs


def install():
    """Make NumPy's OpenBLAS workers sleep right after each job, if possible; returns :func:`status`.

    Call it from the thread that uses BLAS, not while another thread is inside a BLAS call.
    """
    if _STATE["reason"] != "not tried yet":
        return status()
    if os.environ.get("PRUNEKIT_QUIET_BLAS", "") == "0":
        _STATE["reason"] = "disabled by PRUNEKIT_QUIET_BLAS=0"
        return status()
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        _STATE["reason"] = f"OPENBLAS_THREAD_TIMEOUT={os.environ['OPENBLAS_THREAD_TIMEOUT']} set by you: left as it is"
        return status()
    libs = _openblas_with("openblas_read_env", "blas_thread_shutdown_")
    if not libs:
        _STATE["reason"] = "no loaded OpenBLAS that can re-read its environment (MKL, or another BLAS)"
        return status()
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = SPIN_EXPONENT
    for path, lib in libs:
        lib.openblas_read_env()
        lib.blas_thread_shutdown_()  # threads restart, with the short spin, on the next parallel product
        _STATE["libraries"].append(path)
    _STATE.update(installed=True, reason=f"OpenBLAS workers sleep after each job "
                                         f"(OPENBLAS_THREAD_TIMEOUT={SPIN_EXPONENT})")
    return status()


def status():
    """``{"installed": bool, "reason": str, "libraries": [paths]}``."""
    return {"installed": _STATE["installed"], "reason": _STATE["reason"], "libraries": list(_STATE["libraries"])}


# =========================================================================== small products on one thread

SMALL_PRODUCT = 1 << 21
"""Products with fewer multiply-adds than this run on one BLAS thread (see :func:`matmul`)."""
_OPENBLAS_SMALL = 1 << 18   # OpenBLAS itself runs GEMMs below 4 x 65536 multiply-adds on one thread
_LOCAL = {"set": "not looked up"}


def _set_local_threads():
    """OpenBLAS's per-calling-thread thread count setter (0.3.27+; the first OpenBLAS loaded), or None."""
    if _LOCAL["set"] == "not looked up":
        libs = _openblas_with("openblas_set_num_threads_local")
        _LOCAL["set"] = libs[0][1].openblas_set_num_threads_local if libs else None
    return _LOCAL["set"]


def matmul(a, b):
    """``a @ b``, on one BLAS thread when the product is small.

    OpenBLAS splits a GEMM over its threads from 2^18 multiply-adds up. Waking the
    (sleeping, see above) workers costs more than that much work takes on one core,
    and a busy machine makes it far worse (a 1.8 M multiply-add product: 38 us on
    one thread, 52 us to 8 ms on two). So between 2^18 and :data:`SMALL_PRODUCT`
    multiply-adds the product runs on one thread, set for the calling thread only
    (``openblas_set_num_threads_local``) and reset right after; other threads and
    the rest of the program keep OpenBLAS's setting. As with any change of thread
    count, a product may differ from its two-thread result in the last bits (some
    OpenBLAS kernels block the sum differently on one thread).
    """
    macs = a.size * b.shape[-1] if b.ndim == 2 else SMALL_PRODUCT
    if not _OPENBLAS_SMALL <= macs < SMALL_PRODUCT:
        return a @ b
    set_local = _set_local_threads()
    if set_local is None:
        return a @ b
    set_local(1)
    try:
        return a @ b
    finally:
        set_local(0)  # 0: back to the process-wide setting
