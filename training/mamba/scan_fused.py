"""Fused, memory-bounded CPU selective scan (numba), with mamba_ssm ``selective_scan_fn`` semantics.

    u, delta, z: (batch, dim, L)   A: (dim, N)   B, C: (batch, N, L)   D, delta_bias: (dim,)
    delta <- softplus(delta + delta_bias);  h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t
    y_t = <h_t, C_t> + D u_t;  out = y * silu(z)

The forward keeps one channel's state in registers and loops over time, in parallel over
batch x channel; the backward is a reverse scan that recomputes the states of each chunk of
``CHUNK`` steps from checkpoints saved by the forward. Memory is O(B·L·D + B·D·N·L/CHUNK)
instead of the O(B·L·D·N) of the reference scans: autograd keeps only the inputs and the
checkpoints. softplus(delta + delta_bias) and its derivative are computed by torch; the rest
(exp, D skip, silu gate, all gradients) inside the kernels. Float64 inputs are computed in
float64 (libm exp); everything else in float32 with a vectorised polynomial exp (relative error
< 5e-7); gradients of A and D accumulate in float64. Results do not depend on the thread count.

Importing this module fails when numba is missing; ``training.mamba.scan`` then falls back to
the pure-PyTorch scan. The first call per dtype compiles the kernels (~30 s on 2 busy cores);
numba caches them on disk (``__pycache__`` or ``$NUMBA_CACHE_DIR``), later processes load them
in well under a second. numba uses as many threads as ``torch.get_num_threads()``.
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


def _step(delta, delta_bias, softplus: bool, dtype):
    """The step the scan uses, softplus(delta + delta_bias); a new tensor when ``softplus``."""
    dt = delta.detach().to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.detach().to(dtype)[None, :, None]
    return (F.softplus(dt) if softplus else dt).contiguous()


def _prepare(u, delta, A, B, C, D, z, delta_bias, softplus: bool):
    """Kernel arguments: contiguous numpy arrays in the compute dtype, B/C transposed, dt after
    bias/softplus; dummies for absent D/z."""
    dtype = _compute_dtype(u)
    dummy = np.zeros(1, dtype=np.float64 if dtype == torch.float64 else np.float32)
    dt = _step(delta, delta_bias, softplus, dtype)
    arrays = [
        _np(u, dtype), dt.numpy(), _np(A, dtype),
        _np(B.transpose(1, 2), dtype), _np(C.transpose(1, 2), dtype),
        _np(D, dtype) if D is not None else dummy,
    ]
    arrays.append(_np(z, dtype) if z is not None else dummy.reshape(1, 1, 1))
    return arrays, (D is not None, z is not None, dtype == torch.float32)


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, save: bool):
    """Run the forward kernel. Returns (out in the compute dtype, ckpt or None)."""
    arrays, flags = _prepare(u, delta, A, B, C, D, z, delta_bias, softplus)
    batch, dim, length = u.shape
    _use_threads()
    out = np.empty((batch, dim, length), dtype=arrays[0].dtype)
    shape = (batch, dim, -(-length // CHUNK), A.shape[1]) if save else (1, 1, 1, 1)
    ckpt = np.empty(shape, dtype=out.dtype)
    _k.scan_forward(*arrays, *flags, _groups(batch, dim), CHUNK, save, out, ckpt)
    return torch.from_numpy(out), (torch.from_numpy(ckpt) if save else None)


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
        arrays, flags = _prepare(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus)
        batch, dim, length = u.shape
        n = A.shape[1]
        f = arrays[0].dtype
        groups = _groups(batch, dim)
        du = np.empty((batch, dim, length), dtype=f)
        ddt = np.empty((batch, dim, length), dtype=f)
        dz = np.empty((batch, dim, length) if z is not None else (1, 1, 1), dtype=f)
        dA = np.empty((batch, dim, n), dtype=np.float64)
        dD = np.empty((batch, dim), dtype=np.float64)
        dB = np.zeros((groups, batch, length, n), dtype=f)
        dC = np.zeros((groups, batch, length, n), dtype=f)
        _use_threads()
        _k.scan_backward(
            *arrays, *flags, _np(dout, ckpt.dtype), ckpt.numpy(), groups, CHUNK,
            du, ddt, dz, dA, dD, dB, dC,
        )
        need = ctx.needs_input_grad
        dt = torch.from_numpy(arrays[1])
        del arrays
        ddelta = torch.from_numpy(ddt)
        if ctx.delta_softplus:
            # d softplus(x)/dx = sigmoid(x) = 1 - exp(-softplus(x)); dt is our own tensor here.
            ddelta.mul_(torch.expm1(dt.neg_()).neg_())
        del dt
        dbias = ddelta.sum((0, 2), dtype=torch.float64) if delta_bias is not None and need[7] else None

        def grad(i, array, like, reduce=None):
            if not need[i]:
                return None
            t = torch.from_numpy(array.sum(0) if reduce else array)
            return t.transpose(1, 2).to(like.dtype) if reduce == "T" else t.to(like.dtype)

        return (
            grad(0, du, u), ddelta.to(delta.dtype) if need[1] else None, grad(2, dA, A, "sum"),
            grad(3, dB, B, "T"), grad(4, dC, C, "T"), grad(5, dD, D, "sum"),
            grad(6, dz, z), dbias.to(delta_bias.dtype) if dbias is not None else None, None,
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
