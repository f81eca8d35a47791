"""The Mamba (S6) mixer with exactly ``mamba_ssm.Mamba``'s parameters and initialisation.

State-dict keys (d_inner = expand * d_model, dt_rank = ceil(d_model / 16) when "auto"):
``in_proj.weight [2*d_inner, d_model]``, ``conv1d.weight [d_inner, 1, d_conv]``, ``conv1d.bias``,
``x_proj.weight [dt_rank + 2*d_state, d_inner]``, ``dt_proj.weight [d_inner, dt_rank]``,
``dt_proj.bias [d_inner]``, ``A_log [d_inner, d_state]``, ``D [d_inner]``,
``out_proj.weight [d_model, d_inner]`` — so checkpoints load strictly into either implementation.

Like mamba_ssm, ``in_proj`` and ``dt_proj`` are applied as raw matmuls, ``x_proj``/``out_proj``
as module calls and ``conv1d`` by a fused kernel (this matters only to hook-based FLOP counters
reproducing thop numbers; ``training.models.flops`` counts the conv in its Mamba rule).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from training.mamba import kernels
from training.mamba.conv import causal_conv1d_silu
from training.mamba.infer import fused_layer, usable
from training.mamba.scan import resolve_backend, selective_scan


class Mamba(nn.Module):
    """Selective state-space mixer: ``forward(x[B, L, d_model]) -> [B, L, d_model]``."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **fk)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias, **fk
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)

        # dt_proj weight: constant or uniform(±dt_rank^-0.5 * dt_scale).
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"Mamba: dt_init must be 'constant' or 'random', got {dt_init!r}")
        # dt_proj bias: softplus^-1 of dt ~ log-uniform in [dt_min, dt_max] (floored).
        dt = torch.exp(
            torch.rand(self.d_inner, **fk) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

        # S4D-real initialisation: A = -[1..N] for every channel, stored as log.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if usable(self, hidden_states):  # inference on CPU: the whole layer in one C kernel
            return fused_layer(self, hidden_states)
        A = -torch.exp(self.A_log.float())
        backend = resolve_backend(hidden_states)  # raises on a GPU without mamba_ssm's kernels (see scan.py)
        if self.use_fast_path and backend == "mamba_ssm":
            # mamba_ssm's own fused kernels (conv + scan + gating + out_proj), same parameters;
            # in_proj as a raw matmul: [B, L, D] -> [B, 2E, L]
            xz = torch.matmul(self.in_proj.weight, hidden_states.transpose(1, 2))
            if self.in_proj.bias is not None:
                xz = xz + self.in_proj.bias[None, :, None]
            return kernels.load().mamba_inner_fn(
                xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                self.out_proj.weight, self.out_proj.bias, A, None, None, self.D.float(),
                delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            )  # fmt: skip
        return self._forward_channel_last(hidden_states, A, native=backend == "fused")

    def _forward_channel_last(self, hidden_states: torch.Tensor, A: torch.Tensor, native: bool) -> torch.Tensor:
        """CPU, the torch scan on request, or ``use_fast_path=False``: every tensor stays
        (B, L, channels), the layout the projections produce and the CPU kernels read without copies."""
        e = self.d_inner
        w, bias = self.in_proj.weight, self.in_proj.bias
        x = torch.matmul(hidden_states, w[:e].t())  # [B, L, E]
        z = torch.matmul(hidden_states, w[e:].t())
        if bias is not None:
            x, z = x + bias[:e], z + bias[e:]
        x = causal_conv1d_silu(x, self.conv1d.weight, self.conv1d.bias, native=native)
        x_dbl = self.x_proj(x)  # [B, L, R + 2N]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = torch.matmul(dt, self.dt_proj.weight.t())  # raw matmul, bias added in the scan
        t = lambda v: v.transpose(1, 2)  # noqa: E731  [B, L, C] -> the scan's [B, C, L] view
        y = selective_scan(
            t(x), t(dt), A, t(B), t(C), self.D.float(), z=t(z),
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )  # fmt: skip
        return self.out_proj(t(y))
