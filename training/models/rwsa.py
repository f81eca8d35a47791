"""RWSA-MambaUNet: a 3-level U-Net of MambAttention blocks with resolution-wise shared attention.

STFT n_fft 510, hop 120, win 510 (F = 256); training segment 30,600 samples (T = 256).
Feature maps ``[B, C, T, F]``; widths ``[h, 2h, 3h]`` at ``[T, 128] -> [T/2, 64] -> [T/4, 32]``.

    dense encoder (F 256 -> 128)                                       -> e1 (long skip)
    level 1: x1 = e1 + blocks_enc1(patch_embed(e1)),     down (PixelUnshuffle) -> 2h
    level 2: x2 = d  + blocks_enc2(patch_embed(d)),      down -> 3h
    middle : x3 = d  + blocks_mid(patch_embed(d))        (own 8-head attention per block)
    up (PixelShuffle) -> 2h, concat x2, 1x1 -> y2 = c + blocks_dec2(patch_embed(c))
    up -> h, concat x1, 1x1 -> y1 = c + blocks_dec1(patch_embed(c))
    magnitude / phase refinement: r = y1 + tf_mamba_blocks(patch_embed(y1)); conv3x3(r) + e1
    -> mask decoder / phase decoder (PixelShuffle upsampling, F 128 -> 256)

Encoder block i and decoder block i at levels 1 and 2 use the same 4-head attention module (RWSA).
T must be a multiple of 4 and at least 8 (training/model_names.FRAMING_510).
Sizes: XS (h 16, n 2), S (16, 4), M (24, 4).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from training.model_names import FRAMING_510
from training.models.base import SpectralGenerator
from training.models.codec import DenseEncoder, MaskDecoder, PhaseDecoder
from training.models.deform_conv import DeformConv2d
from training.models.tf_blocks import AttentionModule, MambAttentionBlock, run_blocks
from training.stft import STFTSpec

STFT_510 = STFTSpec(n_fft=FRAMING_510.n_fft, hop=FRAMING_510.hop, win=FRAMING_510.win)  # 510 / 120 / 510
SEGMENT_RWSA = 30_600


class PatchEmbed(nn.Module):
    """Deformable depthwise patch embedding: offsets from dw3x3 + 1x1 (18 ch, clamped to [-1, 1]),
    deformable dw3x3 (no bias), 1x1 (no bias), Hardswish. ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, channels: int, offset_clamp: float = 1.0):
        super().__init__()
        self.offset_clamp = offset_clamp
        self.offset_generator = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, 18, 1, bias=False),
        )
        self.dcn = DeformConv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pwconv = nn.Conv2d(channels, channels, 1, bias=False)
        self.act = nn.Hardswish()
        for m in self.modules():  # He-normal on fan-out, as the authors initialise these convs
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(
                    m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_generator(x).clamp(-self.offset_clamp, self.offset_clamp)
        return self.act(self.pwconv(self.dcn(x, offset)))


def _downsample(c_in: int, c_out: int) -> nn.Sequential:
    """dw3x3 -> 1x1 to c_out/4 -> PixelUnshuffle(2): halves T and F."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out // 4, 1, bias=False),
        nn.PixelUnshuffle(2),
    )


def _upsample(c_in: int, c_out: int) -> nn.Sequential:
    """dw3x3 -> 1x1 to 4*c_out -> PixelShuffle(2): doubles T and F."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out * 4, 1, bias=False),
        nn.PixelShuffle(2),
    )


class Stage(nn.Module):
    """``x + blocks(patch_embed(x))``."""

    def __init__(self, channels: int, blocks: list[nn.Module]):
        super().__init__()
        self.patch_embed = PatchEmbed(channels)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + run_blocks(self.blocks, self.patch_embed(x))


