"""A slow, obviously correct selective scan used as the test oracle.

Semantics are those of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` with
real-valued inputs and variable (input-dependent) B and C:

    u, delta, z: (batch, dim, length)      A: (dim, state)
    B, C:        (batch, state, length)    D, delta_bias: (dim,)

    delta = softplus(delta + delta_bias)            (bias/softplus optional)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t     (h: (batch, dim, state))
    y_t   = <h_t, C_t> + D * u_t
    y     = y * silu(z)                             (when z is given)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequential_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Loop over time one step at a time, in float64 unless the inputs say otherwise."""
    if delta_bias is not None:
        delta = delta + delta_bias[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]  # (b, d, 1)
        h = torch.exp(dt * A[None]) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[None, :, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y
