"""Audio files at the edges of ``training``: read anything as float32 mono 16 kHz, write 16-bit WAV atomically."""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac")


class AudioFileError(ValueError):
    """An audio file that cannot be read or written: one line naming the file."""


def to_mono_16k(x: np.ndarray, sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """[N] or [N, C] audio at ``sr`` Hz -> float32 [N'] mono at ``target_sr`` (channel mean, polyphase)."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 2:
        a = a.mean(axis=1)
    elif a.ndim != 1:
        raise ValueError(f"audio must be [N] or [N, C], got shape {a.shape}")
    if int(sr) != target_sr:
        from scipy.signal import resample_poly

        frac = Fraction(target_sr, int(sr))
        a = resample_poly(a, frac.numerator, frac.denominator)
    return np.ascontiguousarray(a, dtype=np.float32)


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    """Header of an audio file (samplerate, channels, frames); AudioFileError when it is not audio."""
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioFileError(f"{path}: cannot decode audio ({' '.join(str(e).split())})") from None


def read_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Any soundfile-readable file -> float32 mono [N] at ``sr`` Hz; AudioFileError names a bad file."""
    try:
        x, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioFileError(f"{path}: cannot decode audio ({' '.join(str(e).split())})") from None
    if x.shape[0] == 0:
        raise AudioFileError(f"{path}: no samples")
    return to_mono_16k(x, file_sr, sr)


def write_wav(path: str | Path, wav: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write float [N] (any array-like, e.g. a CPU tensor) as 16-bit PCM WAV: temp file, fsync, rename.

    Samples are clipped to [-1, 32767/32768]; a crash never leaves a truncated file under ``path``.
    """
    path = Path(path)
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim != 1:
        raise AudioFileError(f"{path}: expected mono audio [N], got shape {x.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            sf.write(f, np.clip(x, -1.0, 32767 / 32768), sr, format="WAV", subtype="PCM_16")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
