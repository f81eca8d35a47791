"""Causal depthwise conv1d + SiLU on channel-last input: the Mamba mixer's ``silu(conv1d(x))``.

    x: (batch, L, dim)   weight: (dim, 1, K) (nn.Conv1d's)   bias: (dim,) or None
    out[b, t, d] = silu(bias[d] + sum_k weight[d, 0, k] x[b, t - K + 1 + k, d])   (x = 0 before t = 0)
    -> (batch, L, dim)

:func:`causal_conv1d_silu` runs a fused C kernel with its own backward (``csrc/causal_conv_impl.h``)
when ``native`` is true (CPU tensors, kernels built), else torch's conv1d on the transposed input
(any device). Float64 is computed in float64, other dtypes in float32; gradients of the weight and
bias accumulate in float64 per batch row. Results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.kernels import native as _native
from training.kernels.native import as_array as _np
from training.kernels.native import compute_dtype as _compute_dtype


def _kernel_args(x, weight, bias):
    """(arrays kept alive, head of the kernel arguments before the item range, suffix)."""
    dtype = _compute_dtype(x)
    batch, length, dim = x.shape
    k = weight.shape[-1]
    arrays = [_np(x, dtype), _np(weight.reshape(dim, k).t(), dtype),
              _np(bias if bias is not None else weight.new_zeros(1), dtype)]
    head = (*map(_native.ptr, arrays), int(bias is not None), batch, length, dim, k)
    return arrays, head, "f64" if dtype == torch.float64 else "f32"


class _ConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        arrays, head, suffix = _kernel_args(x, weight, bias)
        out = np.empty(arrays[0].shape, dtype=arrays[0].dtype)
        lib = _native.load()
        _native.run_items(getattr(lib, f"conv_forward_{suffix}"), x.shape[0], head, (_native.ptr(out),))
        ctx.save_for_backward(x, weight, bias)
        return torch.from_numpy(out).to(x.dtype)

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        arrays, head, suffix = _kernel_args(x, weight, bias)
        batch, length, dim = x.shape
        k = weight.shape[-1]
        dout_np = _np(dout, _compute_dtype(x))
        dx = np.empty(arrays[0].shape, dtype=arrays[0].dtype)
        dw = np.empty((batch, k, dim), dtype=np.float64)
        db = np.empty((batch, dim), dtype=np.float64)
        lib = _native.load()
        tail = tuple(map(_native.ptr, (dout_np, dx, dw, db)))
        _native.run_items(getattr(lib, f"conv_backward_{suffix}"), batch, head, tail)
        need = ctx.needs_input_grad
        return (
            torch.from_numpy(dx).to(x.dtype) if need[0] else None,
            torch.from_numpy(dw).sum(0).t().reshape(weight.shape).to(weight.dtype) if need[1] else None,
            torch.from_numpy(db).sum(0).to(bias.dtype) if bias is not None and need[2] else None,
        )


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, native: bool) -> torch.Tensor:
    """``silu`` of the causal depthwise conv of channel-last ``x``; see the module docstring."""
    if x.dim() != 3 or weight.dim() != 3 or weight.shape[0] != x.shape[2] or weight.shape[1] != 1:
        raise ValueError(f"causal_conv1d_silu: need x (batch, L, dim) and weight (dim, 1, K), got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if native:
        return _ConvSilu.apply(x, weight, bias)
    k, length = weight.shape[-1], x.shape[1]
    y = F.conv1d(x.transpose(1, 2), weight, bias, padding=k - 1, groups=x.shape[2])[..., :length]
    return F.silu(y).transpose(1, 2)
