"""Keep freed training buffers in the process for the next step, instead of handing them back to the OS.

The problem
-----------
A training step allocates the same large arrays every time (im2col columns,
activations, their gradients: about 10 MB for LeNet-5 at batch 128) and frees
them when ``backward()`` drops the graph. glibc's ``malloc`` serves big blocks
with ``mmap`` and gives freed memory at the top of its heap back to the OS
once more than ``M_TRIM_THRESHOLD`` of it is free (by default adjusted on the
fly to twice the largest block freed so far, that is a few tens of MB). So
every step the pages went back to the kernel, and the next step touched them
again: measured, 2,700 page faults a step (10 MB of zeroed 4 KiB pages) and a
LeNet-5 step of 11-17 ms instead of 9-10 ms on a 2-core AMD EPYC.

The fix
-------
:func:`install` raises glibc's two thresholds with ``mallopt``, as the
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` environment variables
would: blocks below :data:`MMAP_THRESHOLD` come from the heap, and up to
:data:`TRIM_THRESHOLD` of free heap is kept for reuse. Measured: 0 page faults
a step. The cost is that a process may hold up to that much freed memory. It is
installed the first time ``backward()`` runs. Set ``PRUNEKIT_MALLOC=0`` to
leave malloc alone; a threshold you set yourself (``MALLOC_*_`` variables or a
``glibc.malloc`` tunable) is left as it is. Not glibc (macOS, musl): nothing to
do. :func:`status` says what happened.
"""
from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["install", "status", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 32 << 20
"""Blocks of 32 MiB or more still get their own ``mmap`` (glibc's largest dynamic threshold on 64-bit)."""
TRIM_THRESHOLD = 256 << 20
"""Up to 256 MiB of free heap is kept for reuse instead of being returned to the OS."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_STATE = {"installed": False, "reason": "not tried yet"}


def install():
    """Raise glibc's mmap and trim thresholds once, unless switched off or set by you; returns :func:`status`."""
    if _STATE["reason"] != "not tried yet":
        return status()
    mine = [k for k in _USER_SETTINGS if k in os.environ]
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        mine.append("GLIBC_TUNABLES")
    if os.environ.get("PRUNEKIT_MALLOC", "") == "0":
        _STATE["reason"] = "disabled by PRUNEKIT_MALLOC=0"
    elif mine:
        _STATE["reason"] = f"{', '.join(mine)} set by you: left as it is"
    elif platform.libc_ver()[0] != "glibc":
        _STATE["reason"] = "not glibc: nothing to tune"
    else:
        libc = ctypes.CDLL(None)
        if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD):
            _STATE.update(installed=True, reason=f"glibc keeps freed blocks: mmap threshold "
                                                 f"{MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB")
        else:
            _STATE["reason"] = "glibc refused the thresholds (mallopt returned 0)"
    return status()


def status():
    """``{"installed": bool, "reason": str}``."""
    return {"installed": _STATE["installed"], "reason": _STATE["reason"]}
