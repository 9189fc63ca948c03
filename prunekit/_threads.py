"""One thread pool for NumPy's BLAS and for prunekit's numba kernels.

The problem
-----------
A training step of a small CNN alternates between BLAS matrix products (NumPy's
OpenBLAS, with its own pthreads pool) and numba kernels (im2col, pooling, with
numba's OpenMP pool). After each product OpenBLAS keeps its workers *spinning*
for about 0.1 s, waiting for more work. On a 2-core machine the next numba
kernel then shares a core with a spinning thread, and the kernel's half of the
work on that core runs at a fraction of its speed. Measured here: a LeNet-5 step
at batch 128 took 25 ms with the two pools, 16.5 ms when OpenBLAS's workers
sleep at once (``OPENBLAS_THREAD_TIMEOUT=4``, which must be set before NumPy
loads, and which makes pure-BLAS models slower).

The fix
-------
OpenBLAS (0.3.27 and later) lets the caller run its parallel jobs:
``openblas_set_threads_callback_function(cb)``. Whenever OpenBLAS would hand
``numjobs`` jobs to its own workers, it calls ``cb`` instead, and ``cb`` must run
``dojob(i, jobdata + i * elsize, dojob_data)`` for every ``i``, all at the same
time (the jobs of a matrix product wait for each other). We give it a tiny numba
``prange`` loop, so the jobs run on numba's OpenMP workers: one pool, no
spinning strangers, and the workers' short spin (see ``_jit``) serves both.

This is installed the first time a parallel prunekit kernel is compiled (the
moment numba's pool comes to life), only when it is safe:

* NumPy's OpenBLAS exports the callback setter (not MKL, not an old OpenBLAS);
* numba runs on the ``omp`` threading layer (the workqueue layer cannot run a
  parallel loop started from another one);
* OpenBLAS never asks for more concurrent jobs than numba has threads.

A forked child process goes back to OpenBLAS's own pool (OpenMP is not
fork-safe). Set ``PRUNEKIT_SHARED_POOL=0`` to leave OpenBLAS alone.
:func:`status` says what happened.
"""
from __future__ import annotations

import ctypes
import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["install", "status", "calls"]

_STATE = {"installed": False, "reason": "not tried yet", "libraries": []}
_CALLS = np.zeros(1, dtype=np.int64)  # jobs batches run through the shared pool (for tests)
_CALLS_ADDR = _CALLS.ctypes.data
_LOCK = np.zeros(1, dtype=np.int64)  # 1 while a batch of OpenBLAS jobs runs (see _callback)
_LOCK_ADDR = _LOCK.ctypes.data
_sched_yield = ctypes.CDLL(None).sched_yield
_sched_yield.argtypes = []
_sched_yield.restype = ctypes.c_int
_SETTERS = ("openblas_set_threads_callback_function", "scipy_openblas_set_threads_callback_function64_",
            "scipy_openblas_set_threads_callback_function")


@intrinsic
def _call_dojob(typingctx, fn, i, job, data):
    """Call the C function at address ``fn`` as ``void fn(int, void *, int)``."""
    def codegen(context, builder, sig, args):
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(32), i8p, ir.IntType(32)])
        target = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(target, [args[1], builder.inttoptr(args[2], i8p), args[3]])
        return context.get_dummy_value()
    return types.void(types.int64, types.int32, types.int64, types.int32), codegen


@intrinsic
def _count(typingctx, addr):
    """Atomically add 1 to the int64 at address ``addr``."""
    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "monotonic")
        return context.get_dummy_value()
    return types.void(types.int64), codegen


@intrinsic
def _try_lock(typingctx, addr):
    """Atomically set the int64 at ``addr`` from 0 to 1; True if this call did it."""
    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        res = builder.cmpxchg(ptr, ir.Constant(ir.IntType(64), 0), ir.Constant(ir.IntType(64), 1),
                              "acquire", "monotonic")
        return builder.extract_value(res, 1)
    return types.boolean(types.int64), codegen


@intrinsic
def _unlock(typingctx, addr):
    """Set the int64 at ``addr`` back to 0 (release)."""
    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        builder.store_atomic(ir.Constant(ir.IntType(64), 0), ptr, "release", 8)
        return context.get_dummy_value()
    return types.void(types.int64), codegen


