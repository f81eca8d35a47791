"""Recurrent sequence mixers for the MambAttention paper's LSTM / xLSTM baselines (Table I, IV).

Both replace the bidirectional Mamba of a dual-path TF block: a forward module on x and a separate
backward module on flip(x), outputs concatenated to 2C (``[N, L, C] -> [N, L, 2C]``), as xLSTM-SENet
(Kühne et al., Interspeech 2025) does.

- :class:`MLSTMBlock`: Vision-LSTM's mLSTM block as xLSTM-SENet configures it (dim 64, expansion 4,
  causal depthwise conv k = 4, biases in projections and norms): ``x + layer(LN(x))`` where the
  layer is up-projection to 2·E·C (mLSTM branch and gate z), causal conv + SiLU, block-diagonal
  (4x4) q/k projections of the conv output and v of the pre-conv branch, the mLSTM cell (4 heads,
  exponential input gate, sigmoid forget gate, matrix memory, in its stabilised parallel form),
  a per-head LayerNorm, a learnable skip of the conv output, gating by SiLU(z), down-projection.
  61,896 params per block at C = 64. Written here in plain PyTorch from the xLSTM/ViL equations:
  the ``xlstm`` package (2.0.6) needs ``mlstm_kernels`` and its mLSTM block differs from ViL's.
- :class:`LSTMBlock`: ``nn.LSTM(C, hidden, proj_size=C)`` (an LSTM with a projected output, so it is a
  drop-in C -> C module). The paper gives only the rounded count of LSTM-SENet (2.34M) and no code;
  ``hidden = 121`` is the size that gives that count with this design (see docs/fidelity.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlstm_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor,
                   eps: float = 1e-6) -> torch.Tensor:
    """The mLSTM cell over a whole sequence (stabilised parallel form).

    q, k, v: [B, H, L, D]; i_pre, f_pre: [B, H, L] gate pre-activations. With
    log D[t, s] = sum_{r=s+1..t} logsigmoid(f_r) + i_s (s <= t, else -inf), m_t = max_s log D[t, s],
    C = (q k^T / sqrt(D)) * exp(log D - m), the output is h_t = sum_s C[t, s] v_s / (max(|sum_s C[t, s]|,
    exp(-m_t)) + eps). Returns [B, H, L, D].
    """
    L = q.shape[-2]
    logf = F.logsigmoid(f_pre)
    cum = torch.cumsum(logf, dim=-1)  # [B, H, L]: sum_{r<=t} log f_r
    log_d = cum.unsqueeze(-1) - cum.unsqueeze(-2) + i_pre.unsqueeze(-2)  # [B, H, t, s]
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    m = log_d.amax(dim=-1, keepdim=True)  # [B, H, L, 1]
    c = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]) * torch.exp(log_d - m)
    norm = torch.maximum(c.sum(dim=-1, keepdim=True).abs(), torch.exp(-m))
    return (c / (norm + eps)) @ v


class _BlockDiagonal(nn.Module):
    """Linear map of ``dim`` features made of ``dim / block`` independent ``block x block`` blocks (+ bias)."""

    def __init__(self, dim: int, block: int = 4):
        super().__init__()
        self.block = block
        self.weight = nn.Parameter(torch.randn(dim // block, block, block) * math.sqrt(2 / (5 * block)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        shape = x.shape
        x = x.reshape(*shape[:-1], -1, self.block)
        return torch.einsum("...hd,hod->...ho", x, self.weight).reshape(shape) + self.bias


class MLSTMBlock(nn.Module):
    """``[N, L, C] -> [N, L, C]``: pre-LN residual mLSTM block (module docstring)."""

    def __init__(self, dim: int = 64, expansion: int = 4, heads: int = 4, conv_kernel: int = 4, qk_block: int = 4):
        super().__init__()
        inner = dim * expansion
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.proj_up = nn.Linear(dim, 2 * inner)
        self.conv = nn.Conv1d(inner, inner, conv_kernel, groups=inner, padding=conv_kernel - 1)
        self.q_proj, self.k_proj, self.v_proj = (_BlockDiagonal(inner, qk_block) for _ in range(3))
        self.igate = nn.Linear(3 * inner, heads)
        self.fgate = nn.Linear(3 * inner, heads)
        self.outnorm = nn.GroupNorm(heads, inner)  # LayerNorm per head (weight and bias)
        self.skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, dim)
        nn.init.normal_(self.proj_up.weight, std=math.sqrt(2 / (5 * dim)))
        nn.init.normal_(self.proj_down.weight, std=2 / math.sqrt(dim))
        nn.init.zeros_(self.igate.weight)
        nn.init.zeros_(self.fgate.weight)
        for lin in (self.proj_up, self.proj_down, self.igate, self.fgate):  # all linear biases start at 0
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        xm, z = self.proj_up(self.norm(x)).chunk(2, dim=-1)  # [N, L, inner] each
        conv = F.silu(self.conv(xm.transpose(1, 2))[..., :length].transpose(1, 2))  # causal
        q, k, v = self.q_proj(conv), self.k_proj(conv), self.v_proj(xm)
        gates_in = torch.cat([q, k, v], dim=-1)
        i_pre = self.igate(gates_in).transpose(1, 2)  # [N, H, L]
        f_pre = self.fgate(gates_in).transpose(1, 2)

        def heads(t):  # [N, L, inner] -> [N, H, L, D]
            return t.reshape(n, length, self.heads, -1).transpose(1, 2)

        h = mlstm_parallel(heads(q), heads(k), heads(v), i_pre, f_pre)  # [N, H, L, D]
        h = h.transpose(1, 2).reshape(n * length, -1)
        h = self.outnorm(h).reshape(n, length, -1)
        h = (h + self.skip * conv) * F.silu(z)
        return x + self.proj_down(h)


class LSTMBlock(nn.Module):
    """``[N, L, C] -> [N, L, C]``: one unidirectional ``nn.LSTM(C, hidden, proj_size=C)``."""

    def __init__(self, dim: int = 64, hidden: int = 121):
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, proj_size=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class BiRecurrent(nn.Module):
    """Forward block on x, a separate backward block on flip(x) flipped back, concatenated:
    ``[N, L, C] -> [N, L, 2C]`` (the interface of ``training.mamba.BiMamba``)."""

    def __init__(self, make):
        super().__init__()
        self.forward_block = make()
        self.backward_block = make()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        back = self.backward_block(x.flip(1)).flip(1)
        return torch.cat([self.forward_block(x), back], dim=-1)
