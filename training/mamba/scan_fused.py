"""Fused, memory-bounded CPU selective scan (numba), with mamba_ssm ``selective_scan_fn`` semantics.

    u, delta, z: (batch, dim, L)   A: (dim, N)   B, C: (batch, N, L)   D, delta_bias: (dim,)
    delta <- softplus(delta + delta_bias);  h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t
    y_t = <h_t, C_t> + D u_t;  out = y * silu(z)

The forward keeps one channel's state in registers and loops over time, in parallel over
batch x channel; the backward is a reverse scan that recomputes the states of each chunk of
``CHUNK`` steps from checkpoints saved by the forward. Memory is O(B·L·D + B·D·N·L/CHUNK)
instead of the O(B·L·D·N) of the reference scans. Float64 inputs are computed in float64,
everything else in float32 (gradients of A accumulate in float64).

Importing this module fails when numba is missing; ``training.mamba.scan`` then falls back to
the pure-PyTorch scan. The first call compiles the kernels (cached on disk by numba afterwards).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F

from training.mamba import _scan_kernels as _k

__all__ = ["CHUNK", "selective_scan_fused"]

CHUNK = 64
"""Time steps between two saved states; the backward recomputes states within a chunk."""


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _np(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return x.detach().to(dtype).contiguous().numpy()


def _use_threads() -> int:
    """Use as many numba threads as torch does (e.g. 1 inside a data-loader worker)."""
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


WORK_ITEMS = 128
"""Minimum parallel work items; channels are split into groups when the batch is smaller.
Fixed (not derived from the thread count) so that results do not depend on the thread count."""


def _groups(batch: int, dim: int) -> int:
    return max(1, min(dim, -(-WORK_ITEMS // batch)))


def _delta(delta, delta_bias, softplus, dtype):
    dt = delta.detach().to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.detach().to(dtype)[None, :, None]
    return F.softplus(dt) if softplus else dt


def _check(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan_fused: u and delta must be (batch, dim, L), got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan_fused: A must be (dim={dim}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (batch, n, length):
            raise ValueError(f"selective_scan_fused: {name} must be (batch, N, L) = {(batch, n, length)}, got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"selective_scan_fused: {name} must be (dim,) = ({dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan_fused: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if A.is_complex() or u.is_complex():
        raise ValueError("selective_scan_fused: complex inputs are not supported")
    if u.device.type != "cpu":
        raise ValueError(f"selective_scan_fused: CPU tensors only, got device {u.device}")


def _scan_forward(u, dt, A, B, C, save: bool):
    """Run the forward kernel. dt: (batch, dim, L) in the compute dtype. Returns (y, ckpt)."""
    dtype = dt.dtype
    batch, dim, length = u.shape
    n = A.shape[1]
    _use_threads()
    groups = _groups(batch, dim)
    y = np.empty((batch, dim, length), dtype=dt.numpy().dtype)
    nchunk = -(-length // CHUNK)
    shape = (batch, dim, nchunk, n) if save else (1, 1, 1, 1)
    ckpt = np.empty(shape, dtype=y.dtype)
    _k.scan_forward(
        _np(u, dtype), dt.numpy(), _np(A, dtype),
        _np(B.transpose(1, 2), dtype), _np(C.transpose(1, 2), dtype),
        groups, CHUNK, save, y, ckpt,
    )
    return torch.from_numpy(y), torch.from_numpy(ckpt)


def _finish(y, u, D, z):
    """y + D u, gated by silu(z). Returns (out, y_before_gate)."""
    if D is not None:
        y = y + D.detach().to(y.dtype)[None, :, None] * u.detach().to(y.dtype)
    out = y * F.silu(z.detach().to(y.dtype)) if z is not None else y
    return out, y


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        dtype = _compute_dtype(u)
        dt = _delta(delta, delta_bias, delta_softplus, dtype).contiguous()
        y, ckpt = _scan_forward(u, dt, A, B, C, save=True)
        out, y_pre = _finish(y, u, D, z)
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, y_pre if z is not None else None)
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, ckpt, y_pre = ctx.saved_tensors
        dtype = ckpt.dtype
        batch, dim, length = u.shape
        n = A.shape[1]
        dout = dout.to(dtype)
        dz = None
        if z is not None:
            zc = z.detach().to(dtype)
            sz = torch.sigmoid(zc)
            if ctx.needs_input_grad[6]:
                dz = (dout * y_pre * sz * (1 + zc * (1 - sz))).to(z.dtype)
            dy = dout * (zc * sz)
        else:
            dy = dout
        dy = dy.contiguous()
        dt = _delta(delta, delta_bias, ctx.delta_softplus, dtype).contiguous()
        _use_threads()
        groups = _groups(batch, dim)
        npdt = dt.numpy().dtype
        du = np.empty((batch, dim, length), dtype=npdt)
        ddt = np.empty((batch, dim, length), dtype=npdt)
        dA_part = np.empty((batch, dim, n), dtype=np.float64)
        dB_part = np.zeros((groups, batch, length, n), dtype=npdt)
        dC_part = np.zeros((groups, batch, length, n), dtype=npdt)
        _k.scan_backward(
            _np(u, dtype), dt.numpy(), _np(A, dtype),
            _np(B.transpose(1, 2), dtype), _np(C.transpose(1, 2), dtype),
            dy.numpy(), ckpt.numpy(), groups, CHUNK, du, ddt, dA_part, dB_part, dC_part,
        )
        du = torch.from_numpy(du)
        ddt = torch.from_numpy(ddt)
        grads = {}
        if D is not None:
            if ctx.needs_input_grad[5]:
                grads["D"] = (dy * u.detach().to(dtype)).sum((0, 2)).to(D.dtype)
            du = du + dy * D.detach().to(dtype)[None, :, None]
        if ctx.delta_softplus:
            raw = delta.detach().to(dtype)
            if delta_bias is not None:
                raw = raw + delta_bias.detach().to(dtype)[None, :, None]
            ddt = ddt * torch.sigmoid(raw)
        if delta_bias is not None and ctx.needs_input_grad[7]:
            grads["bias"] = ddt.sum((0, 2)).to(delta_bias.dtype)
        dA = torch.from_numpy(dA_part.sum(0)).to(A.dtype)
        dB = torch.from_numpy(dB_part.sum(0)).transpose(1, 2).to(B.dtype)
        dC = torch.from_numpy(dC_part.sum(0)).transpose(1, 2).to(C.dtype)
        need = ctx.needs_input_grad
        return (
            du.to(u.dtype) if need[0] else None,
            ddt.to(delta.dtype) if need[1] else None,
            dA if need[2] else None,
            dB if need[3] else None,
            dC if need[4] else None,
            grads.get("D"),
            dz,
            grads.get("bias"),
            None,
        )


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Selective scan on CPU tensors; same arguments and result as mamba_ssm ``selective_scan_fn``.

    Returns out: (batch, dim, L) in u's dtype. Differentiable in every tensor argument.
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    args = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        return _FusedScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    dtype = _compute_dtype(u)
    dt = _delta(delta, delta_bias, delta_softplus, dtype).contiguous()
    y, _ = _scan_forward(u, dt, A, B, C, save=False)
    return _finish(y, u, D, z)[0].to(u.dtype)
