"""How the process's C heap treats freed memory: kept for the next step instead of handed back to the kernel.

Stage one (I3D on the CPU) and the stacked trainer allocate and free the same large blocks every batch or step:
hundreds of MB of I3D activations, a study's first-layer gradient (30 heads: 31 MB). By default glibc serves
such blocks with fresh mmaps and trims the heap after large frees, so every batch page-faults them in again:
measured on a 2-core EPYC, a quarter of I3D's CPU time in the kernel, and ~10% of a loss study's time. Keeping
them costs nothing extraction or training would not reach anyway: the process holds its peak memory.
"""
from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_SETTINGS = ((_M_MMAP_THRESHOLD, 512 << 20),   # blocks up to 512 MB come from the heap, where freed ones are reused
             (_M_TRIM_THRESHOLD, (2 << 30) - 1),  # free memory at the heap's top is kept up to 2 GB
             (_M_TOP_PAD, 1 << 30))           # and the heap grows in 1 GB steps of address space (touched lazily)
_DONE: list[bool] = []


def keep_freed_memory() -> bool:
    """Set the heap up once per process; True where it took effect. Nothing changes where the C library is not
    glibc, or where the user tuned malloc through its environment variables (MALLOC_*_)."""
    if _DONE:
        return _DONE[0]
    ok = False
    if sys.platform.startswith("linux") and not any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        try:
            mallopt = ctypes.CDLL(None).mallopt
            ok = all(mallopt(option, value) == 1 for option, value in _SETTINGS)
        except (OSError, AttributeError):
            ok = False
    _DONE.append(ok)
    return ok
