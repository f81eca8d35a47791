"""Idle OpenMP threads sleep instead of spinning, for CPU inference (``orchestrate enhance`` and
``evaluate``).

After each parallel PyTorch op, libgomp's workers spin-wait for the next one (its default). At
inference the C kernels (``training.kernels.native.run_items``) run between those ops on threads
of their own, and the spinning workers take cores from them. Measured on 2 cores with
``OMP_WAIT_POLICY=PASSIVE``: a BiMamba layer on 4 x 1601 x 64 took 26.5 instead of 41.4 ms, on
100 x 1601 x 64 584 instead of 621 ms; the time-axis attention (100 x 1601, 8 heads) 772 instead
of 895 ms; mambattention on 10 s of audio 11.4 instead of 11.9 s (two rounds, alternating);
rwsa-xs no change beyond the noise (bench_enhance ratios 2.69 / 2.53 against 2.72 / 2.45).
libgomp reads the policy once, when torch loads it, so :func:`passive` must run before torch is
imported. Training keeps libgomp's default: its ops run back to back, where spinning pays.
"""

from __future__ import annotations

import os
import sys


def passive() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for this process and its children; True when set. Does
    nothing when torch is already imported (too late) or the user chose a policy."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
