"""Inference attention: the C kernel (training.kernels.attention_cpu) against PyTorch's SDPA on the TF blocks'
shapes for 10 s of audio, float32, no autograd. Reference: ``F.scaled_dot_product_attention`` on the
same packed QKV (``sdpa_from_qkv``), measured in the same run; ratio = SDPA time / kernel time.

    python benchmarks/bench_attention.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# (what, sequences, length, channels, heads): time axis then frequency axis of each model at 10 s
SHAPES = [
    ("mambattention time", 100, 1601, 64, 8),
    ("mambattention freq", 1601, 100, 64, 8),
    ("rwsa-xs level-1 time", 128, 1336, 16, 4),
    ("rwsa-xs level-1 freq", 1336, 128, 16, 4),
    ("mpsenet time (dh 16)", 100, 1601, 64, 4),
]


def _best(fn, args: tuple, repeats: int) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    import torch

    from training.kernels.attention_cpu import attention_from_qkv, kernel_applies, sdpa_from_qkv

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"# float32, {a.threads} threads, best of {a.repeats}; ratio = SDPA / kernel (> 1: kernel faster)")
    with torch.inference_mode():
        for what, s, length, c, heads in SHAPES:
            qkv = torch.randn(s, length, 3 * c)
            if not kernel_applies(qkv, heads):
                print(f"{what:24s} kernel not available here")
                continue
            t_k = _best(attention_from_qkv, (qkv, heads), a.repeats)
            t_s = _best(sdpa_from_qkv, (qkv, heads), a.repeats)
            err = float((attention_from_qkv(qkv, heads) - sdpa_from_qkv(qkv, heads)).abs().max())
            print(f"{what:24s} [{s} x {length}, {heads} heads of {c // heads}]  kernel {1000 * t_k:7.1f} ms  "
                  f"SDPA {1000 * t_s:7.1f} ms  ratio {t_s / t_k:5.2f}x  max |diff| {err:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
