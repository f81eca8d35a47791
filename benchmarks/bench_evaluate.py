"""Wall time of ``orchestrate evaluate`` on a generated test set, against what the machine allows.

A full-size model (random weights: speed does not depend on training) is written as a checkpoint in the
training engine's format, and a test set of ``--files`` clean/noisy pairs of 3-7 s (harmonic speech-like
tone in white noise) is written. Then, on this machine:

  limit_enh   model FLOPs for that audio / the measured sgemm rate: G-MACs per 2 s
              (``training.model_names.GMACS_2S``) x audio seconds / 2 x 2 FLOPs, over the best of a few
              1024x1024 float32 matrix products on every core;
  metrics     the test set's metrics (noisy and enhanced side: 2 pairs a file) measured alone, one worker
              process per core (``training.evaluation.metrics.evaluate_pairs``);
  bound       limit_enh + metrics (the issue's target: wall <= 1.5 x bound);
  wall        ``orchestrate evaluate CKPT --testset T --workers W`` through the real CLI (fresh report
              folder, so nothing is resumed), per W of ``--workers``; ratio = wall / bound.

    python benchmarks/bench_evaluate.py                      # rwsa-xs, 24 files (~2 min of audio), workers 1,2
    python benchmarks/bench_evaluate.py --files 200 --models rwsa-xs,mambattention   # the issue's size
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

METRICS = "pesq,estoi,si_sdr,ssnr"


def write_checkpoint(model_name: str, root: Path) -> Path:
    """A full-size, seeded random-weight checkpoint of ``model_name`` (what `evaluate` loads: the generator
    and the run config; the speed does not depend on the weights)."""
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


def write_testset(root: Path, files: int, seed: int = 0) -> float:
    """``files`` pairs of 3-7 s under root/clean, root/noisy; returns the seconds of audio."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    (root / "clean").mkdir(parents=True)
    (root / "noisy").mkdir()
    total = 0.0
    for i in range(files):
        seconds = float(rng.uniform(3.0, 7.0))
        t = np.arange(int(seconds * 16000)) / 16000
        phase = 2 * np.pi * np.cumsum(110 + 40 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t)) / 16000
        clean = 0.1 * sum(np.sin(k * phase) / k for k in range(1, 10)) * (1 + np.sin(2 * np.pi * 3 * t)) ** 2 / 4
        noisy = clean + rng.uniform(0.005, 0.05) * rng.standard_normal(t.shape)
        sf.write(root / "clean" / f"u{i:03d}.wav", clean.astype("float32"), 16000)
        sf.write(root / "noisy" / f"u{i:03d}.wav", noisy.astype("float32"), 16000)
        total += len(t) / 16000
    return total


def sgemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Best float32 matrix-product rate of this machine on every core, GFLOP/s."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def metric_seconds(testset: Path) -> float:
    """Wall time of scoring the test set's noisy and (as a stand-in) enhanced side alone, a worker per core."""
    from training.evaluation.metrics import evaluate_pairs
    from training.evaluation.testsets import open_testset

    pairs = [(k, c, x) for k, x, c in open_testset(testset) for _ in range(2)]
    t0 = time.perf_counter()
    evaluate_pairs(pairs, num_workers=len(os.sched_getaffinity(0)), metrics=METRICS.split(","), progress=False)
    return time.perf_counter() - t0


def evaluate_wall(ckpt: Path, testset: Path, out: Path, workers: int) -> float:
    cmd = [sys.executable, "-c", "import sys; from orchestrator.cli import main; sys.exit(main())", "evaluate",
           str(ckpt), "--testset", str(testset), "--out", str(out), "--no-mlflow", "--metrics", METRICS,
           "--workers", str(workers)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"orchestrate evaluate failed ({r.returncode}):\n{r.stderr[-2000:]}")
    lines = [x for x in r.stderr.splitlines() if ": files " in x]
    if lines:
        print(f"    last progress line: {lines[-1].split(': ', 1)[-1]}", flush=True)
    return wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="rwsa-xs")
    p.add_argument("--files", type=int, default=24, help="test-set files, 3-7 s each (the issue's size: 200)")
    p.add_argument("--workers", default="1,2", help="comma-separated --workers values to time")
    a = p.parse_args()
    from training.model_names import GMACS_2S

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        audio = write_testset(tmp / "test", a.files)
        rate = sgemm_gflops()
        metrics = metric_seconds(tmp / "test")
        cores = len(os.sched_getaffinity(0))
        print(f"# {a.files} files, {audio:.0f} s of audio; {cores} cores, sgemm {rate:.1f} GFLOP/s; "
              f"metrics ({METRICS}) alone {metrics:.1f} s", flush=True)
        rows = []
        for name in a.models.split(","):
            ckpt = write_checkpoint(name, tmp / name)
            limit = GMACS_2S[name] * audio / 2 * 2 / rate
            for w in (int(x) for x in a.workers.split(",")):
                wall = evaluate_wall(ckpt, tmp / "test", tmp / f"out-{name}-{w}", w)
                rows.append((name, w, limit, metrics, wall))
                print(f"  {name} --workers {w}: {wall:.1f} s", flush=True)
    print(f"{'model':14s} {'workers':>7s} {'limit_enh s':>11s} {'metrics s':>9s} {'bound s':>8s} {'wall s':>8s} "
          f"{'wall/bound':>10s}")
    for name, w, limit, metrics, wall in rows:
        print(f"{name:14s} {w:7d} {limit:11.1f} {metrics:9.1f} {limit + metrics:8.1f} {wall:8.1f} "
              f"{wall / (limit + metrics):10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
