"""Selective scan (Mamba's S6 recurrence) with one entry point and three backends.

``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False)`` has
the semantics of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` for real inputs with
input-dependent B and C (see ``tests/scan_oracle.py``)::

    u, delta, z: [b, d, l]    A: [d, n]    B, C: [b, n, l]    D, delta_bias: [d]
    delta = softplus(delta + delta_bias)                 (both optional)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t       h: [b, d, n], h_{-1} = 0
    y_t = <h_t, C_t> + D * u_t ;  y = y * silu(z)        -> y: [b, d, l]

Backends, chosen per call (``SE_SCAN_BACKEND=auto|mamba_ssm|fused|torch`` forces one):
- ``mamba_ssm``: the CUDA/ROCm kernel (``training.mamba.kernels``), used in ``auto`` for GPU tensors.
  When it is not usable, ``auto`` on a GPU tensor raises :class:`ScanBackendError` with the import
  error: the torch scan is a Python loop, far too slow for GPU training, so it runs on a GPU only
  when asked for (``SE_SCAN_BACKEND=torch``).
- ``fused``: ``training.mamba.scan_fused.selective_scan_fused`` (CPU), used in ``auto`` when it imports.
- ``torch``: :func:`selective_scan_torch` below, pure PyTorch, any device.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from training.mamba import kernels

try:  # fused CPU scan, written separately
    from training.mamba.scan_fused import selective_scan_fused as _fused_scan
except Exception:  # no C compiler (NativeBuildError, an ImportError) or a library that will not load
    _fused_scan = None

BACKENDS = ("auto", "mamba_ssm", "fused", "torch")

# Target elements of one [b, d, chunk, n] work tensor (4 MB float32): bounds the scan's transient
# memory; 2**18..2**22 measured within 20% of each other on CPU (b=64, d=256, n=16, l=321).
_CHUNK_ELEMENTS = 1 << 20
_MIN_CHUNK = 8


class ScanBackendError(ValueError):
    """``SE_SCAN_BACKEND`` names an unknown or unavailable backend."""


def available_backends() -> list[str]:
    """Backends that can run in this process (``torch`` always can)."""
    names = []
    if kernels.load().available:
        names.append("mamba_ssm")
    if _fused_scan is not None:
        names.append("fused")
    names.append("torch")
    return names


def requested_backend() -> str:
    """``$SE_SCAN_BACKEND`` (default ``auto``), checked against the known names."""
    name = os.environ.get("SE_SCAN_BACKEND", "auto") or "auto"
    if name not in BACKENDS:
        raise ScanBackendError(f"SE_SCAN_BACKEND={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def choose_backend(device_type: str, requested: str | None = None) -> str:
    """The backend for tensors on ``device_type`` ("cpu", "cuda"), given ``requested`` or the env."""
    name = requested or requested_backend()
    if name not in BACKENDS:
        raise ScanBackendError(f"SE_SCAN_BACKEND={name!r}: expected one of {', '.join(BACKENDS)}")
    gpu = device_type != "cpu"
    if name == "auto":
        if gpu:
            k = kernels.load()
            if not k.available:
                raise ScanBackendError(
                    f"mamba-ssm's GPU kernels are not usable: {k.error}. Install the pinned pair "
                    f"(docs/lumi.md, pyproject extras), or set SE_SCAN_BACKEND=torch to train with the "
                    f"slow torch scan on purpose")
            return "mamba_ssm"
        return "fused" if _fused_scan is not None else "torch"
    if name == "mamba_ssm" and not kernels.load().available:
        raise ScanBackendError(f"SE_SCAN_BACKEND=mamba_ssm: mamba_ssm is not usable here: {kernels.load().error}")
    if name == "fused" and (gpu or _fused_scan is None):
        raise ScanBackendError("SE_SCAN_BACKEND=fused: training.mamba.scan_fused is " +
                               ("CPU only" if gpu else "not importable"))
    return name


def resolve_backend(u: torch.Tensor, requested: str | None = None) -> str:
    """The backend a call on ``u`` will use, given ``requested`` or ``$SE_SCAN_BACKEND``."""
    return choose_backend(u.device.type, requested)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Dispatch to the chosen backend; same arguments and result as ``selective_scan_fn``."""
    backend = resolve_backend(u)
    if backend == "mamba_ssm":
        return kernels.load().selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == "fused":
        return _fused_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Pure-PyTorch selective scan (differentiable; float16/bfloat16 inputs compute in float32)."""
    if B.dim() != 3 or C.dim() != 3:
        raise ValueError("selective_scan_torch: B and C must be input-dependent, shaped [b, n, l]")
    in_dtype = u.dtype
    compute = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
    u, delta, B, C = (t.to(compute) for t in (u, delta, B, C))
    A = A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y = _ChunkedScan.apply(u, delta, A, B, C)
    if D is not None:
        y = y + D.to(compute)[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(in_dtype)


def _linear_scan(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Inclusive scan ``h_t = a_t * h_{t-1} + x_t`` along dim 2, in place in ``x`` (a fresh tensor).

    A step loop over one chunk: each step is one fused multiply-add on a cache-sized ``[b, d, n]``
    slice. On CPU this measured 2.5x faster than a log-depth (Hillis-Steele) scan of the same chunk
    (b=64, d=256, n=16, l=321, one thread: forward 2.1 s vs 5.0 s) because it does O(K) work, not O(K log K).
    """
    for t in range(1, x.shape[2]):
        x[:, :, t].addcmul_(a[:, :, t], x[:, :, t - 1])
    return x


