"""Common generator interface: spectra in, (magnitude, phase, complex) out, plus ``enhance``.

Every generator maps the noisy compressed magnitude and phase ``[B, F, T]`` to the enhanced
``mag [B,F,T]`` (mask x noisy magnitude), ``pha [B,F,T]`` and ``com [B,F,T,2]``
(``mag * (cos pha, sin pha)``). Subclasses supply ``features(x[B,2,T,F]) -> (mag_feat, pha_feat)``
and the ``mask_decoder`` / ``phase_decoder`` modules.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.stft import STFTSpec, inverse_rms, mag_pha_istft, mag_pha_stft


class SpectralGenerator(nn.Module):
    """Base class. Attributes: ``stft`` (STFTSpec), ``segment_samples`` (training crop, samples),
    ``frame_multiple`` (T must be a multiple of it; ``enhance`` pads for it)."""

    stft: STFTSpec
    segment_samples: int
    frame_multiple: int = 1

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, noisy_mag: torch.Tensor, noisy_pha: torch.Tensor):
        if noisy_mag.dim() != 3 or noisy_mag.shape != noisy_pha.shape:
            raise ValueError(f"expected noisy_mag/noisy_pha [B, F, T], got {tuple(noisy_mag.shape)}")
        if noisy_mag.shape[1] != self.stft.n_freq:
            raise ValueError(
                f"expected F = {self.stft.n_freq} bins for {self.stft}, got {noisy_mag.shape[1]}"
            )
        if noisy_mag.shape[2] % self.frame_multiple:
            raise ValueError(f"T = {noisy_mag.shape[2]} frames must be a multiple of {self.frame_multiple}")
        mag_tf = noisy_mag.transpose(1, 2)[:, None]  # [B, 1, T, F]
        x = torch.cat((mag_tf, noisy_pha.transpose(1, 2)[:, None]), dim=1)
        mag_feat, pha_feat = self.features(x)
        mag = (self.mask_decoder(mag_feat) * mag_tf)[:, 0].transpose(1, 2)
        pha = self.phase_decoder(pha_feat)[:, 0].transpose(1, 2)
        com = torch.stack((mag * torch.cos(pha), mag * torch.sin(pha)), dim=-1)
        return mag, pha, com

    def enhance(self, wav: torch.Tensor) -> torch.Tensor:
        """Enhance ``wav[N]`` or ``wav[B, N]`` (16 kHz float) of any length; same shape out.

        The noisy input is scaled to RMS 1 and the output divided by the same factor (as in the
        papers); the signal is zero-padded so that the frame count fits the model, then cropped.
        Gradients flow unless the caller uses ``torch.no_grad()``.
        """
        squeeze = wav.dim() == 1
        if squeeze:
            wav = wav[None]
        n = wav.shape[-1]
        norm = inverse_rms(wav)
        hop, mult = self.stft.hop, self.frame_multiple
        frames = -(-n // hop) + 1  # frames of the hop-padded signal
        frames = -(-frames // mult) * mult
        padded = (frames - 1) * hop
        x = F.pad(wav * norm, (0, padded - n))
        mag, pha, _ = mag_pha_stft(x, self.stft)
        mag, pha, _ = self(mag, pha)
        out = mag_pha_istft(mag, pha, self.stft, length=padded)[:, :n] / norm
        return out[0] if squeeze else out
