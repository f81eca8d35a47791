"""MetricGAN discriminator: predicts the normalised PESQ of an estimate from (clean, estimate).

``forward(clean_mag[B,F,T], est_mag[B,F,T]) -> [B, 1]`` in (0, 1) (compressed magnitudes).
4 x (spectral-norm Conv2d 4x4 stride 2 pad 1, no bias -> InstanceNorm2d(affine) -> PReLU) with
16/32/64/128 channels, global max pool, SN-Linear(128, 64) -> Dropout(0.3) -> PReLU -> SN-Linear(64, 1)
-> learnable sigmoid (beta 1). 181,650 params. Works for any F, T >= 16.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import spectral_norm


class LearnableSigmoid1d(nn.Module):
    """``beta * sigmoid(slope * x)`` with a learnable ``slope[features]`` (init 1)."""

    def __init__(self, features: int, beta: float = 1.0):
        super().__init__()
        self.beta = beta
        self.slope = nn.Parameter(torch.ones(features))

    def forward(self, x):
        return self.beta * torch.sigmoid(self.slope * x)


class MetricDiscriminator(nn.Module):
    def __init__(self, base_channels: int = 16, in_channels: int = 2):
        super().__init__()
        layers, c_in = [], in_channels
        for i in range(4):
            c_out = base_channels * 2**i
            layers += [
                spectral_norm(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)),
                nn.InstanceNorm2d(c_out, affine=True),
                nn.PReLU(c_out),
            ]
            c_in = c_out
        self.layers = nn.Sequential(
            *layers,
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            spectral_norm(nn.Linear(c_in, c_in // 2)),
            nn.Dropout(0.3),
            nn.PReLU(c_in // 2),
            spectral_norm(nn.Linear(c_in // 2, 1)),
            LearnableSigmoid1d(1, beta=1.0),
        )

    def forward(self, clean_mag: torch.Tensor, est_mag: torch.Tensor) -> torch.Tensor:
        if clean_mag.shape != est_mag.shape or clean_mag.dim() != 3:
            raise ValueError(
                f"expected clean_mag and est_mag [B, F, T], got {tuple(clean_mag.shape)}, {tuple(est_mag.shape)}"
            )
        return self.layers(torch.stack((clean_mag, est_mag), dim=1))