def _chunk_len(b: int, d: int, n: int, length: int) -> int:
    return max(1, min(length, max(_MIN_CHUNK, _CHUNK_ELEMENTS // max(1, b * d * n))))


class _ChunkedScan(torch.autograd.Function):
    """``y_t = <h_t, C_t>`` of the recurrence above, without D/z/softplus.

    Memory-lean: the sequence is cut into chunks along time; the decay and input terms of a chunk are
    built in one vectorised pass, then scanned step by step (see `_linear_scan`); chunks carry the state.
    Only the inputs and the chunk-boundary states
    are saved; the backward pass recomputes each chunk and runs the reverse (adjoint) scan.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        b, d, length = u.shape
        n = A.shape[1]
        k = _chunk_len(b, d, n, length)
        h = u.new_zeros(b, d, n)
        starts, ys = [], []
        for t0 in range(0, length, k):
            t1 = min(length, t0 + k)
            starts.append(h)
            dA, X = _chunk_terms(u, delta, A, B, t0, t1)
            X[:, :, 0] += dA[:, :, 0] * h
            H = _linear_scan(dA, X)
            ys.append(torch.einsum("bdkn,bnk->bdk", H, C[:, :, t0:t1]))
            h = H[:, :, -1]
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts))
        ctx.chunk = k
        return torch.cat(ys, dim=2)

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, starts = ctx.saved_tensors
        dy = dy.to(starts.dtype)  # under autocast the forward's einsum gave a bf16 y (and so a bf16 dy)
        k = ctx.chunk
        length = u.shape[2]
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA_param = torch.zeros_like(A)
        carry = None  # dA_{t0'} * G_{t0'} of the following chunk
        chunk_starts = list(range(0, length, k))
        for i in reversed(range(len(chunk_starts))):
            t0 = chunk_starts[i]
            t1 = min(length, t0 + k)
            h0 = starts[i]
            dA, X = _chunk_terms(u, delta, A, B, t0, t1)
            X[:, :, 0] += dA[:, :, 0] * h0
            H = _linear_scan(dA, X)
            dy_c = dy[:, :, t0:t1]
            Bt = B[:, :, t0:t1].transpose(1, 2)[:, None]  # [b, 1, K, n]
            g = dy_c[..., None] * C[:, :, t0:t1].transpose(1, 2)[:, None]
            if carry is not None:
                g[:, :, -1] += carry
            a_next = torch.cat((dA[:, :, 1:], torch.zeros_like(dA[:, :, :1])), 2)
            G = _linear_scan(a_next.flip(2), g.flip(2)).flip(2)  # dL/dh_t
            carry = dA[:, :, 0] * G[:, :, 0]
            H_prev = torch.cat((h0[:, :, None], H[:, :, :-1]), 2)
            gdA = G * H_prev * dA  # dL/d(delta*A) through exp
            delta_c, u_c = delta[:, :, t0:t1], u[:, :, t0:t1]
            GB = (G * Bt).sum(-1)  # [b, d, K]
            ddelta[:, :, t0:t1] = torch.einsum("bdkn,dn->bdk", gdA, A) + GB * u_c
            du[:, :, t0:t1] = GB * delta_c
            dA_param += torch.einsum("bdkn,bdk->dn", gdA, delta_c)
            dB[:, :, t0:t1] = torch.einsum("bdkn,bdk->bnk", G, delta_c * u_c)
            dC[:, :, t0:t1] = torch.einsum("bdkn,bdk->bnk", H, dy_c)
        return du, ddelta, dA_param, dB, dC


def _chunk_terms(u, delta, A, B, t0, t1):
    """``exp(delta*A)`` and ``delta*B*u`` for time steps ``t0..t1-1``, both ``[b, d, K, n]``."""
    dc = delta[:, :, t0:t1, None]
    dA = torch.exp(dc * A[None, :, None, :])
    X = (dc * u[:, :, t0:t1, None]) * B[:, :, t0:t1].transpose(1, 2)[:, None]
    return dA, X
