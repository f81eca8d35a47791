"""Does computing the discriminator's PESQ targets slow a GPU-speed training step? (training/loop.py)

The real `train_step` runs (STFTs, losses, both optimizers, the real PesqPool with its worker
processes), but the generator and discriminator are stand-ins whose forward/backward *sleep* for a
GPU-like share of a model step of T ms (30/60/120): G forward 30%, G backward 50%, each D forward 5%,
D backward 5%. Sleeping is what the host thread does while a GPU computes (it waits in a sync), so
the CPU stays free for the PESQ workers as on a GPU node.

Per T it prints (the variants' steps interleaved, so host-load drift hits all alike) the mean step time without PESQ targets (the pool replaced by one that returns
constant scores instantly: the reference), with targets in the overlapped order (default, PESQ
during G's backward) and in the authors' order (PESQ awaited before G's update), their ratios to
the reference, and the time each step spent blocked waiting for the targets ("wait": what is left
on the critical path; the rest of the difference is CPU contention between PESQ workers and the
step's own CPU work; the workers run at niceness 10 so the loop's host thread wins that contest).
Acceptance: overlapped <= 1.10 x reference at 60 ms.

    python benchmarks/bench_pesq_overlap.py [--steps 20] [--batch 2] [--seconds 2] [--workers 2] [--niceness 10]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn as nn

from training import pesq_targets
from training.loop import StepContext, train_step
from training.losses import LossWeights
from training.models.dualpath import STFT_400
from training.pesq_targets import PesqPool


class _Sleep(torch.autograd.Function):
    """Identity that sleeps `fwd` s in forward and `bwd` s in backward."""

    @staticmethod
    def forward(ctx, x, fwd: float, bwd: float):
        time.sleep(fwd)
        ctx.bwd = bwd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        time.sleep(ctx.bwd)
        return g, None, None


class TimedGenerator(nn.Module):
    """A learnable magnitude gain; forward/backward take the G share of a T-second model step."""

    def __init__(self, step_s: float):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))
        self.step_s, self.stft = step_s, STFT_400

    def forward(self, mag, pha):
        mag = _Sleep.apply(mag * self.gain, 0.30 * self.step_s, 0.50 * self.step_s)
        return mag, pha, torch.stack((mag * torch.cos(pha), mag * torch.sin(pha)), -1)


class TimedDiscriminator(nn.Module):
    """A learnable score in (0, 1); each forward takes 5% of T, its backward 5% (once per D step)."""

    def __init__(self, step_s: float):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.step_s = step_s

    def forward(self, a, b):
        x = torch.sigmoid(self.w * (a - b).abs().mean(dim=(1, 2)))
        return _Sleep.apply(x, 0.05 * self.step_s, 0.05 * self.step_s / 2)


class InstantPool:
    """No PESQ: constant targets, returned at once (the reference)."""

    def submit(self, clean, est):
        class Job:
            def result(self):
                return np.full(len(clean), 0.5, np.float32), np.ones(len(clean), bool)

        return Job()


def speech_like(batch: int, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Voiced, syllable-modulated harmonics plus noise: PESQ scores it (no 'no utterance' failures)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    rows = []
    for _ in range(batch):
        f0 = rng.uniform(100, 220)
        voiced = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 12))
        rows.append(0.2 * voiced * np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t), 0, None))
    clean = torch.tensor(np.stack(rows), dtype=torch.float32)
    return {"clean": clean, "noisy": clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))}


class WaitTimer:
    """Wraps a pool: seconds the training step spent blocked in `job.result()` (the critical path)."""

    def __init__(self, pool):
        self.pool, self.waited = pool, 0.0

    def submit(self, clean, est):
        job, timer = self.pool.submit(clean, est), self

        class Job:
            def result(self):
                t0 = time.perf_counter()
                try:
                    return job.result()
                finally:
                    timer.waited += time.perf_counter() - t0

        return Job()


def _context(step_s: float, pool, overlap: bool) -> StepContext:
    torch.manual_seed(0)
    G, D = TimedGenerator(step_s), TimedDiscriminator(step_s)
    opt = lambda m: torch.optim.AdamW(m.parameters(), lr=1e-4)  # noqa: E731
    return StepContext(G, D, opt(G), opt(D), G.stft, LossWeights(), torch.device("cpu"), 1, pool,
                       pesq_overlap=overlap)


def time_variants(step_s: float, pool, batch: dict, steps: int) -> dict[str, float]:
    """Mean step seconds of the three variants, their steps interleaved (host load drifts alike)."""
    timers = {"overlap": WaitTimer(pool), "authors": WaitTimer(pool)}
    ctxs = {"ref": _context(step_s, InstantPool(), True), "overlap": _context(step_s, timers["overlap"], True),
            "authors": _context(step_s, timers["authors"], False)}
    total = dict.fromkeys(ctxs, 0.0)
    for i in range(steps + 1):
        for name, ctx in ctxs.items():
            t0 = time.perf_counter()
            train_step(ctx, batch)
            if i:  # step 0 warms up
                total[name] += time.perf_counter() - t0
            elif name in timers:
                timers[name].waited = 0.0
    return {k: v / steps for k, v in total.items()} | {f"{k}_wait": t.waited / steps for k, t in timers.items()}


def pesq_alone(pool: PesqPool, batch: dict, repeats: int = 5) -> float:
    """Seconds the pool needs for one batch's targets, nothing else running in this process."""
    c, e = batch["clean"].numpy(), batch["noisy"].numpy()
    pool.normalized_pesq(c, e)
    t0 = time.perf_counter()
    for _ in range(repeats):
        pool.normalized_pesq(c, e)
    return (time.perf_counter() - t0) / repeats


