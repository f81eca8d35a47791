"""Fused, memory-bounded CPU selective scan (C kernels), with mamba_ssm ``selective_scan_fn`` semantics.

    u, delta, z: (batch, dim, L)   A: (dim, N)   B, C: (batch, N, L)   D, delta_bias: (dim,)
    delta <- softplus(delta + delta_bias);  h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t
    y_t = <h_t, C_t> + D u_t;  out = y * silu(z)

The kernels work channel-last, (batch, L, dim), the layout a Mamba layer's projections produce:
inputs given as transposed views of channel-last storage are used without a copy, and the
results come back as such views. The forward keeps the states of a block of channels in a small
buffer and loops over time, in parallel over batch x channel groups; the backward is a reverse
scan that recomputes the states of each chunk of ``CHUNK`` steps from checkpoints saved by the
forward. Memory is O(B·L·D + B·D·N·L/CHUNK) instead of the O(B·L·D·N) of the reference scans:
autograd keeps only the inputs and the checkpoints. Everything (softplus of the step and its
derivative, exp, D skip, silu gate, all gradients) is computed inside the kernels. Float64
inputs are computed in float64 (libm); everything else in float32 with vectorised polynomial
exp/log1p (relative error < 5e-7); gradients of A, D and delta_bias accumulate in float64. Results do not
depend on the thread count.

The kernels (``training/kernels/csrc/se_cpu.c``) are compiled for this CPU on first use and cached (see
``training.kernels.native``); work items run on ``torch.get_num_threads()`` threads. Importing
this module fails with an ImportError when no C compiler can build them; ``training.mamba.scan``
then falls back to the pure-PyTorch scan.
"""

from __future__ import annotations

import numpy as np
import torch

from training.kernels import native as _native
from training.kernels.native import as_array as _np
from training.kernels.native import compute_dtype as _compute_dtype
from training.kernels.native import ptr as _ptr
from training.kernels.native import run_items as _run

_LIB = _native.load()  # NativeBuildError (an ImportError) when no C compiler can build it
BLOCK = 16
"""Channels per vector block of the kernels (``BLOCK`` in training/kernels/csrc/se_cpu.c)."""
_HAS_D, _HAS_BIAS, _HAS_Z, _SOFTPLUS = 1, 2, 4, 8

__all__ = ["CHUNK", "selective_scan_fused"]

CHUNK = 64
"""Time steps between two saved states; the backward recomputes states within a chunk."""


def _cl(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """(batch, dim, L) -> the kernels' channel-last (batch, L, dim); free for channel-last storage."""
    return _np(x.transpose(1, 2), dtype)


WORK_ITEMS = 128
"""Minimum parallel work items; channel blocks are split into groups when the batch is smaller.
Fixed (not derived from the thread count) so that results do not depend on the thread count."""


def _groups(batch: int, dim: int) -> int:
    blocks = -(-dim // BLOCK)
    return max(1, min(blocks, -(-WORK_ITEMS // batch)))


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


def _prepare(u, delta, A, B, C, D, z, delta_bias, softplus: bool):
    """Kernel inputs (channel-last numpy arrays in the compute dtype, dummies for absent
    D/bias/z), the flags word and the kernel library's function suffix."""
    dtype = _compute_dtype(u)
    dummy = np.zeros(1, dtype=np.float64 if dtype == torch.float64 else np.float32)
    arrays = [
        _cl(u, dtype), _cl(delta, dtype), _np(A.t(), dtype), _cl(B, dtype), _cl(C, dtype),
        _np(D, dtype) if D is not None else dummy,
        _np(delta_bias, dtype) if delta_bias is not None else dummy,
        _cl(z, dtype) if z is not None else dummy,
    ]
    flags = ((_HAS_D if D is not None else 0) | (_HAS_BIAS if delta_bias is not None else 0)
             | (_HAS_Z if z is not None else 0) | (_SOFTPLUS if softplus else 0))
    return arrays, flags, ("f64" if dtype == torch.float64 else "f32")


def _dims(u, A) -> tuple[int, int, int, int, int]:
    """(nb, L, nd, N, groups) as the kernels take them."""
    batch, dim, length = u.shape
    return batch, length, dim, A.shape[1], _groups(batch, dim)


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, save: bool):
    """Run the forward kernel. Returns (out (batch, dim, L) in the compute dtype, ckpt or None)."""
    arrays, flags, suffix = _prepare(u, delta, A, B, C, D, z, delta_bias, softplus)
    nb, length, dim, n, groups = _dims(u, A)
    out = np.empty((nb, length, dim), dtype=arrays[0].dtype)
    ckpt = np.empty((nb, -(-length // CHUNK), n, dim), dtype=out.dtype) if save else None
    head = (*map(_ptr, arrays), flags, nb, length, dim, n, groups, CHUNK)
    _run(getattr(_LIB, f"scan_forward_{suffix}"), nb * groups, head, (_ptr(out), _ptr(ckpt)))
    return torch.from_numpy(out).transpose(1, 2), (torch.from_numpy(ckpt) if save else None)


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, ckpt = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save=True)
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        arrays, flags, suffix = _prepare(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus)
        nb, length, dim, n, groups = _dims(u, A)
        f = arrays[0].dtype
        du = np.empty((nb, length, dim), dtype=f)
        ddelta = np.empty((nb, length, dim), dtype=f)
        dz = np.empty((nb, length, dim) if z is not None else (1,), dtype=f)
        dA = np.empty((nb, n, dim), dtype=np.float64)
        dD = np.empty((nb, dim), dtype=np.float64)
        dbias = np.empty((nb, dim), dtype=np.float64)
        dB = np.zeros((groups, nb, length, n), dtype=f)
        dC = np.zeros((groups, nb, length, n), dtype=f)
        dout_cl = _cl(dout, ckpt.dtype)  # kept alive until the kernels return
        head = (*map(_ptr, arrays), flags, nb, length, dim, n, groups, CHUNK)
        tail = tuple(map(_ptr, (dout_cl, ckpt.numpy(), du, ddelta, dz, dA, dD, dbias, dB, dC)))
        _run(getattr(_LIB, f"scan_backward_{suffix}"), nb * groups, head, tail)
        del arrays, dout_cl
        need = ctx.needs_input_grad

        def grad(i, array, like, how=None):
            """Gradient i as a tensor shaped and typed like ``like``."""
            if not need[i]:
                return None
            t = torch.from_numpy(array)
            if how == "cl":  # (batch, L, dim) -> (batch, dim, L)
                t = t.transpose(1, 2)
            elif how == "sum":  # per batch row (float64) -> summed
                t = t.sum(0)
            elif how == "sum_t":  # (groups, batch, L, N) -> (batch, N, L); (batch, N, dim) -> (dim, N)
                t = t.sum(0).transpose(-1, -2)
            return t.to(like.dtype)

        return (
            grad(0, du, u, "cl"), grad(1, ddelta, delta, "cl"), grad(2, dA, A, "sum_t"),
            grad(3, dB, B, "sum_t"), grad(4, dC, C, "sum_t"), grad(5, dD, D, "sum"),
            grad(6, dz, z, "cl"), grad(7, dbias, delta_bias, "sum"), None,
        )


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Selective scan on CPU tensors; same arguments and result as mamba_ssm ``selective_scan_fn``.

    Returns out: (batch, dim, L) in u's dtype. Differentiable in every tensor argument.
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    args = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        return _FusedScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    out, _ = _forward(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), save=False)
    return out.to(u.dtype)
