"""Compressed-magnitude STFT used by every model (MP-SENet / SEMamba / MambAttention convention).

Forward: centered Hann-window STFT with reflect padding; magnitude ``|X| ** compress`` (0.3) and
phase ``angle(X)``. Inverse: ``mag ** (1 / compress)``, rebuild the complex spectrum, iSTFT.
Shapes: waveforms ``[B, N]``; spectra ``[B, F, T]`` with ``F = n_fft // 2 + 1`` and
``T = N // hop + 1``; the compressed complex spectrum ``com`` is ``[B, F, T, 2]`` (real, imag).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class STFTSpec:
    """STFT settings. ``n_fft``/``hop``/``win`` in samples; ``compress`` is the magnitude exponent."""

    n_fft: int
    hop: int
    win: int
    compress: float = 0.3

    def __post_init__(self):
        if self.n_fft <= 0 or self.hop <= 0 or not 0 < self.win <= self.n_fft:
            raise ValueError(f"STFTSpec: need 0 < win <= n_fft and hop > 0, got {self}")
        if not self.compress > 0:
            raise ValueError(f"STFTSpec: compress must be > 0, got {self.compress}")

    @property
    def n_freq(self) -> int:
        """Number of frequency bins F."""
        return self.n_fft // 2 + 1

    def n_frames(self, n_samples: int) -> int:
        """Number of frames T for a centered STFT of ``n_samples`` samples."""
        return n_samples // self.hop + 1

    def window(self, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.hann_window(self.win, device=device, dtype=dtype)


def inverse_rms(wav: torch.Tensor) -> torch.Tensor:
    """``1 / RMS`` of ``wav [..., N]`` over its last axis, shape ``[..., 1]`` (float32, floored at 1e-5 RMS):
    the papers' input normalisation at inference. Summed in float64, so the factor is the same float32
    whatever the thread count: a factor one ulp apart changes the rounding noise in the imaginary parts
    of the first STFT frame (a reflect-padded, symmetric frame: real up to rounding), whose phases then
    flip between +pi and -pi at the model's input, and `evaluate` with 1 or 2 threads gave PESQ 4e-4
    and SI-SDR 0.003 dB apart on a 16-file test set."""
    return torch.rsqrt(wav.double().pow(2).mean(-1, keepdim=True).clamp_min(1e-10)).float()


def mag_pha_stft(wav: torch.Tensor, spec: STFTSpec):
    """``wav[B, N]`` -> ``(mag[B,F,T], pha[B,F,T], com[B,F,T,2])`` with compressed magnitude."""
    x = torch.stft(
        wav,
        spec.n_fft,
        hop_length=spec.hop,
        win_length=spec.win,
        window=spec.window(wav.device, wav.dtype),
        center=True,
        pad_mode="reflect",
        normalized=False,
        return_complex=True,
    )
    re, im = x.real, x.imag
    # The small constants keep sqrt/atan2 differentiable at exact zeros (same as the papers' code).
    mag = torch.sqrt(re * re + im * im + 1e-9)
    pha = torch.atan2(im + 1e-10, re + 1e-5)
    mag = mag.pow(spec.compress)
    com = torch.stack((mag * torch.cos(pha), mag * torch.sin(pha)), dim=-1)
    return mag, pha, com


def mag_pha_istft(mag: torch.Tensor, pha: torch.Tensor, spec: STFTSpec, length: int | None = None):
    """Compressed ``mag[B,F,T]`` and ``pha[B,F,T]`` -> ``wav[B, N]`` (``N = length`` or ``(T-1)*hop``)."""
    mag = mag.pow(1.0 / spec.compress)
    com = torch.complex(mag * torch.cos(pha), mag * torch.sin(pha))
    return torch.istft(
        com,
        spec.n_fft,
        hop_length=spec.hop,
        win_length=spec.win,
        window=spec.window(mag.device, mag.dtype),
        center=True,
        length=length,
    )
