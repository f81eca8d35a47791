"""Time-frequency (dual-path) blocks on feature maps ``[B, C, T, F]``.

- :class:`MambAttentionBlock`: per axis ``x = x + MHA(LN(x))`` then ``x = x + ConvT1d(BiMamba(x))``
  (time axis: sequences ``[B*F, T, C]``; frequency axis: ``[B*T, F, C]``). With ``attention=None``
  it is SEMamba's TF-Mamba block. Options: attention after Mamba, separate T/F attention, F before T.
- :class:`TSConformerBlock`: MP-SENet's ``x = x + Conformer(x)`` along time, then frequency. With
  ``across_batch=True`` its attention is the official MP-SENet code's: ``nn.MultiheadAttention``
  built without ``batch_first`` and fed ``[B*F, T, C]`` (``[B*T, F, C]``) attends along the first
  axis -- across batch items and frequency bins (time frames) at each time frame (frequency bin)
  -- instead of along the sequence (upstream issue yxlu-0102/MP-SENet#21).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from training.kernels import native
from training.kernels.attention_cpu import attention_from_qkv
from training.mamba import BiMamba
from training.mamba.infer import hooked


class AttentionModule(nn.Module):
    """``MHA(LN(x))`` on ``[N, L, C]`` (self-attention, batch first, no dropout by default).

    The parameters are an ``nn.MultiheadAttention``'s (``attn.in_proj_weight``, ...), but the
    attention itself runs through ``training.kernels.attention_cpu``: the C kernel for small heads on CPU
    at inference, else ``F.scaled_dot_product_attention`` (nn.MultiheadAttention's eval "fast
    path" materialises the L x L weights on CPU: 3x slower for 10 s of audio). All agree up to
    float rounding.
    """

    def __init__(self, dim: int, n_head: int = 8, dropout: float = 0.0, across_batch: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, n_head, dropout=dropout, batch_first=True)
        self.layernorm = nn.LayerNorm(dim)
        self.across_batch = across_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layernorm(x)
        if self.across_batch:  # the official MP-SENet code: [N, L, C] read as (seq N, batch L)
            x = x.transpose(0, 1)
        a = self.attn
        qkv = F.linear(x, a.in_proj_weight, a.in_proj_bias)  # [N, L, 3C]
        o = a.out_proj(attention_from_qkv(qkv, a.num_heads, a.dropout if self.training else 0.0))
        return o.transpose(0, 1) if self.across_batch else o

    def residual(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``x + self(x)``. At inference (no autograd, no hooks) the output projection accumulates
        onto the residual (:func:`add_linear`; into ``x`` itself when ``inplace``)."""
        if not native.plain_inference(x.device.type) or self.across_batch or self.training or hooked((self,)):
            return x + self(x)
        a = self.attn
        qkv = F.linear(self.layernorm(x), a.in_proj_weight)  # the kernel adds the bias as it reads
        o = attention_from_qkv(qkv, a.num_heads, bias=a.in_proj_bias)
        return add_linear(x, o, a.out_proj.weight.t(), a.out_proj.bias, inplace)


def add_linear(s, y, weight_t, bias, inplace: bool = False) -> torch.Tensor:
    """``s + y @ weight_t + bias`` for ``s [..., C]``, ``y [..., K]``, ``weight_t [K, C]``, ``bias
    [C]`` or None, with no ``[..., C]`` temporary: the matmul accumulates onto the residual, which
    is ``s`` itself when ``inplace`` (and ``s`` is contiguous), else one copy. Inference only."""
    if inplace and s.is_contiguous():
        out = s if bias is None else s.add_(bias)
    else:
        out = torch.empty(s.shape, dtype=s.dtype, device=s.device)
        out.copy_(s) if bias is None else torch.add(s, bias, out=out)
    out.view(-1, out.shape[-1]).addmm_(y.reshape(-1, y.shape[-1]), weight_t)
    return out


class CheckpointableBlock(nn.Module):
    """A TF block whose activations can be recomputed in the backward pass: subclasses implement
    ``_forward``. :func:`set_activation_checkpointing` sets ``checkpointed``; then, in training,
    only the block's input is kept (peak memory ~ the block inputs; ~1/3 more compute;
    deterministic, so the gradients are the same)."""

    checkpointed: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _to_time(x):  # [B, C, T, F] -> [B*F, T, C]
    b, c, t, f = x.shape
    return x.permute(0, 3, 2, 1).reshape(b * f, t, c)


def _from_time(s, shape):
    b, c, t, f = shape
    return s.reshape(b, f, t, c).permute(0, 3, 2, 1)


def _to_freq(x):  # [B, C, T, F] -> [B*T, F, C]
    b, c, t, f = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * t, f, c)