@numba.njit(parallel=True, cache=True)
def _run_jobs(dojob, numjobs, elsize, jobdata, dojob_data):
    """All ``numjobs`` jobs at once, job ``i`` on its own thread (static schedule, numjobs <= threads)."""
    for i in numba.prange(numjobs):
        _call_dojob(dojob, np.int32(i), jobdata + i * elsize, dojob_data)


# not cached: the counter's and the lock's addresses are compiled in as constants; they change per process
@numba.cfunc(types.void(types.int32, types.int64, types.int32, types.int64, types.int64, types.int32))
def _callback(sync, dojob, numjobs, elsize, jobdata, dojob_data):
    """``openblas_threads_callback``: (sync, dojob, numjobs, jobdata_elsize, jobdata, dojob_data).

    One batch of jobs at a time: OpenBLAS picks each job's scratch buffer by its
    thread number, so two batches from two Python threads at once (both numbering
    their jobs 0, 1, ...) would share buffers. Measured before this lock: wrong
    products from concurrent ``a.T @ b`` calls. A second caller yields until the
    first batch is done; BLAS calls too small for threads never get here.
    """
    _count(_CALLS_ADDR)
    while not _try_lock(_LOCK_ADDR):
        _sched_yield()
    if numjobs == 1:
        _call_dojob(dojob, np.int32(0), jobdata, dojob_data)
    else:
        threads = numba.get_num_threads()
        if numjobs > threads:  # never split a product over fewer threads than jobs: its jobs wait for each other
            numba.set_num_threads(numjobs)
            _run_jobs(dojob, numjobs, elsize, jobdata, dojob_data)
            numba.set_num_threads(threads)
        else:
            _run_jobs(dojob, numjobs, elsize, jobdata, dojob_data)
    _unlock(_LOCK_ADDR)


def _openblas_libraries():
    """Loaded shared libraries whose file name mentions OpenBLAS (Linux: from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if ".so" in os.path.basename(p))


def _setters():
    found = []
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            if hasattr(lib, name):
                found.append((path, lib, getattr(lib, name)))
                break
    return found


def _max_blas_threads(lib):
    """The most threads this OpenBLAS can ever use: its processor count (a thread limit can be raised later)."""
    for name in ("openblas_get_num_procs", "scipy_openblas_get_num_procs64_", "scipy_openblas_get_num_procs"):
        if hasattr(lib, name):
            return int(getattr(lib, name)())
    return None


def _uninstall_in_child():
    for _, _, setter in _setters():
        setter(ctypes.c_void_p(None))
    _STATE.update(installed=False, reason="forked child: OpenBLAS uses its own threads again")


def install():
    """Route NumPy's OpenBLAS parallel jobs through numba's thread pool, if safe; returns :func:`status`."""
    if _STATE["installed"] or _STATE["reason"] != "not tried yet":
        return status()
    if os.environ.get("PRUNEKIT_SHARED_POOL", "") == "0":
        _STATE["reason"] = "disabled by PRUNEKIT_SHARED_POOL=0"
        return status()
    setters = _setters()
    if not setters:
        _STATE["reason"] = "no loaded OpenBLAS with a threads callback (MKL, or OpenBLAS older than 0.3.27)"
        return status()
    _run_jobs(0, 0, 0, 0, 0)  # starts numba's pool, so the threading layer is known
    if numba.threading_layer() != "omp":
        _STATE["reason"] = f"numba's threading layer is {numba.threading_layer()!r}, not 'omp'"
        return status()
    most = numba.config.NUMBA_NUM_THREADS
    for path, lib, setter in setters:
        wanted = _max_blas_threads(lib)
        if wanted is None or wanted > most:  # OpenBLAS could ask for more concurrent jobs than we can run
            continue
        setter(ctypes.c_void_p(_callback.address))
        _STATE["libraries"].append(path)
    if _STATE["libraries"]:
        _STATE.update(installed=True, reason="OpenBLAS runs its parallel jobs on numba's OpenMP threads")
        os.register_at_fork(after_in_child=_uninstall_in_child)
    else:
        _STATE["reason"] = f"OpenBLAS may use more threads than numba's {most}"
    return status()


def status():
    """``{"installed": bool, "reason": str, "libraries": [paths]}``."""
    return {"installed": _STATE["installed"], "reason": _STATE["reason"], "libraries": list(_STATE["libraries"])}


def calls():
    """How many times OpenBLAS has handed its jobs to the shared pool (a test hook)."""
    return int(_CALLS[0])
