"""Composite measures CSIG / CBAK / COVL (Hu & Loizou, IEEE TASLP 16(1), 2008), as the VoiceBank
literature computes them at 16 kHz.

    CSIG = 3.093 - 1.029 LLR + 0.603 PESQ - 0.009 WSS
    CBAK = 1.634 + 0.478 PESQ - 0.007 WSS + 0.063 segSNR
    COVL = 1.594 + 0.805 PESQ - 0.512 LLR - 0.007 WSS          each clipped to [1, 5]

Frames of 30 ms with 75 % overlap and the window 0.5 (1 - cos(2 pi n / (N + 1))), n = 1..N, all three
measures over ``int(len / hop - win / hop)`` frames (Loizou's count):
- LLR: log-likelihood ratio of the LPC models (order 16 above 10 kHz, else 10; autocorrelation method),
  ``log(a_e R_c a_e^T / a_c R_c a_c^T)`` with R_c the clean frame's autocorrelation (Toeplitz), not
  clipped (the composite's variant), mean over the 95 % lowest frames;
- WSS: Klatt's weighted spectral slope over 25 critical bands (Gaussian filters), Kmax 20, Klocmax 1,
  mean over the 95 % lowest frames. As the reference script of the VoiceBank literature (CMGAN's
  ``compute_metrics``, copied by MP-SENet and its successors) computes it on float input in [-1, 1]:
  each frame is scaled by ``WSS_SCALE`` = 1/32768 (that script was written for int16 samples) before the
  band energies are floored at 1e-10 (-100 dB), so quiet bands hit the floor sooner than on int16 input;
- segSNR: ``training.evaluation.measures.ssnr`` (the same frames, clipped to [-10, 35] dB);
- PESQ: wide-band (``training.evaluation.measures.pesq_wb``), as in the common Python implementations used for
  VoiceBank-DEMAND tables (Loizou's MATLAB used narrow-band PESQ).
Inputs: float mono clean and enhanced [N] at 16 kHz in [-1, 1], equal lengths.
The numbers equal that reference script's to 1e-6 on the same files (tests/test_fidelity_composite.py
runs it); LLR, WSS (with the scaling) and segSNR also equal ``pysepm-evo``'s.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import LinAlgError, solve_toeplitz

from training.evaluation.measures import SAMPLE_RATE, pesq_wb, ssnr, ssnr_window

FRAME_S, ALPHA = 0.03, 0.95
WSS_SCALE = 1 / 32768  # the reference script's frame scaling (int16 full scale), see the docstring
# Critical bands (centre frequency, bandwidth in Hz) of Klatt's WSS as in Loizou's composite measure.
_CENTRES = (50.0, 120.0, 190.0, 260.0, 330.0, 400.0, 470.0, 540.0, 617.372, 703.378, 798.717, 904.128, 1020.38,
            1148.30, 1288.72, 1442.54, 1610.70, 1794.16, 1993.93, 2211.08, 2446.71, 2701.97, 2978.04, 3276.17,
            3597.63)
_BANDWIDTHS = (70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 77.3724, 86.0056, 95.3398, 105.411, 116.256, 127.914,
               140.423, 153.823, 168.154, 183.457, 199.776, 217.153, 235.631, 255.255, 276.072, 298.126, 321.465,
               346.136)


def _frames(x: np.ndarray, sr: int) -> np.ndarray:
    """Windowed frames [K, win] (float64), K = int(N / hop - win / hop)."""
    win = round(FRAME_S * sr)
    hop = int(np.floor((1 - 0.75) * FRAME_S * sr))
    k = int(len(x) / hop - win / hop)
    if k < 1:
        raise ValueError(f"too short for the composite measures: {len(x)} samples")
    view = np.lib.stride_tricks.sliding_window_view(np.asarray(x, dtype=np.float64), win)[::hop][:k]
    return view * ssnr_window(win)


def _lowest_mean(d: np.ndarray) -> float:
    d = np.sort(d)
    return float(np.mean(d[: int(round(len(d) * ALPHA))]))


def _lpc(r: np.ndarray) -> np.ndarray:
    """[1, -a_1, ..., -a_P] from autocorrelation lags r[0..P]."""
    try:
        a = solve_toeplitz(r[:-1], r[1:])
    except (LinAlgError, ValueError):
        a = np.zeros(len(r) - 1)
    return np.concatenate([[1.0], -a])


def llr(clean: np.ndarray, enhanced: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Mean LLR over the 95 % lowest frames (unclipped)."""
    eps = np.finfo(np.float64).eps
    order = 10 if sr < 10_000 else 16
    fc, fe = _frames(np.asarray(clean, np.float64) + eps, sr), _frames(np.asarray(enhanced, np.float64) + eps, sr)
    win = fc.shape[1]

    def acorr(f):
        return np.stack([np.sum(f[:, : win - k] * f[:, k:], axis=1) for k in range(order + 1)], axis=1)

    rc, re = acorr(fc), acorr(fe)
    out = np.empty(len(fc))
    for i in range(len(fc)):
        ac, ae = _lpc(rc[i]), _lpc(re[i])
        idx = np.abs(np.subtract.outer(np.arange(order + 1), np.arange(order + 1)))
        toe = rc[i][idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = (ae @ toe @ ae) / (ac @ toe @ ac)
        frac = np.inf if np.isnan(frac) else (1000.0 if frac <= 0 else frac)
        out[i] = np.log(frac)
    return _lowest_mean(out)


def _critical_filters(n_half: int, sr: int) -> np.ndarray:
    j = np.arange(n_half)
    max_freq = sr / 2
    min_factor = np.exp(-30.0 / (2.0 * 2.303))  # -30 dB point
    rows = []
    for fc, bw_hz in zip(_CENTRES, _BANDWIDTHS):
        f0 = np.floor(fc / max_freq * n_half)
        bw = bw_hz / max_freq * n_half
        row = np.exp(-11 * ((j - f0) / bw) ** 2 + np.log(_BANDWIDTHS[0]) - np.log(bw_hz))
        rows.append(row * (row > min_factor))
    return np.stack(rows)  # [25, n_half]


def _local_peaks(slope: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """For each band: the energy at the nearest spectral peak (up the slope if rising, else down)."""
    nb = len(energy)
    peaks = np.empty(len(slope))
    for i in range(len(slope)):
        n = i
        if slope[i] > 0:
            while n < nb - 1 and slope[n] > 0:
                n += 1
            peaks[i] = energy[n - 1]
        else:
            while n >= 0 and slope[n] <= 0:
                n -= 1
            peaks[i] = energy[n + 1]
    return peaks


def wss(clean: np.ndarray, enhanced: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Weighted spectral slope distance (frames scaled by ``WSS_SCALE``), mean over the 95 % lowest frames."""
    kmax, klocmax = 20.0, 1.0
    fc = _frames(np.asarray(clean, np.float64) * WSS_SCALE, sr)
    fe = _frames(np.asarray(enhanced, np.float64) * WSS_SCALE, sr)
    n_fft = int(2 ** np.ceil(np.log2(2 * fc.shape[1])))
    filters = _critical_filters(n_fft // 2, sr)

    def log_energy(f):  # [K, 25] dB, energies floored at 1e-10
        spec = np.abs(np.fft.rfft(f, n_fft, axis=1))[:, : n_fft // 2] ** 2
        return 10 * np.log10(np.maximum(spec @ filters.T, 1e-10))

    ec, ee = log_energy(fc), log_energy(fe)
    sc, se = np.diff(ec, axis=1), np.diff(ee, axis=1)
    dist = np.empty(len(ec))
    for i in range(len(ec)):
        pc, pe = _local_peaks(sc[i], ec[i]), _local_peaks(se[i], ee[i])
        wc = kmax / (kmax + ec[i].max() - ec[i, :-1]) * klocmax / (klocmax + pc - ec[i, :-1])
        we = kmax / (kmax + ee[i].max() - ee[i, :-1]) * klocmax / (klocmax + pe - ee[i, :-1])
        w = (wc + we) / 2
        dist[i] = np.sum(w * (sc[i] - se[i]) ** 2) / np.sum(w)
    return _lowest_mean(dist)


def composite_from_parts(pesq: float, llr_mean: float, wss_mean: float, seg_snr: float) -> dict[str, float]:
    """The regression of Hu & Loizou (2008), each score clipped to [1, 5]."""
    csig = 3.093 - 1.029 * llr_mean + 0.603 * pesq - 0.009 * wss_mean
    cbak = 1.634 + 0.478 * pesq - 0.007 * wss_mean + 0.063 * seg_snr
    covl = 1.594 + 0.805 * pesq - 0.512 * llr_mean - 0.007 * wss_mean
    return {k: float(min(5.0, max(1.0, v))) for k, v in (("csig", csig), ("cbak", cbak), ("covl", covl))}


def composite(clean: np.ndarray, enhanced: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, float]:
    """{"csig", "cbak", "covl"} of ``enhanced`` against ``clean`` (16 kHz float [N] each)."""
    return composite_from_parts(pesq_wb(clean, enhanced, sr), llr(clean, enhanced, sr), wss(clean, enhanced, sr),
                                ssnr(clean, enhanced, sr))
