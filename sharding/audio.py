"""Audio at the edges: read/convert/encode/decode, levels and SNR scaling.

Inside the system audio is float32 mono at ``SAMPLE_RATE`` (16 kHz); files and shards convert here.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from sharding.errors import SourceError

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
EPS = 1e-12


def to_mono_16k(x: np.ndarray, sr: int, *, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mix [N, C] or [N] audio to mono and resample ``sr`` -> ``target_sr`` (polyphase). Returns float32 [N']."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sr != target_sr:
        frac = Fraction(target_sr, int(sr))
        x = resample_poly(x, frac.numerator, frac.denominator).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def read_audio(path: str | Path, *, convert: bool = True) -> np.ndarray:
    """Read a file as float32 mono 16 kHz [N]; with ``convert=False`` other rates/channels raise SourceError."""
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise SourceError(f"{path}: cannot decode audio ({e})") from None
    if not convert and (sr != SAMPLE_RATE or x.shape[1] != 1):
        raise SourceError(f"{path}: expected mono {SAMPLE_RATE} Hz, got {x.shape[1]} ch at {sr} Hz")
    return to_mono_16k(x, sr)


def encode_flac(x: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    """float32 [N] in [-1, 1] -> FLAC PCM_16 bytes (clipped to the int16 range)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 32767 / 32768), sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Encoded bytes (any soundfile format) -> (float32 [N, C], sample rate)."""
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return x, sr


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
