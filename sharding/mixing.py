"""Mixers of the public corpus scripts, re-implemented from their documented behaviour.

``dns_snr_mixer``: the DNS Challenge 2020 synthesizer -- clean and noise peak-normalised then set to
-25 dBFS RMS, noise scaled to the whole-signal SNR, the mixture set to a random integer level in
[level_min, level_max) dBFS (both signals share the gain), and re-normalised to a 0.99 peak if it
clips. ``activity`` is the fraction of active 50 ms frames used by its clean-activity threshold.
"""

from __future__ import annotations

import numpy as np

from sharding.audio import SAMPLE_RATE

EPS = 1e-10


def _rms(x: np.ndarray) -> float:
    # not np.dot: multi-threaded BLAS burns CPU on busy nodes for a 1-D reduction
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def normalize_rms(x: np.ndarray, target_dbfs: float = -25.0) -> np.ndarray:
    return x * (10 ** (target_dbfs / 20) / (_rms(x) + EPS))


def activity(x: np.ndarray, *, frame_s: float = 0.05, threshold_db: float = -50.0) -> float:
    """Fraction of 50 ms frames whose energy is above ``threshold_db`` after normalising to -25 dBFS."""
    n = int(frame_s * SAMPLE_RATE)
    if len(x) < n:
        return 0.0
    y = normalize_rms(np.asarray(x, dtype=np.float64))
    frames = y[: len(y) // n * n].reshape(-1, n)
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + EPS)
    return float(np.mean(energy > threshold_db))


def dns_snr_mixer(clean: np.ndarray, noise: np.ndarray, snr_db: float, level_dbfs: float,
                  *, target_dbfs: float = -25.0, clip_threshold: float = 0.99
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """Mix like the DNS 2020 synthesizer; returns (noisy, clean, applied level dBFS), float32 [N]."""
    n = max(len(clean), len(noise))
    clean = np.asarray(clean, np.float64)
    noise = np.asarray(noise, np.float64)
    if len(clean) < n:
        clean = np.pad(clean, (0, n - len(clean)))
    if len(noise) < n:
        noise = np.pad(noise, (0, n - len(noise)))
    # The synthesizer peak-normalises, then sets -25 dBFS RMS: the same as setting the RMS directly.
    target = 10 ** (target_dbfs / 20)
    clean = clean * (target / (_rms(clean) + EPS))
    noise = noise * (target / (_rms(noise) + EPS))
    noise *= _rms(clean) / (10 ** (snr_db / 20)) / (_rms(noise) + EPS)
    noisy = clean + noise
    gain = 10 ** (level_dbfs / 20) / (_rms(noisy) + EPS)
    peak = np.max(np.abs(noisy)) * gain
    if peak > clip_threshold:
        gain /= peak / (clip_threshold - EPS)
    noisy *= gain
    clean *= gain
    level = 20 * np.log10(_rms(noisy) + EPS)
    return noisy.astype(np.float32), clean.astype(np.float32), float(level)


def concat_to_length(pieces: list[np.ndarray], num_samples: int, silence_s: float = 0.2) -> np.ndarray:
    """Concatenate with ``silence_s`` gaps and cut to ``num_samples``."""
    gap = np.zeros(int(silence_s * SAMPLE_RATE), dtype=np.float32)
    out = []
    for i, p in enumerate(pieces):
        if i:
            out.append(gap)
        out.append(p)
    y = np.concatenate(out) if out else np.zeros(0, np.float32)
    return np.pad(y, (0, max(0, num_samples - len(y))))[:num_samples].astype(np.float32)
