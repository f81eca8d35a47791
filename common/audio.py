"""Audio at the edges of the system, written once for every package.

Inside the system audio is float32 mono at ``SAMPLE_RATE`` (16 kHz); files convert here: read anything
libsndfile decodes (any rate/channels -> mono 16 kHz, NaN/Inf refused), write 16-bit WAV atomically,
encode/decode FLAC bytes for shards.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from common.atomic import atomic_write_bytes
from common.errors import InputError

SAMPLE_RATE = 16000
FULL_SCALE = 32767 / 32768  # the largest 16-bit PCM sample as float
# The extensions of the containers libsndfile decodes by header (wav, flac, ogg/opus, mp3, aiff, ...):
# a folder is searched for these, the same files a named input may be.
AUDIO_EXTENSIONS = (".aif", ".aifc", ".aiff", ".au", ".caf", ".flac", ".mp3", ".oga", ".ogg", ".opus", ".rf64",
                    ".sd2", ".snd", ".voc", ".w64", ".wav", ".wave")


class AudioFileError(InputError):
    """An audio file that cannot be read or written: one line naming the file."""


def to_mono_16k(x: np.ndarray, sr: int, target_sr: int = SAMPLE_RATE, length: int | None = None) -> np.ndarray:
    """[N] or [N, C] audio at ``sr`` Hz -> float32 [N'] mono at ``target_sr`` (channel mean, polyphase).

    ``length``: trim or zero-pad the result to exactly this many samples (polyphase resampling rounds
    the length up, so a round trip 44.1 -> 16 -> 44.1 kHz may gain a sample: 54,441 -> 54,442)."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 2:
        a = a.mean(axis=1)
    elif a.ndim != 1:
        raise ValueError(f"audio must be [N] or [N, C], got shape {a.shape}")
    if int(sr) != target_sr:
        from scipy.signal import resample_poly

        frac = Fraction(target_sr, int(sr))
        a = resample_poly(a, frac.numerator, frac.denominator)
    if length is not None and a.shape[0] != length:
        a = a[:length] if a.shape[0] > length else np.pad(a, (0, length - a.shape[0]))
    return np.ascontiguousarray(a, dtype=np.float32)


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    """Header of an audio file (samplerate, channels, frames); AudioFileError when it is not audio."""
    try:
        return sf.info(os.fsencode(path))  # bytes: a name that is not valid UTF-8 opens too
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioFileError(f"{path}: cannot decode audio ({' '.join(str(e).split())})") from None


def read_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Any soundfile-readable file -> float32 mono [N] at ``sr`` Hz; AudioFileError names a bad file."""
    try:
        x, file_sr = sf.read(os.fsencode(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioFileError(f"{path}: cannot decode audio ({' '.join(str(e).split())})") from None
    if x.shape[0] == 0:
        raise AudioFileError(f"{path}: no samples")
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.argmax(bad.any(axis=1)))
        raise AudioFileError(f"{path}: {int(bad.sum())} non-finite sample(s) (NaN/Inf), the first at "
                             f"{first / file_sr:.3f} s; repair or drop the file")
    return to_mono_16k(x, file_sr, sr)


def write_wav(path: str | Path, wav: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write float [N] (any array-like, e.g. a CPU tensor) as 16-bit PCM WAV: temp file, fsync, rename.

    Samples are clipped to [-1, 32767/32768] (callers scale louder audio first, see ``fit_full_scale``);
    non-finite audio is refused (AudioFileError), never written; a crash never leaves a truncated file
    under ``path``; the file mode follows the umask (``common.atomic``).
    """
    path = Path(path)
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim != 1:
        raise AudioFileError(f"{path}: expected mono audio [N], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise AudioFileError(f"{path}: not written: the audio holds {int((~np.isfinite(x)).sum())} "
                             f"non-finite sample(s) (NaN/Inf)")
    buf = io.BytesIO()  # encoded in memory: soundfile's write callback would print a full disk's traceback
    sf.write(buf, np.clip(x, -1.0, FULL_SCALE), sr, format="WAV", subtype="PCM_16")
    atomic_write_bytes(path, buf.getbuffer())
    return path


def encode_flac(x: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    """float32 [N] in [-1, 1] -> FLAC PCM_16 bytes (clipped to the 16-bit range)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, FULL_SCALE), sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Encoded bytes (any soundfile format) -> (float32 [N, C], sample rate)."""
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return x, sr


def fit_full_scale(x: np.ndarray) -> tuple[np.ndarray, float]:
    """``x`` scaled down so its peak fits 16-bit PCM (gain 1 when it already fits); returns (audio, gain)."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= FULL_SCALE:
        return x, 1.0
    gain = FULL_SCALE / peak
    return (x * gain).astype(np.float32), gain
