"""Deformable 2-D convolution in plain PyTorch, with torchvision ``DeformConv2d``'s parameters and semantics.

``weight [C_out, C_in / groups, kh, kw]``, optional ``bias [C_out]``; ``forward(x[B,C_in,H,W],
offset[B, 2*kh*kw, H_out, W_out])``. For kernel tap ``k = i*kw + j`` (row-major), offset channel
``2k`` is the row (vertical) displacement and ``2k+1`` the column one, added to the tap's regular
position ``(h*stride - pad + i*dil, w*stride - pad + j*dil)``. Values are read by bilinear
interpolation; positions outside the input contribute zero. One offset group, no modulation mask.
Sampling uses ``grid_sample`` (zeros padding, align_corners=True, i.e. pixel-centre coordinates),
so gradients reach the input, the offsets and the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair


def deform_conv2d(x, offset, weight, bias=None, stride=1, padding=0, dilation=1):
    """Functional form; ``groups`` is ``C_in // weight.shape[1]``."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    b, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = c_in // c_per_group
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k = kh * kw
    if offset.shape != (b, 2 * k, h_out, w_out):
        raise ValueError(f"offset must be {(b, 2 * k, h_out, w_out)}, got {tuple(offset.shape)}")
    if h < 2 or w < 2:
        raise ValueError(f"deform_conv2d needs H, W >= 2, got {(h, w)}")
    dev, dt = x.device, x.dtype
    base_y = (torch.arange(h_out, device=dev, dtype=dt) * sh - ph)[:, None]  # [H_out, 1]
    base_x = (torch.arange(w_out, device=dev, dtype=dt) * sw - pw)[None, :]  # [1, W_out]
    tap_y = (torch.arange(kh, device=dev, dtype=dt) * dh).repeat_interleave(kw)  # [K]
    tap_x = (torch.arange(kw, device=dev, dtype=dt) * dw).repeat(kh)
    off = offset.view(b, k, 2, h_out, w_out)
    pos_y = base_y + tap_y[:, None, None] + off[:, :, 0]  # [B, K, H_out, W_out]
    pos_x = base_x + tap_x[:, None, None] + off[:, :, 1]
    grid = torch.stack((pos_x * (2.0 / (w - 1)) - 1.0, pos_y * (2.0 / (h - 1)) - 1.0), dim=-1)
    if not torch.is_grad_enabled():  # inference: the same samples, laid out for one matmul
        out = _sampled_matmul(x, grid, weight, groups)
        return out + bias[None, :, None, None] if bias is not None else out
    grid = grid.permute(0, 2, 1, 3, 4).reshape(b, h_out, k * w_out, 2)
    cols = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    cols = cols.view(b, groups, c_per_group, h_out, k, w_out)
    wg = weight.view(groups, c_out // groups, c_per_group, k)
    if c_per_group == 1 and c_out == c_in:  # depthwise: a weighted sum over taps
        out = torch.einsum("bghkw,gk->bghw", cols[:, :, 0], wg[:, 0, 0])
    else:
        out = torch.einsum("bgchkw,gock->bgohw", cols, wg)
    out = out.reshape(b, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias[None, :, None, None]
    return out


def _sampled_matmul(x, grid, weight, groups):
    """Inference form of the sampling and the weighted sum: the grid [B, K, H_out, W_out, 2] samples
    into [B, C_in, K, H_out, W_out], which is already [B, groups, C_in/groups * K, H_out*W_out] for a
    batched matmul with the weight (the training form permutes the sampled columns for its einsum,
    a copy as large as them). Equal to it up to the order of the float32 sums."""
    b, k, h_out, w_out, _ = grid.shape
    c_out, c_per_group = weight.shape[:2]
    cols = F.grid_sample(x, grid.reshape(b, k * h_out, w_out, 2), mode="bilinear", padding_mode="zeros",
                         align_corners=True)
    cols = cols.view(b, groups, c_per_group * k, h_out * w_out)
    out = torch.matmul(weight.reshape(groups, c_out // groups, c_per_group * k), cols)
    return out.reshape(b, c_out, h_out, w_out)


class DeformConv2d(nn.Module):
    """Drop-in for ``torchvision.ops.DeformConv2d`` (same parameter names, shapes and init)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True):  # fmt: skip
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("DeformConv2d: in_channels and out_channels must be divisible by groups")
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups
        kh, kw = _pair(kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation)
