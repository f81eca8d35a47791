"""Cost of the per-step PESQ targets (PesqPool) and of test-set scoring (evaluate_pairs).

Measures, on procedural speech-like audio (tests/test_metrics.py::speech_like):
    pesq      wall and CPU time of one wide-band PESQ of a 2 s and a 3 s segment (serial)
    pool      PesqPool.normalized_pesq on a batch of 8 x 2 s, per worker count and start method,
              with torch imported in the parent as in the trainer; includes the pool start time
    evaluate  evaluate_pairs over 16 files of 3 s (PESQ, ESTOI, SI-SDR, SSNR), serial vs workers

The load average is printed first: on a shared machine, wall times are only comparable at equal load.

    python benchmarks/bench_metrics.py --workers 1 2 4 8
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _timed(fn, reps: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms of this process) over ``reps`` calls."""
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(1e3 * (time.perf_counter() - w))
        cpus.append(1e3 * (time.process_time() - c))
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--methods", nargs="+", default=["forkserver", "spawn"])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import numpy as np
    import torch  # noqa: F401  (the trainer has torch loaded when it starts the pool)
    from test_metrics import noisy_version, speech_like

    from training import worker_pool
    from training.evaluation import measures
    from training.evaluation import metrics as M
    from training.pesq_targets import PesqPool

    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    for sec in (2.0, 3.0):
        c = speech_like(sec, seed=1)
        e = noisy_version(c, 0.002)
        wall, cpu = _timed(lambda c=c, e=e: measures.pesq_wb(c, e), args.reps)
        print(f"pesq {sec:.0f} s segment: {wall:.1f} ms wall, {cpu:.1f} ms CPU", flush=True)

    clean = np.stack([speech_like(2.0, seed=i) for i in range(8)])
    est = np.stack([noisy_version(c, 0.002, seed=i) for i, c in enumerate(clean)])
    wall, cpu = _timed(lambda: PesqPool(0).normalized_pesq(clean, est), args.reps)
    print(f"pool serial (num_workers=0) batch 8 x 2 s: {wall:.0f} ms wall", flush=True)
    for method in args.methods:
        worker_pool.pool_context = lambda method=method: mp.get_context(method)
        for k in args.workers:
            t0 = time.perf_counter()
            pool = PesqPool(k)
            pool.normalized_pesq(clean[:1], est[:1])
            start = time.perf_counter() - t0
            wall, cpu = _timed(lambda pool=pool: pool.normalized_pesq(clean, est), args.reps)
            pool.close()
            print(f"pool {method} workers={k}: start+first {start:.2f} s, batch 8 x 2 s {wall:.0f} ms wall "
                  f"({cpu:.1f} ms CPU in the parent)", flush=True)

    pairs = []
    for i in range(16):
        c = speech_like(3.0, seed=100 + i)
        pairs.append((f"u{i}", c, noisy_version(c, 0.002, seed=i)))
    for k in [0, *args.workers]:
        t0 = time.perf_counter()
        M.evaluate_pairs(pairs, num_workers=k, progress=False)
        print(f"evaluate 16 x 3 s workers={k}: {time.perf_counter() - t0:.2f} s", flush=True)


if __name__ == "__main__":
    main()
