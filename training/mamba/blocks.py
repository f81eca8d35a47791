"""Mamba wrappers used by the dual-path models: RMSNorm, residual block, bidirectional block.

Module/attribute names follow the authors' code (mamba_ssm ``Block``: ``mixer``/``norm``; the
SEMamba ``MambaBlock``: ``forward_blocks``/``backward_blocks``) so their checkpoints map one to one.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.mamba.infer import fused_layer, usable
from training.mamba.mixer import Mamba


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2, -1) + eps) * weight`` over the last dim."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class ResidualMamba(nn.Module):
    """``x + Mamba(RMSNorm(x))`` on ``[B, L, C]`` (mamba_ssm ``Block`` with one layer, eps 1e-5)."""

    def __init__(
        self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 4, norm_eps: float = 1e-5
    ):
        super().__init__()
        self.mixer = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
        self.norm = RMSNorm(d_model, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if usable(self.mixer, x, self.norm):  # inference on CPU: norm, mixer and residual in one C kernel
            return fused_layer(self.mixer, x, norm=self.norm, residual=True)
        return x + self.mixer(self.norm(x))


class BiMamba(nn.Module):
    """Forward block on ``x`` and a separate backward block on ``flip(x)``: ``[B,L,C] -> [B,L,2C]``.

    The caller projects the concatenation back to C (a kernel-1 ConvTranspose1d in the TF blocks).
    """

    def __init__(self, d_model: int, **mamba_options):
        super().__init__()
        self.forward_blocks = nn.ModuleList([ResidualMamba(d_model, **mamba_options)])
        self.backward_blocks = nn.ModuleList([ResidualMamba(d_model, **mamba_options)])

    def _fusable(self, x: torch.Tensor) -> bool:
        blocks = [*self.forward_blocks, *self.backward_blocks]
        return (len(self.forward_blocks) == len(self.backward_blocks) == 1
                and all(type(b) is ResidualMamba and usable(b.mixer, x, b) for b in blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fusable(x):  # inference on CPU: both branches write their half of the output, no flips
            c = x.shape[-1]
            out = x.new_empty(*x.shape[:-1], 2 * c)
            (fwd,), (bwd,) = self.forward_blocks, self.backward_blocks
            fused_layer(fwd.mixer, x, norm=fwd.norm, residual=True, out=out[..., :c])
            fused_layer(bwd.mixer, x, norm=bwd.norm, residual=True, reverse=True, out=out[..., c:])
            return out
        y_f = x
        for block in self.forward_blocks:
            y_f = block(y_f)
        y_b = x.flip(1)
        for block in self.backward_blocks:
            y_b = block(y_b)
        return torch.cat((y_f, y_b.flip(1)), dim=-1)
