"""Training-step benchmark on CPU: steps/s, peak memory, and PESQ-target time relative to the step.

Each model runs in its own child process (clean peak-RSS accounting). A step is the real
`training.loop.train_step` (G + metric discriminator, PESQ targets in-process). Reported per model:
steps/s, ms/step, peak RSS (MiB, child process), the time of the batch's PESQ targets alone and its
ratio to the whole step (how much a PESQ pool of `pesq_workers` processes has to hide).

    python benchmarks/bench_train.py                                   # all generators, batch 2, 1 s
    python benchmarks/bench_train.py --models rwsa-xs --batch 8 --seconds 1.91 --steps 3
    python benchmarks/bench_train.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _segment(model: str, seconds: float) -> int:
    """A crop near `seconds` whose frame count fits the model's frame multiple."""
    from training.models import build_model

    G = build_model(model, seed=0)
    hop, mult = G.stft.hop, getattr(G, "frame_multiple", 1)
    frames = max(16, round(seconds * 16000 / hop) + 1)
    frames = -(-frames // mult) * mult
    return (frames - 1) * hop


def child(model: str, batch: int, seconds: float, steps: int, threads: int, checkpointing: bool = False) -> dict:
    import numpy as np
    import torch

    from training.loop import StepContext, train_step
    from training.losses import LossWeights
    from training.models import build_model
    from training.models.tf_blocks import set_activation_checkpointing
    from training.pesq_targets import PesqPool

    torch.set_num_threads(threads)
    seg = _segment(model, seconds)
    G, D = build_model(model, seed=0), build_model("metric-discriminator", seed=1)
    set_activation_checkpointing(G, checkpointing)
    opt = lambda m: torch.optim.AdamW(m.parameters(), lr=5e-4, betas=(0.8, 0.99), weight_decay=0.01)  # noqa: E731
    pool = PesqPool(0)
    ctx = StepContext(G, D, opt(G), opt(D), G.stft, LossWeights(), torch.device("cpu"), 1, pool)
    rng = np.random.default_rng(0)
    t = np.arange(seg) / 16000
    clean = np.stack([0.1 * np.sin(2 * np.pi * (200 + 50 * i) * t) * (1 + np.sin(2 * np.pi * 3 * t)) for i in range(batch)])
    noisy = clean + 0.05 * rng.standard_normal(clean.shape)
    b = {"noisy": torch.tensor(noisy, dtype=torch.float32), "clean": torch.tensor(clean, dtype=torch.float32)}
    train_step(ctx, b)  # warm-up (JIT, allocator)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(ctx, b)
    step_s = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    pool.normalized_pesq(b["clean"].numpy(), b["noisy"].numpy())
    pesq_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model, "batch": batch, "segment_samples": seg, "threads": threads, "checkpointing": checkpointing,
            "steps_per_s": 1 / step_s, "ms_per_step": 1000 * step_s, "peak_rss_mib": peak,
            "pesq_ms": 1000 * pesq_s, "pesq_over_step": pesq_s / step_s,
            "params_g": sum(p.numel() for p in G.parameters())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="rwsa-xs,rwsa-s,semamba,mambattention,mpsenet")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.0, help="crop length (the papers: 2 s / 1.91 s)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing of the TF blocks")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.batch, a.seconds, a.steps, a.threads, a.checkpointing)))
        return 0
    rows = []
    for model in a.models.split(","):
        cmd = [sys.executable, __file__, "--child", model, "--batch", str(a.batch), "--seconds", str(a.seconds),
               "--steps", str(a.steps), "--threads", str(a.threads)] + (["--checkpointing"] if a.checkpointing else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{model}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{model:16s} B={r['batch']} seg={r['segment_samples']:6d}  {r['steps_per_s']:7.3f} steps/s "
              f"{r['ms_per_step']:9.0f} ms/step  peak {r['peak_rss_mib']:7.0f} MiB  "
              f"PESQ {r['pesq_ms']:6.0f} ms = {r['pesq_over_step']:.3f} x step", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
