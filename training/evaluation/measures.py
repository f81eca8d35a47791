"""The speech-enhancement measures of one signal pair, each a plain function of float arrays (no torch).

Definitions as the field computes them (``docs``: /work/shared/reference/models.md):

- ``pesq_wb``: wide-band PESQ, ITU-T P.862.2 (``pesq`` package, mode 'wb', 16 kHz), MOS-LQO in [1.04, 4.64].
- ``estoi``: extended STOI, ``pystoi.stoi(clean, enhanced, 16000, extended=True)``; ``extended=False``: the classic one.
- ``si_sdr``: alpha = <s_hat, s> / ||s||^2; 10 log10(||alpha s||^2 / ||alpha s - s_hat||^2) dB.
- ``ssnr``: segmental SNR, 30 ms Hann-like frames (0.5 (1 - cos(2 pi n / (N + 1))), n = 1..N), hop N/4,
  per frame 10 log10(E_s / (E_err + eps) + eps) clipped to [-10, 35] dB, mean over frames (the frame
  count ``int(len / hop - N / hop)`` of the widely used Loizou-derived Python code).
- ``dnsmos``: reference-free DNSMOS P.835 (sig, bak, ovrl), only when the optional ``speechmos`` package
  is installed (``pip install .[dnsmos]``).

The composite measures CSIG/CBAK/COVL build on these (``training.evaluation.composite``); choosing,
guarding and averaging measures by name is ``training.evaluation.metrics``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from common.errors import InputError

SAMPLE_RATE = 16000
SSNR_FRAME_MS = 30.0
SSNR_MIN_DB = -10.0
SSNR_MAX_DB = 35.0
SSNR_EPS = 1e-10


class MetricError(InputError):
    """Bad metric request (unknown metric name, wrong rank or rate): one line naming what was expected."""


def si_sdr(clean: np.ndarray, enhanced: np.ndarray) -> float:
    """Scale-invariant SDR in dB. NaN for a silent reference; +inf when the estimate is a scaled copy."""
    s = np.asarray(clean, dtype=np.float64)
    e = np.asarray(enhanced, dtype=np.float64)
    energy = float(np.dot(s, s))
    if energy == 0.0:
        return math.nan
    target = (float(np.dot(e, s)) / energy) * s
    residual = target - e
    num, den = float(np.dot(target, target)), float(np.dot(residual, residual))
    if den == 0.0:
        return math.inf if num > 0 else math.nan
    if num == 0.0:
        return -math.inf
    return 10.0 * math.log10(num / den)


def ssnr_window(frame_len: int) -> np.ndarray:
    """0.5 (1 - cos(2 pi n / (N + 1))) for n = 1..N (float64 [N])."""
    n = np.arange(1, frame_len + 1, dtype=np.float64)
    return 0.5 * (1.0 - np.cos(2.0 * np.pi * n / (frame_len + 1)))


def ssnr_frames(clean: np.ndarray, enhanced: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Per-frame clipped segmental SNR in dB, float64 [num_frames] (empty when shorter than two frames)."""
    s = np.asarray(clean, dtype=np.float64)
    e = np.asarray(enhanced, dtype=np.float64)
    frame_len = int(round(SSNR_FRAME_MS * sr / 1000.0))
    hop = frame_len // 4
    num_frames = int(s.shape[0] / hop - frame_len / hop)
    if num_frames <= 0:
        return np.zeros(0)
    win = ssnr_window(frame_len)
    s_frames = np.lib.stride_tricks.sliding_window_view(s, frame_len)[::hop][:num_frames]
    e_frames = np.lib.stride_tricks.sliding_window_view(e, frame_len)[::hop][:num_frames]
    snr = np.empty(num_frames)
    block = 2048  # frames at a time: memory stays bounded for hour-long files
    for i in range(0, num_frames, block):
        sw = s_frames[i : i + block] * win
        ew = e_frames[i : i + block] * win
        sig = np.sum(sw**2, axis=1)
        err = np.sum((sw - ew) ** 2, axis=1)
        snr[i : i + block] = 10.0 * np.log10(sig / (err + SSNR_EPS) + SSNR_EPS)
    return np.clip(snr, SSNR_MIN_DB, SSNR_MAX_DB)


def ssnr(clean: np.ndarray, enhanced: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Segmental SNR in dB: mean of :func:`ssnr_frames`; NaN when the signal is shorter than two frames."""
    frames = ssnr_frames(clean, enhanced, sr)
    return float(np.mean(frames)) if frames.size else math.nan


def pesq_wb(clean: np.ndarray, enhanced: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Wide-band PESQ (raises ``pesq.PesqError`` subclasses, e.g. NoUtterancesError, on failure)."""
    from pesq import pesq

    if sr != SAMPLE_RATE:
        raise MetricError(f"wide-band PESQ needs {SAMPLE_RATE} Hz audio, got {sr} Hz")
    return float(pesq(sr, np.asarray(clean), np.asarray(enhanced), "wb"))


def estoi(clean: np.ndarray, enhanced: np.ndarray, sr: int = SAMPLE_RATE, extended: bool = True) -> float:
    """Extended (or classic) STOI; raises ValueError when pystoi finds too few speech frames (where
    pystoi itself would warn and return 1e-5)."""
    from pystoi import stoi

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(np.asarray(clean), np.asarray(enhanced), sr, extended=extended))
    for w in caught:
        if "Not enough STFT frames" in str(w.message):
            raise ValueError("too few non-silent STFT frames for STOI")
    return value


def dnsmos_available() -> bool:
    """True when the optional ``speechmos`` package (DNSMOS ONNX models) can be imported."""
    try:
        import speechmos.dnsmos  # noqa: F401
    except Exception:
        return False
    return True


def dnsmos(enhanced: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, float]:
    """DNSMOS P.835 {'dnsmos_sig', 'dnsmos_bak', 'dnsmos_ovrl'} of one 16 kHz signal via ``speechmos``
    (ONNX models shipped in the package; clips under 9.01 s are repeated to that length, as DNSMOS does)."""
    from speechmos import dnsmos as _dnsmos

    # speechmos refuses samples outside [-1, 1]; clip as writing a 16-bit file would
    x = np.clip(np.asarray(enhanced, dtype=np.float32), -1.0, 1.0)
    out = _dnsmos.run(x, sr)
    return {"dnsmos_sig": float(out["sig_mos"]), "dnsmos_bak": float(out["bak_mos"]),
            "dnsmos_ovrl": float(out["ovrl_mos"])}
