"""The papers' losses (MP-SENet / SEMamba / MambAttention / RWSA-MambaUNet training).

Shapes: waveforms [B, N]; compressed magnitude / phase [B, F, T]; complex [B, F, T, 2];
discriminator scores [B] in (0, 1); PESQ targets [B] = (wb-PESQ - 1) / 3.5.

Generator (weights from `LossConfig`, paper defaults in brackets):
  time [0.2]·L1(wav) + magnitude [0.9]·MSE(mag) + complex [0.1]·2·MSE(com)
  + phase [0.3]·(IP + GD + IAF) + consistency [0.1]·2·MSE(com, STFT(iSTFT(com)))
  + metric [0.05]·MSE(D(clean, est), 1).
Discriminator: MSE(D(clean, clean), 1) + MSE(D(clean, est), PESQ_norm) over the segments whose
PESQ succeeded (a failed segment is dropped from the fake term, not the whole batch); the PESQ targets
are scored by `training.pesq_targets.PesqPool`.
In D(clean, est) the estimate is the generator's compressed magnitude output itself (as the authors'
code: not |STFT(iSTFT(.))|^0.3), so the metric term's gradient reaches only the magnitude path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class LossWeights:
    metric: float = 0.05
    magnitude: float = 0.9
    complex: float = 0.1
    time: float = 0.2
    phase: float = 0.3
    consistency: float = 0.1

    @classmethod
    def from_config(cls, cfg) -> LossWeights:
        return cls(**{k: float(getattr(cfg, k)) for k in cls.__dataclass_fields__})


def anti_wrap(x: torch.Tensor) -> torch.Tensor:
    """|x - round(x / 2π)·2π|: the distance of a phase difference to the nearest multiple of 2π."""
    return torch.abs(x - torch.round(x / TWO_PI) * TWO_PI)


def phase_losses(pha_ref: torch.Tensor, pha_est: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(IP, GD, IAF) anti-wrapping losses on phases [B, F, T]: instantaneous phase, group delay
    (differences along frequency) and instantaneous angular frequency (differences along time)."""
    ip = anti_wrap(pha_ref - pha_est).mean()
    gd = anti_wrap(torch.diff(pha_ref, dim=1) - torch.diff(pha_est, dim=1)).mean()
    iaf = anti_wrap(torch.diff(pha_ref, dim=2) - torch.diff(pha_est, dim=2)).mean()
    return ip, gd, iaf


def generator_loss(
    *,
    clean_wav: torch.Tensor,
    clean_mag: torch.Tensor,
    clean_pha: torch.Tensor,
    clean_com: torch.Tensor,
    est_wav: torch.Tensor,
    est_mag: torch.Tensor,
    est_pha: torch.Tensor,
    est_com: torch.Tensor,
    rec_com: torch.Tensor,
    metric_fake: torch.Tensor | None,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted generator loss and its detached terms (keys: time, magnitude, complex, phase,
    consistency, metric). `rec_com` = STFT(iSTFT(est)); `metric_fake` = D(clean, est) [B] or None
    (no discriminator)."""
    n = min(clean_wav.shape[-1], est_wav.shape[-1])
    terms = {
        "time": F.l1_loss(est_wav[..., :n], clean_wav[..., :n]),
        "magnitude": F.mse_loss(est_mag, clean_mag),
        "complex": 2.0 * F.mse_loss(est_com, clean_com),
        "phase": sum(phase_losses(clean_pha, est_pha)),
        "consistency": 2.0 * F.mse_loss(est_com, rec_com),
    }
    if metric_fake is not None:
        terms["metric"] = F.mse_loss(metric_fake.float(), torch.ones_like(metric_fake, dtype=torch.float))
    total = sum(getattr(weights, k) * v for k, v in terms.items())
    return total, {k: v.detach() for k, v in terms.items()}


def discriminator_loss(
    metric_real: torch.Tensor,
    metric_fake: torch.Tensor,
    pesq_target: torch.Tensor,
    ok: torch.Tensor,
    *,
    num_ok_global: int | None = None,
    world_size: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MSE(D(clean,clean), 1) + MSE over PESQ-ok segments of (D(clean,est) - PESQ_norm).

    For data-parallel training pass `num_ok_global` (ok segments over all ranks) and `world_size`:
    the fake term is then scaled so that averaging gradients over ranks equals the mean over every
    ok segment of the global batch, whatever the split of failures between ranks.
    """
    real = F.mse_loss(metric_real.float(), torch.ones_like(metric_real, dtype=torch.float))
    ok = ok.to(torch.bool).to(metric_fake.device)
    target = pesq_target.to(metric_fake.device, torch.float)
    target = torch.where(ok, target, torch.zeros_like(target))  # failed targets are NaN
    sq = torch.where(ok, (metric_fake.float() - target) ** 2, torch.zeros_like(target))
    local_ok = int(ok.sum())
    denom = local_ok if num_ok_global is None else num_ok_global
    scale = 1.0 if num_ok_global is None else float(world_size)
    if denom > 0:
        fake = scale * sq.sum() / denom
    else:
        fake = sq.sum() * 0.0  # keeps the graph (and the DDP gradient layout) intact
    return real + fake, {"disc_real": real.detach(), "disc_fake": fake.detach()}
