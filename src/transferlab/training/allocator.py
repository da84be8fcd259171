"""Keep freed tensor memory in the process while training, instead of handing it back to the OS after each step.

glibc serves large allocations with `mmap` and trims the top of its heap on free, so every training step asks the
kernel for fresh zeroed pages for its activations and gradients and page-faults on first touch (an
EfficientNet-Lite0 step spent ~10% of its time in zero-fills of new pages). Raising the mmap threshold to glibc's
maximum (32 MiB) and trimming only past 2 GiB keeps those pages mapped for the next step. Measured speed and memory
effects: docs/training.md#speed-and-memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 2**31 - 1  # the largest an int argument can say


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed memory rather than return it; True where it took effect (False on other
    C libraries, where nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