class RWSAMambaUNet(SpectralGenerator):
    """:param hidden: h (level widths h, 2h, 3h). :param num_blocks: blocks per stage.
    :param share_resolution: encoder/decoder blocks at a level share attention (RWSA); False gives
        each decoder block its own. :param attention: False removes every MHA (TF-Mamba blocks only)."""

    frame_multiple = FRAMING_510.frame_multiple  # 4: T is halved twice

    def __init__(self, hidden: int = 16, num_blocks: int = 4, share_resolution: bool = True,
                 attention: bool = True, level_heads: int = 4, middle_heads: int = 8):  # fmt: skip
        super().__init__()
        self.stft, self.segment_samples = STFT_510, SEGMENT_RWSA
        h1, h2, h3 = hidden, 2 * hidden, 3 * hidden
        n = num_blocks

        def attn(dim, heads):
            return AttentionModule(dim, heads) if attention else None

        self.dense_encoder = DenseEncoder(h1, freq_padding=1)
        self.shared_attention_lvl1 = nn.ModuleList(a for a in (attn(h1, level_heads) for _ in range(n)) if a)
        self.shared_attention_lvl2 = nn.ModuleList(a for a in (attn(h2, level_heads) for _ in range(n)) if a)

        def enc_attn(level, i):
            shared = self.shared_attention_lvl1 if level == 1 else self.shared_attention_lvl2
            return shared[i] if attention else None

        def dec_attn(level, i):
            if share_resolution:
                return enc_attn(level, i)
            return attn(h1 if level == 1 else h2, level_heads)

        self.encoder1 = Stage(h1, [MambAttentionBlock(h1, enc_attn(1, i)) for i in range(n)])
        self.down1_2 = _downsample(h1, h2)
        self.encoder2 = Stage(h2, [MambAttentionBlock(h2, enc_attn(2, i)) for i in range(n)])
        self.down2_3 = _downsample(h2, h3)
        self.middle = Stage(h3, [MambAttentionBlock(h3, attn(h3, middle_heads)) for _ in range(n)])
        self.up3_2 = _upsample(h3, h2)
        self.concat_level2 = nn.Conv2d(2 * h2, h2, 1, bias=False)
        self.decoder2 = Stage(h2, [MambAttentionBlock(h2, dec_attn(2, i)) for i in range(n)])
        self.up2_1 = _upsample(h2, h1)
        self.concat_level1 = nn.Conv2d(2 * h1, h1, 1, bias=False)
        self.decoder1 = Stage(h1, [MambAttentionBlock(h1, dec_attn(1, i)) for i in range(n)])

        self.mag_refinement = Stage(h1, [MambAttentionBlock(h1) for _ in range(n)])
        self.mag_output = nn.Conv2d(h1, h1, 3, padding=1, bias=False)
        self.pha_refinement = Stage(h1, [MambAttentionBlock(h1) for _ in range(n)])
        self.pha_output = nn.Conv2d(h1, h1, 3, padding=1, bias=False)

        self.mask_decoder = MaskDecoder(h1, self.stft.n_freq, upsample="shuffle")
        self.phase_decoder = PhaseDecoder(h1, upsample="shuffle")

    def features(self, x: torch.Tensor):
        e1 = self.dense_encoder(x)
        x1 = self.encoder1(e1)
        x2 = self.encoder2(self.down1_2(x1))
        x3 = self.middle(self.down2_3(x2))
        y2 = self.decoder2(self.concat_level2(torch.cat((self.up3_2(x3), x2), 1)))
        y1 = self.decoder1(self.concat_level1(torch.cat((self.up2_1(y2), x1), 1)))
        mag = self.mag_output(self.mag_refinement(y1)) + e1
        pha = self.pha_output(self.pha_refinement(y1)) + e1
        return mag, pha


RWSA_SIZES = {"xs": (16, 2), "s": (16, 4), "m": (24, 4)}


def rwsa(size: str = "s", **options) -> RWSAMambaUNet:
    """RWSA-MambaUNet of a named size (``xs``/``s``/``m``); options go to :class:`RWSAMambaUNet`."""
    if size not in RWSA_SIZES:
        raise ValueError(f"RWSA size must be one of {sorted(RWSA_SIZES)}, got {size!r}")
    hidden, blocks = RWSA_SIZES[size]
    return RWSAMambaUNet(**{"hidden": hidden, "num_blocks": blocks, **options})
