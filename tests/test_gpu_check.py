"""benchmarks/gpu_check.py runs every part that can run on CPU (`--device cpu --quick`) and passes:
a real train_step per model family in fp32 and bf16, a real SIGUSR1 preemption + resume with equal
losses and bitwise-equal weights, CPU forward parity of the checkpoint it wrote, and the kernel part
reporting why it is skipped on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_on_cpu_prints_a_passing_table():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("SE_SCAN_BACKEND", None)
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith("| ") and "| part" not in line]
    parts = [r.split("|")[1].strip() for r in rows]
    assert parts.count("step") == 6  # 3 model families x fp32/bf16
    assert {"resume", "parity", "kernels"} <= set(parts)
    assert all(r.rstrip().endswith("| ok   |") for r in rows), rows
    assert "losses equal at 4 steps" in p.stdout and "max |diff| 0.00e+00" in p.stdout
    assert "skipped: cpu" in p.stdout
