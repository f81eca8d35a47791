"""Dense encoder and magnitude/phase decoders shared by every generator (MP-SENet family).

Feature maps are ``[B, C, T, F]``. Two decoder upsampling styles:
``"convt"`` (SEMamba/MambAttention/MP-SENet: ConvTranspose2d (1,3) stride (1,2), F 100 -> 201) and
``"shuffle"`` (RWSA: 1x1 conv to 4C, PixelShuffle(2), depthwise (1,3) conv stride (2,1), F 128 -> 256).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.kernels import codec_cpu
from training.mamba.infer import hooked


class LearnableSigmoid2d(nn.Module):
    """``beta * sigmoid(slope * x)`` on ``[B, F, T]`` with a learnable ``slope[F, 1]`` (init 1)."""

    def __init__(self, n_freq: int, beta: float = 2.0):
        super().__init__()
        self.beta = beta
        self.slope = nn.Parameter(torch.ones(n_freq, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta * torch.sigmoid(self.slope * x)


def _conv_in_prelu(c_in: int, c_out: int, kernel, **conv_kw) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, **conv_kw), nn.InstanceNorm2d(c_out, affine=True), nn.PReLU(c_out)
    )


def _run(seq: nn.Sequential, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``seq(x)`` (into ``out`` when given). Without autograd or hooks in ``seq``, each InstanceNorm2d +
    PReLU pair and each ConvTranspose2d run through ``training.kernels.codec_cpu`` (the pair writes
    straight into ``out`` when it ends ``seq``); they fall back to the modules where their kernels
    do not apply."""
    if torch.is_grad_enabled() or hooked((seq,)):
        y = seq(x)
        return y if out is None else out.copy_(y)
    mods, i = list(seq), 0
    while i < len(mods):
        m, last = mods[i], i + 1 == len(mods)
        if isinstance(m, nn.InstanceNorm2d) and not last and isinstance(mods[i + 1], nn.PReLU):
            x = codec_cpu.instance_norm_prelu(x, m, mods[i + 1], out=out if i + 2 == len(mods) else None)
            i += 2
            continue
        x = codec_cpu.conv_transpose_freq(x, m) if isinstance(m, nn.ConvTranspose2d) else m(x)
        i += 1
    return x if out is None or x is out else out.copy_(x)


class DenseBlock(nn.Module):
    """Depth-4 dilated dense block: layer i is a 3x3 conv over C*(i+1) channels, dilation (2^i, 1) in time.

    Each layer sees the concatenation of the block input and all earlier outputs; returns the last output.
    """

    def __init__(self, channels: int, depth: int = 4):
        super().__init__()
        self.dense_block = nn.ModuleList(
            _conv_in_prelu(channels * (i + 1), channels, (3, 3), dilation=(2**i, 1), padding=(2**i, 1))
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and not hooked((self,)):
            return self._inference(x)
        skip = x
        for layer in self.dense_block:
            x = layer(skip)
            skip = torch.cat((x, skip), dim=1)
        return x

    def _inference(self, x: torch.Tensor) -> torch.Tensor:
        """The same without concatenations: one buffer ``[B, depth * C, T, F]`` holds, from its end,
        the input and every layer's output but the last, so layer i reads its last (i + 1) * C
        channels (a contiguous view for B = 1) and writes its output just before them."""
        b, c, t, f = x.shape
        d = len(self.dense_block)
        buf = x.new_empty(b, d * c, t, f)
        buf[:, (d - 1) * c :].copy_(x)
        for i, layer in enumerate(self.dense_block):
            dst = buf[:, (d - 2 - i) * c : (d - 1 - i) * c] if i < d - 1 else None
            x = _run(layer, buf[:, (d - 1 - i) * c :], out=dst)
        return x


class DenseEncoder(nn.Module):
    """``[B, 2, T, F] -> [B, C, T, F']``: 1x1 conv, dense block, (1,3) conv with stride 2 along F.

    ``freq_padding`` 0 gives F' = (F - 1) // 2 (201 -> 100); 1 gives F / 2 (256 -> 128).
    """

    def __init__(self, channels: int, in_channels: int = 2, freq_padding: int = 0):
        super().__init__()
        self.dense_conv_1 = _conv_in_prelu(in_channels, channels, (1, 1))
        self.dense_block = DenseBlock(channels)
        self.dense_conv_2 = _conv_in_prelu(
            channels, channels, (1, 3), stride=(1, 2), padding=(0, freq_padding)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.dense_conv_2, self.dense_block(_run(self.dense_conv_1, x)))


def _upsample(channels: int, style: str) -> list[nn.Module]:
    if style == "convt":
        return [nn.ConvTranspose2d(channels, channels, (1, 3), stride=(1, 2))]
    if style == "shuffle":
        return [
            nn.Conv2d(channels, channels * 4, 1, bias=False),
            nn.PixelShuffle(2),
            nn.Conv2d(channels, channels, (1, 3), stride=(2, 1), padding=(0, 1), groups=channels, bias=False),
        ]
    raise ValueError(f"decoder upsample style must be 'convt' or 'shuffle', got {style!r}")


class MaskDecoder(nn.Module):
    """``[B, C, T, F'] -> mask [B, 1, T, F]`` in (0, beta) via a learnable sigmoid."""

    def __init__(self, channels: int, n_freq: int, upsample: str = "convt", beta: float = 2.0):
        super().__init__()
        self.dense_block = DenseBlock(channels)
        self.mask_conv = nn.Sequential(
            *_upsample(channels, upsample),
            nn.Conv2d(channels, 1, (1, 1)),
            nn.InstanceNorm2d(1, affine=True),
            nn.PReLU(1),
            nn.Conv2d(1, 1, (1, 1)),
        )
        self.lsigmoid = LearnableSigmoid2d(n_freq, beta=beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _run(self.mask_conv, self.dense_block(x))  # [B, 1, T, F]
        return self.lsigmoid(x[:, 0].transpose(1, 2)).transpose(1, 2)[:, None]


class PhaseDecoder(nn.Module):
    """``[B, C, T, F'] -> phase [B, 1, T, F]`` as atan2 of two predicted (pseudo) components."""

    def __init__(self, channels: int, upsample: str = "convt"):
        super().__init__()
        self.dense_block = DenseBlock(channels)
        self.phase_conv = nn.Sequential(
            *_upsample(channels, upsample), nn.InstanceNorm2d(channels, affine=True), nn.PReLU(channels)
        )
        self.phase_conv_r = nn.Conv2d(channels, 1, (1, 1))
        self.phase_conv_i = nn.Conv2d(channels, 1, (1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _run(self.phase_conv, self.dense_block(x))
        return torch.atan2(self.phase_conv_i(x), self.phase_conv_r(x))
