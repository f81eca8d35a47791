"""Levels and SNR scaling for mixing, and finding a source folder's audio files.

File read/convert/encode/decode is ``common.audio`` (re-exported here for the recipes); inside the
system audio is float32 mono at ``SAMPLE_RATE`` (16 kHz).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from common.audio import (  # noqa: F401 (re-exported for the recipes)
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    AudioFileError,
    audio_info,
    decode_audio,
    encode_flac,
    to_mono_16k,
)
from common.audio import read_audio as _read_audio
from sharding.errors import SourceError

EPS = 1e-12


def read_audio(path: str | Path, *, convert: bool = True) -> np.ndarray:
    """A file as float32 mono 16 kHz [N] (``common.audio.read_audio``), errors as SourceError; with
    ``convert=False`` other rates/channels are refused instead of converted."""
    try:
        if not convert:
            info = audio_info(path)
            if info.samplerate != SAMPLE_RATE or info.channels != 1:
                raise SourceError(f"{path}: expected mono {SAMPLE_RATE} Hz, got {info.channels} ch at {info.samplerate} Hz")
        return _read_audio(path)
    except AudioFileError as e:
        raise SourceError(str(e)) from None


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + EPS))


def db_to_amp(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def scale_noise_to_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Scale ``noise`` so that power(clean)/power(noise) equals ``snr_db`` (whole-signal)."""
    gain = rms(clean) / (rms(noise) * db_to_amp(snr_db))
    return (noise * gain).astype(np.float32)


def fit_length(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random crop to ``n`` samples, or tile (loop) a shorter signal up to ``n``."""
    if len(x) >= n:
        start = int(rng.integers(0, len(x) - n + 1))
        return x[start : start + n]
    reps = math.ceil(n / max(len(x), 1))
    return np.tile(x, reps)[:n]


def mix_at_level(
    clean: np.ndarray, noise: np.ndarray, snr_db: float, level_dbfs: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Mix at ``snr_db`` and scale both to a mixture RMS of ``level_dbfs``, avoiding clipping.

    Returns (noisy, clean, applied_level_dbfs); clean and noisy share one gain.
    """
    noise = scale_noise_to_snr(clean, noise, snr_db)
    noisy = clean + noise
    gain = db_to_amp(level_dbfs) / rms(noisy)
    peak = float(np.max(np.abs(noisy))) * gain
    if peak > 0.99:
        gain *= 0.99 / peak
    level = 20 * math.log10(rms(noisy) * gain)
    return (noisy * gain).astype(np.float32), (clean * gain).astype(np.float32), level


def list_audio(folder: str | Path, *, what: str = "audio") -> list[Path]:
    """Sorted audio files under ``folder`` (recursive); SourceError when missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder}: {what} folder does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise SourceError(f"{folder}: {what} folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return files
