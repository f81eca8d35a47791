"""PESQ targets of the metric discriminator: per-step normalised wide-band PESQ of a batch, (PESQ - 1) / 3.5,
scored in a persistent process pool while the step's other work runs (``training.loop``, ``training.losses``).

Torch-free (the pool's workers import this module).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from training.evaluation.measures import MetricError, pesq_wb
from training.worker_pool import make_pool


def _pesq_many(clean: np.ndarray, est: np.ndarray) -> list[float]:
    """Worker: wb-PESQ of each row of clean/est [b, N]; NaN where PESQ fails."""
    out = []
    for c, e in zip(clean, est):
        try:
            out.append(pesq_wb(c, e))
        except Exception:
            out.append(math.nan)
    return out


PESQ_NICENESS = 10  # PesqPool workers run below the training loop (bench_pesq_overlap.py --niceness)


class PesqPool:
    """A persistent process pool for per-step normalised PESQ, (PESQ - 1) / 3.5, of a batch.

    Create it once per training run and ``close()`` it at the end, or use it as a context manager;
    ``num_workers=0`` computes in this process. Workers start with 'forkserver' (or 'spawn'), so the
    program's main module must be import-safe (``if __name__ == "__main__":``), as for any such pool.
    """

    def __init__(self, num_workers: int | None = None):
        if num_workers is None:  # the CPUs this process may use (SLURM's allocation, not the node's)
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            num_workers = min(8, max(1, cpus))
        self.num_workers = int(num_workers)
        self._pool: ProcessPoolExecutor | None = None
        if self.num_workers > 0:
            self._pool = make_pool(self.num_workers, PESQ_NICENESS)
            for _ in range(self.num_workers):  # start the workers now, not during the first training step
                self._pool.submit(math.sqrt, 1.0)

    def _check(self, clean: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.ascontiguousarray(np.asarray(clean, dtype=np.float32))
        e = np.ascontiguousarray(np.asarray(est, dtype=np.float32))
        if c.ndim != 2 or c.shape != e.shape:
            raise MetricError(f"PesqPool expects clean and est of equal shape [B, N], got {c.shape} and {e.shape}")
        return c, e

    def submit(self, clean_batch: np.ndarray, est_batch: np.ndarray) -> PesqJob:
        """Start scoring [B, N] batches; ``.result()`` gives (scores [B], ok [B]). Lets PESQ overlap GPU work."""
        c, e = self._check(clean_batch, est_batch)
        if self._pool is None:
            return PesqJob([_done(_pesq_many(c, e))], c.shape[0])
        groups = np.array_split(np.arange(c.shape[0]), min(self.num_workers, c.shape[0]))
        try:
            futures = [self._pool.submit(_pesq_many, c[g], e[g]) for g in groups if g.size]
        except BrokenProcessPool:
            self._restart()
            return PesqJob([_done(_pesq_many(c, e))], c.shape[0])
        return PesqJob(futures, c.shape[0], fallback=(self, c, e))

    @property
    def executor(self) -> ProcessPoolExecutor | None:
        """The worker pool (None when ``num_workers=0``), e.g. for ``evaluate_pairs`` during validation."""
        return self._pool

    def normalized_pesq(self, clean_batch: np.ndarray, est_batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [B] = (PESQ - 1) / 3.5, NaN where not ok; ok bool [B]) for [B, N] batches."""
        return self.submit(clean_batch, est_batch).result()

    def _restart(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = make_pool(self.num_workers, PESQ_NICENESS)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> PesqPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _done(value: list[float]) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


class PesqJob:
    """Pending PESQ scores of one batch (see :meth:`PesqPool.submit`)."""

    def __init__(self, futures: list[Future], batch: int, fallback=None):
        self._futures = futures
        self._batch = batch
        self._fallback = fallback

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            raw = [v for fut in self._futures for v in fut.result()]
        except BrokenProcessPool:  # a worker died (OOM kill): restart the pool, score this batch here
            pool, c, e = self._fallback
            pool._restart()
            raw = _pesq_many(c, e)
        pesq_values = np.asarray(raw, dtype=np.float64)
        assert pesq_values.shape == (self._batch,)
        ok = np.isfinite(pesq_values)
        scores = np.where(ok, (pesq_values - 1.0) / 3.5, np.nan).astype(np.float32)
        return scores, ok
