"""Real-time factor of ``orchestrate enhance`` on 10 s of audio, per model, on this CPU.

Each model runs in its own child process: a full-size model (the papers' configuration, random
weights: speed does not depend on training) is written as a checkpoint in the training engine's
format, a 10 s 16 kHz noisy file is written, and ``orchestrate enhance`` runs on it through the
real CLI. Reported: the RTF the command prints (model time / audio time), the command's wall time
(load + read + enhance + write) and peak RSS, against the issue's targets (rwsa-xs <= 0.2,
mambattention <= 1.5) as ``target / measured`` (>= 1 meets the target), and the RTF of the same
command with glibc's default malloc (``SE_MALLOC_TUNING=0``) as a ratio to the default run.

    python benchmarks/bench_enhance.py                          # rwsa-xs, mambattention
    python benchmarks/bench_enhance.py --models rwsa-xs --seconds 30 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RTF = {"rwsa-xs": 0.2, "mambattention": 1.5}


def _write_checkpoint(model_name: str, root: Path) -> Path:
    import torch

    from training.checkpoint import MARKER, STATE
    from training.config import load_run_config, to_container
    from training.models import build_model

    cfg = load_run_config(None, [f"model.name={model_name}", "mlflow.enabled=false"])
    torch.manual_seed(0)
    model = build_model(cfg.model.name, **cfg.model.options)
    ckpt = root / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    torch.save({"generator": model.state_dict(), "config": to_container(cfg), "step": 1}, ckpt / STATE)
    (ckpt / MARKER).write_text("1\n")
    return ckpt


def _write_noisy(path: Path, seconds: float) -> None:
    import numpy as np
    import soundfile as sf

    sr = 16000
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / sr
    speech = 0.1 * sum(np.sin(k * phase) / k for k in range(1, 12)) * (1 + np.sin(2 * np.pi * 3 * t)) ** 2 / 4
    sf.write(path, (speech + 0.02 * rng.standard_normal(t.shape)).astype("float32"), sr)


def child(model_name: str, seconds: float, threads: int) -> dict:
    """Build the inputs, then time the real CLI in a grandchild (its own peak RSS)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = _write_checkpoint(model_name, tmp / "run")
        noisy = tmp / "noisy.wav"
        _write_noisy(noisy, seconds)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-c", "import sys; from orchestrator.cli import main; sys.exit(main())",
               "enhance", str(ckpt), str(noisy), "--out", str(tmp / "out")]
        subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)  # warm: kernel cache, page cache
        rtf_default_malloc, _ = _timed_rtf(cmd, {**env, "SE_MALLOC_TUNING": "0"})  # reference: glibc defaults
        rtf, wall = _timed_rtf(cmd, env)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"model": model_name, "seconds": seconds, "threads": threads, "rtf": rtf, "wall_s": wall,
            "peak_mb": peak_mb, "rtf_default_malloc": rtf_default_malloc}


def _timed_rtf(cmd: list[str], env: dict) -> tuple[float, float]:
    """(RTF printed by orchestrate enhance, wall seconds of the command)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    m = re.search(r"real-time factor\s+([0-9.]+)", r.stdout + r.stderr)
    if not m:
        raise RuntimeError(f"no RTF in the output of orchestrate enhance:\n{r.stdout}\n{r.stderr}")
    return float(m.group(1)), wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="rwsa-xs,mambattention")
    p.add_argument("--seconds", type=float, default=10.0, help="audio length (the issue: 10 s)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.seconds, a.threads)))
        return 0
    results = []
    print(f"# orchestrate enhance on {a.seconds:g} s of 16 kHz audio, {a.threads} threads; "
          "ratio = target RTF / measured RTF (>= 1 meets the target)")
    for name in a.models.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", name, "--seconds", str(a.seconds),
                              "--threads", str(a.threads)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            print(f"{name:14s} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        target = TARGET_RTF.get(name)
        ratio = f"target {target:g}  ratio {target / r['rtf']:.2f}" if target else "no target"
        print(f"{name:14s} RTF {r['rtf']:.3f}  command wall {r['wall_s']:.1f} s  peak {r['peak_mb']:.0f} MB  |  {ratio}  |  "
              f"glibc default malloc RTF {r['rtf_default_malloc']:.3f} ({r['rtf_default_malloc'] / r['rtf']:.2f}x slower)")
        results.append(r)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