def run(step_ms: list[float], steps: int, batch_size: int, seconds: float, workers: int) -> tuple[float, list[dict]]:
    torch.set_num_threads(1)
    batch = speech_like(batch_size, int(seconds * 16000), seed=0)
    rows = []
    with PesqPool(workers) as pool:
        alone = pesq_alone(pool, batch)
        for ms in step_ms:
            t = time_variants(ms / 1000, pool, batch, steps)
            rows.append({"model_ms": ms, "ref_ms": 1e3 * t["ref"], "overlap_ms": 1e3 * t["overlap"],
                         "authors_ms": 1e3 * t["authors"], "overlap_ratio": t["overlap"] / t["ref"],
                         "authors_ratio": t["authors"] / t["ref"], "overlap_wait_ms": 1e3 * t["overlap_wait"],
                         "authors_wait_ms": 1e3 * t["authors_wait"]})
    return alone, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2, help="segments per rank and step")
    ap.add_argument("--seconds", type=float, default=2.0, help="segment length (2 s: MambAttention)")
    ap.add_argument("--workers", type=int, default=2, help="PESQ worker processes (trainer.pesq_workers)")
    ap.add_argument("--model-ms", type=float, nargs="+", default=[30, 60, 120])
    ap.add_argument("--niceness", type=int, default=pesq_targets.PESQ_NICENESS,
                    help="CPU priority offset of the PESQ workers (0: same priority as the training loop)")
    args = ap.parse_args(argv)
    pesq_targets.PESQ_NICENESS = args.niceness
    alone, rows = run(args.model_ms, args.steps, args.batch, args.seconds, args.workers)
    print(f"PESQ targets vs step time: batch {args.batch} x {args.seconds:g} s, {args.workers} PESQ workers, "
          f"niceness {args.niceness}, {args.steps} steps; PESQ alone {1e3 * alone:.1f} ms per batch; host load {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'model ms':>9} {'no PESQ ms':>11} {'overlap ms':>11} {'ratio':>6} {'wait ms':>8} "
          f"{'authors ms':>11} {'ratio':>6} {'wait ms':>8}")
    for r in rows:
        print(f"{r['model_ms']:9.0f} {r['ref_ms']:11.1f} {r['overlap_ms']:11.1f} {r['overlap_ratio']:6.3f} "
              f"{r['overlap_wait_ms']:8.1f} {r['authors_ms']:11.1f} {r['authors_ratio']:6.3f} {r['authors_wait_ms']:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
