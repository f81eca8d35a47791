"""CPU benchmark: forward+backward time per training batch for each model, and the selective scan
backends against the sequential oracle (``tests/scan_oracle.py``).

    .venv/bin/python benchmarks/bench_models.py                       # defaults: a few minutes
    .venv/bin/python benchmarks/bench_models.py --models rwsa-xs,mambattention --batch 2
    .venv/bin/python benchmarks/bench_models.py --frames 64 --threads 2 --skip-scan

Times are wall-clock medians of ``--repeats`` runs after one warm-up, on ``--threads`` intra-op threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from scan_oracle import sequential_selective_scan  # noqa: E402

from training.mamba import scan as scan_mod  # noqa: E402
from training.models import build_model, model_info  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, kernel build or cache load)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, batch: int, frames: int | None, repeats: int) -> tuple[int, float]:
    model = build_model(name, seed=0).train()
    info = model_info(name)
    t = frames or info.stft.n_frames(info.segment_samples)
    g = torch.Generator().manual_seed(0)
    mag = torch.rand(batch, info.stft.n_freq, t, generator=g)
    pha = (torch.rand(batch, info.stft.n_freq, t, generator=g) * 2 - 1) * torch.pi

    def step():
        model.zero_grad(set_to_none=True)
        m, p, c = model(mag, pha)
        (m.square().mean() + p.square().mean() + c.square().mean()).backward()

    return t, _median_time(step, repeats)


def bench_scan(b: int, d: int, n: int, length: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    args = {
        "u": torch.randn(b, d, length, generator=g),
        "delta": torch.randn(b, d, length, generator=g) * 0.5,
        "A": -torch.rand(d, n, generator=g) * 4,
        "B": torch.randn(b, n, length, generator=g),
        "C": torch.randn(b, n, length, generator=g),
        "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, length, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.3,
    }
    fns = {"oracle": sequential_selective_scan, "torch": scan_mod.selective_scan_torch}
    if scan_mod._fused_scan is not None:
        fns["fused"] = scan_mod._fused_scan
    out = {}
    for label, fn in fns.items():
        leaves = {k: v.clone().requires_grad_() for k, v in args.items()}

        def run(fn=fn, leaves=leaves):
            y = fn(**leaves, delta_softplus=True)
            y.square().mean().backward()

        out[label] = _median_time(run, repeats)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="semamba,mambattention,rwsa-xs", help="comma-separated model names")
    p.add_argument("--batch", type=int, default=1, help="training batch size (default 1)")
    p.add_argument("--frames", type=int, help="STFT frames per item (default: the training segment)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--skip-scan", action="store_true", help="skip the scan-vs-oracle comparison")
    p.add_argument("--scan-shape", default="4,256,16,321", help="b,d,n,l for the scan comparison")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"threads {args.threads}, batch {args.batch}, scan backend (auto) {scan_mod.resolve_backend(torch.zeros(1))}"
    )

    print(f"\n{'model':26s} {'T':>5s} {'fwd+bwd s/batch':>16s}")
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        frames, secs = bench_model(name, args.batch, args.frames, args.repeats)
        print(f"{name:26s} {frames:5d} {secs:16.2f}", flush=True)

    if not args.skip_scan:
        b, d, n, length = (int(v) for v in args.scan_shape.split(","))
        times = bench_scan(b, d, n, length, args.repeats)
        print(f"\nselective scan fwd+bwd, b={b} d={d} n={n} l={length} (float32)")
        for label, secs in times.items():
            ratio = times["oracle"] / secs
            print(f"  {label:8s} {secs:8.3f} s   {ratio:6.1f}x faster than the sequential oracle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
