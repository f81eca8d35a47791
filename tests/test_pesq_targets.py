"""The metric discriminator's PESQ targets (`training/pesq_targets.py`): the pool equals the serial scores
and the pesq library, isolates failed segments, survives a killed worker, runs below the trainer's priority."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pesq import pesq
from test_metrics import SR, noisy_version, speech_like

from training.evaluation.measures import MetricError
from training.pesq_targets import PESQ_NICENESS, PesqPool


def test_pesq_pool_matches_serial_and_isolates_failures():
    clean = np.stack([speech_like(2.0, seed=20 + i) for i in range(5)])
    est = np.stack([noisy_version(c, 0.0005 * (i + 1), seed=i) for i, c in enumerate(clean)])
    clean[3] = 0.0  # silent crop: PESQ fails for this segment only
    expected = [pesq(SR, c, e, "wb") if i != 3 else math.nan for i, (c, e) in enumerate(zip(clean, est))]
    expected = (np.asarray(expected) - 1.0) / 3.5
    with PesqPool(num_workers=2) as pool:
        scores, ok = pool.normalized_pesq(clean, est)
        assert ok.tolist() == [True, True, True, False, True]
        assert scores.dtype == np.float32 and scores.shape == (5,)
        np.testing.assert_allclose(scores[ok], expected[ok], atol=1e-6)
        assert math.isnan(scores[3])
        job = pool.submit(clean[:2], est[:2])  # asynchronous form
        np.testing.assert_allclose(job.result()[0], expected[:2], atol=1e-6)
        with pytest.raises(MetricError, match=r"\[B, N\]"):
            pool.normalized_pesq(clean, est[:, :100])
    assert pool._pool is None
    serial_scores, serial_ok = PesqPool(num_workers=0).normalized_pesq(clean, est)
    np.testing.assert_array_equal(serial_ok, ok)
    np.testing.assert_allclose(serial_scores, scores, atol=1e-7, equal_nan=True)


def test_pesq_pool_survives_a_killed_worker():
    import os
    import signal
    import time

    clean = np.stack([speech_like(2.0, seed=40 + i) for i in range(2)])
    est = np.stack([noisy_version(c, 0.001, seed=i) for i, c in enumerate(clean)])
    with PesqPool(num_workers=2) as pool:
        expected, _ = pool.normalized_pesq(clean, est)
        for pid in list(pool.executor._processes):  # as the OOM killer would
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        scores, ok = pool.normalized_pesq(clean, est)  # scored anyway, the pool is restarted
        assert ok.all() and np.allclose(scores, expected)
        scores, ok = pool.normalized_pesq(clean, est)
        assert ok.all() and np.allclose(scores, expected)
        assert len(pool.executor._processes) > 0


def test_pesq_pool_workers_run_below_the_training_loop_priority():
    """The discriminator's PESQ workers are niced (PESQ_NICENESS) so they never take CPU from the
    process feeding the GPU; measured by benchmarks/bench_pesq_overlap.py (1.15 -> 1.05 x at 60 ms)."""
    import os

    base = os.nice(0)
    with PesqPool(num_workers=1) as pool:
        assert pool.executor.submit(os.nice, 0).result() == min(19, base + PESQ_NICENESS)
    with PesqPool(num_workers=0) as pool:  # in-process scoring does not renice the trainer
        pool.normalized_pesq(np.zeros((1, 16000), np.float32) + 0.1, np.zeros((1, 16000), np.float32) + 0.1)
    assert os.nice(0) == base