def _from_freq(s, shape):
    b, c, t, f = shape
    return s.reshape(b, t, f, c).permute(0, 3, 1, 2)


_AXES = {"t": (_to_time, _from_time), "f": (_to_freq, _from_freq)}


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """``channels_last`` when ``x`` ([B, C, T, F]) is stored as [B, T, F, C], else contiguous: a TF
    block returns its input's layout. In channels-last the frequency-axis sequences are views and
    the time-axis ones a copy of C-long rows; from [B, C, T, F] both are element-wise transposes."""
    cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


class MambAttentionBlock(CheckpointableBlock):
    """One dual-path block; ``attention`` may be a module shared with other blocks.

    :param attention: MHA module for the time axis (and the frequency axis unless
        ``freq_attention`` is given); ``None`` = no attention (SEMamba).
    :param freq_attention: a separate module for the frequency axis (the "unshared" ablation).
    :param attn_position: ``"before"`` (paper) or ``"after"`` the Mamba of each axis.
    :param order: ``"tf"`` (time then frequency, paper) or ``"ft"``.
    :param mixer: ``mixer()`` builds the bidirectional sequence module of each axis (``[N, L, C] ->
        [N, L, 2C]``) instead of ``BiMamba`` (the LSTM / xLSTM baselines); it is stored under the
        Mamba attribute names (``time_mamba``, ``freq_mamba``).
    """

    def __init__(
        self,
        channels: int,
        attention: nn.Module | None = None,
        freq_attention: nn.Module | None = None,
        attn_position: str = "before",
        order: str = "tf",
        mixer=None,
        **mamba_options,
    ):
        super().__init__()
        if attn_position not in ("before", "after"):
            raise ValueError(f"attn_position must be 'before' or 'after', got {attn_position!r}")
        if order not in ("tf", "ft"):
            raise ValueError(f"order must be 'tf' or 'ft', got {order!r}")
        self.attn_position, self.order = attn_position, order
        self.time_mamba = mixer() if mixer is not None else BiMamba(channels, **mamba_options)
        self.freq_mamba = mixer() if mixer is not None else BiMamba(channels, **mamba_options)
        self.attention = attention
        self.freq_attention = freq_attention
        self.tlinear = nn.ConvTranspose1d(2 * channels, channels, 1)
        self.flinear = nn.ConvTranspose1d(2 * channels, channels, 1)

    def _axis(self, s, attn, mamba, linear):
        # s is to_seq's output: a copy of the block input (ours to update in place) or a view of it
        owned = s._base is None
        if attn is not None and self.attn_position == "before":
            s, owned = attn.residual(s, inplace=owned), True
        m = mamba(s)
        if not native.plain_inference(s.device.type) or hooked((linear,)):
            s = s + linear(m.transpose(1, 2)).transpose(1, 2)
        else:  # inference: the kernel-1 ConvTranspose1d as a matmul accumulated onto the residual
            s, owned = add_linear(s, m, linear.weight[:, :, 0], linear.bias, inplace=owned), True
        if attn is not None and self.attn_position == "after":
            s = attn.residual(s, inplace=owned)
        return s

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        f_attn = self.freq_attention if self.freq_attention is not None else self.attention
        parts = {
            "t": (self.attention, self.time_mamba, self.tlinear),
            "f": (f_attn, self.freq_mamba, self.flinear),
        }
        layout = memory_format(x)
        for axis in self.order:
            to_seq, from_seq = _AXES[axis]
            x = from_seq(self._axis(to_seq(x), *parts[axis]), shape)
        return x.contiguous(memory_format=layout)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.ffm = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.ffm(x)


