"""glibc malloc settings that keep freed tensor memory for reuse (CPU speed).

By default glibc serves every allocation above a (dynamic, at most 32 MB) threshold with a fresh
``mmap`` and unmaps it on ``free``. A CPU forward pass allocates and frees tensors of tens to
hundreds of MB per layer, so the kernel page-faults and zeroes each one again: on this 2-core
machine that was a third of the time of enhancing 10 s of audio. With these settings every
allocation comes from the heap (no mmap) and up to 1 GB of freed memory stays there for reuse.
Measured (enhance 10 s, model forward): mambattention 24.0 s -> 15.0 s, rwsa-xs 10.0 s -> 7.4 s.
The cost: freed memory below the heap top is not returned to the OS, so RSS stays near the peak
of the process (which an enhancement process needs again for the next file).

:func:`tune` is called by ``orchestrate enhance`` and ``orchestrate evaluate`` before the first
forward pass; set ``SE_MALLOC_TUNING=0`` to leave malloc alone. Training processes keep glibc's
defaults: there it measured no faster (bench_train: rwsa-xs and mambattention steps within 2%),
and a long run whose validation utterances vary in length would fragment a heap that never
returns memory. Elsewhere than glibc/Linux it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # mallopt parameters (malloc.h)
SETTINGS = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20}
_done: bool | None = None


def tune() -> bool:
    """Apply :data:`SETTINGS` with ``mallopt`` (once per process); True when applied."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("SE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(k, v) == 1 for k, v in SETTINGS.items())
    return _done
