"""Dual-path generators at 400/100 STFT: SEMamba, MambAttention (+ ablations), MP-SENet (corrected and
official), LSTM-SENet and xLSTM-SENet (+ their attention variants).

dense encoder (F 201 -> 100) -> R time-frequency blocks -> mask decoder + phase decoder
(ConvTranspose2d back to F = 201). STFT n_fft 400, hop 100, win 400; training segment 2 s
(32,000 samples at 16 kHz -> T = 321 frames). C = 64 channels, R = 4 blocks.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.model_names import FRAMING_400
from training.models.base import SpectralGenerator
from training.models.codec import DenseEncoder, MaskDecoder, PhaseDecoder
from training.models.recurrent import BiRecurrent, LSTMBlock, MLSTMBlock
from training.models.tf_blocks import AttentionModule, MambAttentionBlock, TSConformerBlock, run_blocks
from training.stft import STFTSpec

STFT_400 = STFTSpec(n_fft=FRAMING_400.n_fft, hop=FRAMING_400.hop, win=FRAMING_400.win)  # 400 / 100 / 400
SEGMENT_2S = 32_000


class DualPathGenerator(SpectralGenerator):
    """Encoder, a stack of TF blocks ``[B,C,T,F'] -> [B,C,T,F']``, and the two decoders."""

    def __init__(self, blocks: list[nn.Module], channels: int = 64, stft: STFTSpec = STFT_400,
                 segment_samples: int = SEGMENT_2S, beta: float = 2.0):  # fmt: skip
        super().__init__()
        self.stft, self.segment_samples = stft, segment_samples
        self.dense_encoder = DenseEncoder(channels, freq_padding=0)
        self.blocks = nn.ModuleList(blocks)
        self.mask_decoder = MaskDecoder(channels, stft.n_freq, upsample="convt", beta=beta)
        self.phase_decoder = PhaseDecoder(channels, upsample="convt")

    def features(self, x: torch.Tensor):
        x = run_blocks(self.blocks, self.dense_encoder(x))
        return x, x


def semamba(channels: int = 64, num_blocks: int = 4) -> DualPathGenerator:
    """SEMamba: TF blocks of bidirectional Mamba only (no attention). 2,258,769 params."""
    return DualPathGenerator([MambAttentionBlock(channels) for _ in range(num_blocks)], channels)


def mambattention(
    channels: int = 64,
    num_blocks: int = 4,
    n_head: int = 8,
    attn_position: str = "before",
    share_tf: bool = True,
    order: str = "tf",
) -> DualPathGenerator:
    """MambAttention: one LN+MHA per block shared by the time and frequency axes. 2,325,841 params.

    Ablations: ``attn_position="after"``; ``share_tf=False`` (own MHA for frequency, 2,392,913);
    ``order="ft"`` (frequency before time).
    """
    blocks = [
        MambAttentionBlock(
            channels,
            attention=AttentionModule(channels, n_head),
            freq_attention=None if share_tf else AttentionModule(channels, n_head),
            attn_position=attn_position,
            order=order,
        )
        for _ in range(num_blocks)
    ]
    return DualPathGenerator(blocks, channels)


def mpsenet(channels: int = 64, num_blocks: int = 4, n_head: int = 4) -> DualPathGenerator:
    """MP-SENet (short version): TF blocks are Conformers, time then frequency. ~2.05 M params."""
    return DualPathGenerator([TSConformerBlock(channels, n_head) for _ in range(num_blocks)], channels)


def mpsenet_official(channels: int = 64, num_blocks: int = 4, n_head: int = 4) -> DualPathGenerator:
    """MP-SENet as the official code runs it: the Conformers' attention attends across the first axis
    of ``[B*F, T, C]`` / ``[B*T, F, C]`` (batch items and bins/frames), not along the sequence
    (``TSConformerBlock(across_batch=True)``). Same parameters as ``mpsenet`` (2,048,849); outputs
    depend on the batch composition. Kept to reproduce the MambAttention paper's MP-SENet rows. Trained as
    the official ``train.py`` does: the metric discriminator sees the magnitude of the re-STFT of the
    enhanced waveform (``discriminator_input = "restft"``, read by ``training.loop.train_step``)."""
    g = DualPathGenerator([TSConformerBlock(channels, n_head, across_batch=True) for _ in range(num_blocks)],
                          channels)
    g.discriminator_input = "restft"
    return g


def _recurrent_generator(make, channels: int, num_blocks: int, attention: str | None, n_head: int,
                         share_tf: bool = True):
    def block():
        attn = AttentionModule(channels, n_head) if attention else None
        freq_attn = AttentionModule(channels, n_head) if attention and not share_tf else None
        return MambAttentionBlock(channels, attention=attn, freq_attention=freq_attn,
                                  attn_position=attention or "before", mixer=lambda: BiRecurrent(make))

    return DualPathGenerator([block() for _ in range(num_blocks)], channels)


def xlstm_senet(channels: int = 64, num_blocks: int = 4, expansion: int = 4, attention: str | None = None,
                n_head: int = 8) -> DualPathGenerator:
    """xLSTM-SENet: TF blocks of bidirectional mLSTM blocks (``recurrent.MLSTMBlock``). 2,203,601 params
    (paper 2.20M). ``attention="before"``: xLSTM-Attention of Table IV (the T/F-shared MHA before the
    xLSTM of each axis, as MambAttention), 2,270,673 (paper 2.27M)."""
    return _recurrent_generator(lambda: MLSTMBlock(channels, expansion), channels, num_blocks, attention, n_head)


def lstm_senet(channels: int = 64, num_blocks: int = 4, hidden: int = 121, attention: str | None = None,
               n_head: int = 8, share_tf: bool = True) -> DualPathGenerator:
    """LSTM-SENet: TF blocks of bidirectional LSTMs (``recurrent.LSTMBlock``). 2,343,889 params (paper
    2.34M). ``attention="after"``: the MHA after the LSTM of each axis (Table IV's LSTM-Attention, as the
    paper found best); with ``share_tf=False`` (T and F MHA with their own weights) 2,478,033 = the
    paper's 2.48M, with one shared MHA 2,410,961 (see docs/fidelity.md)."""
    return _recurrent_generator(lambda: LSTMBlock(channels, hidden), channels, num_blocks, attention, n_head,
                                share_tf)