class _ConvModule(nn.Module):
    """LN -> pointwise conv to 2*inner -> GLU -> depthwise conv (k) -> BN -> SiLU -> pointwise conv."""

    def __init__(self, dim: int, expansion: int = 2, kernel_size: int = 31, dropout: float = 0.0):
        super().__init__()
        inner = dim * expansion
        self.norm = nn.LayerNorm(dim)
        self.ccm = nn.Sequential(
            nn.Conv1d(dim, inner * 2, 1),
            nn.GLU(dim=1),
            nn.Conv1d(inner, inner, kernel_size, padding=kernel_size // 2, groups=inner),
            nn.BatchNorm1d(inner),
            nn.SiLU(),
            nn.Conv1d(inner, dim, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x):  # [N, L, C]
        return self.ccm(self.norm(x).transpose(1, 2)).transpose(1, 2)


class ConformerBlock(nn.Module):
    """MP-SENet Conformer: half FF, MHA, conv module, half FF, post LayerNorm (``[N, L, C]``)."""

    def __init__(self, dim: int, n_head: int = 4, kernel_size: int = 31, ff_dropout=0.2, attn_dropout=0.2,
                 across_batch: bool = False):
        super().__init__()
        self.ffm1 = _FeedForward(dim, dropout=ff_dropout)
        self.attn = AttentionModule(dim, n_head, dropout=attn_dropout, across_batch=across_batch)
        self.ccm = _ConvModule(dim, kernel_size=kernel_size)
        self.ffm2 = _FeedForward(dim, dropout=ff_dropout)
        self.post_norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = x + 0.5 * self.ffm1(x)
        x = x + self.attn(x)
        x = x + self.ccm(x)
        x = x + 0.5 * self.ffm2(x)
        return self.post_norm(x)


class TSConformerBlock(CheckpointableBlock):
    """``x = x + Conformer_T(x)`` along time, then ``x = x + Conformer_F(x)`` along frequency."""

    def __init__(self, channels: int, n_head: int = 4, across_batch: bool = False):
        super().__init__()
        self.time_conformer = ConformerBlock(channels, n_head, across_batch=across_batch)
        self.freq_conformer = ConformerBlock(channels, n_head, across_batch=across_batch)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, layout = x.shape, memory_format(x)
        s = _to_time(x)
        x = _from_time(s + self.time_conformer(s), shape)
        s = _to_freq(x)
        return _from_freq(s + self.freq_conformer(s), shape).contiguous(memory_format=layout)


def run_blocks(blocks, x: torch.Tensor) -> torch.Tensor:
    """``x`` through the TF ``blocks`` in order, ``[B, C, T, F]`` in and out (contiguous). At inference
    the stack runs in channels-last (:func:`memory_format`): two layout copies for the whole stack
    instead of element-wise transposes in every block."""
    if not torch.is_grad_enabled():
        x = x.contiguous(memory_format=torch.channels_last)
    for block in blocks:
        x = block(x)
    return x.contiguous()


def set_activation_checkpointing(model: nn.Module, on: bool) -> int:
    """Turn activation checkpointing of every TF block (MambAttention, TS-Conformer) in ``model``
    on or off; returns how many blocks were set."""
    blocks = [m for m in model.modules() if isinstance(m, CheckpointableBlock)]
    for m in blocks:
        m.checkpointed = bool(on)
    return len(blocks)
