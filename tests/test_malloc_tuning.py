"""training.kernels.malloc_tuning: with it, a large buffer comes from the heap and, once freed, stays there for
reuse (no fresh mmap to page-fault and zero again); SE_MALLOC_TUNING=0 leaves glibc's default (a
large buffer is its own mmap, unmapped on free). Checked with glibc's own accounting (mallinfo2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import ctypes, json
from training.kernels.malloc_tuning import tune
tuned = tune()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20
p = libc.malloc(size)
ctypes.memset(p, 1, size)
live = libc.mallinfo2()
libc.free(p)
freed = libc.mallinfo2()
print(json.dumps({"tuned": tuned, "mmapped_live": live.hblkhd, "heap_free_after": freed.fordblks}))
"""


def _probe(setting: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SE_MALLOC_TUNING": setting}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_large_buffers_come_from_the_heap_and_stay_for_reuse():
    size = 256 << 20
    tuned, default = _probe("1"), _probe("0")
    assert tuned["tuned"] is True and default["tuned"] is False
    assert default["mmapped_live"] >= size and default["heap_free_after"] < size  # own mmap, unmapped
    # (mmapped_live counts blocks mapped before tune() too: a few hundred KB at interpreter start)
    assert tuned["mmapped_live"] < size // 16 and tuned["heap_free_after"] >= size  # heap, kept after free
