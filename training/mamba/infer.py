"""Inference-only fused Mamba layer on CPU: one C kernel (``training/kernels/csrc/mamba_infer_impl.h``)
runs ``[x +] Mamba(RMSNorm(x))`` chunk by chunk with every intermediate in a small per-thread buffer.

Taken only when no gradient can be needed (:func:`usable`: ``torch.is_grad_enabled()`` false, float32
CPU input, the ``fused`` scan backend, ``d_inner`` a multiple of 16, no forward hook on a module it
replaces, so FLOP counters and profilers still see every call); the autograd path of
:class:`~training.mamba.mixer.Mamba` is untouched. The result equals that path's forward to float32
rounding: the conv, softplus, scan and gate run the same arithmetic as the training kernels, the
projections sum in another order.

    fused_layer(mixer, x[B, L, d_model], norm=None, residual=False, reverse=False, out=None)
        -> out[B, L, d_model]  (``out`` may be a column slice of a wider channel-last tensor)

``reverse`` reads the sequence from its end, as ``flip(mixer(flip(x)))`` (BiMamba's backward branch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.mamba.scan import resolve_backend

VEC = 16
"""Width the kernel's projections work in (padded weights); d_inner must be a multiple of it."""


def hooked(modules) -> bool:
    """Whether a forward hook would miss a call the fused kernel replaces (FLOP counters, profilers)."""
    g = torch.nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for top in modules for m in top.modules())


def usable(mixer, x: torch.Tensor, *around) -> bool:
    """Whether ``fused_layer`` may run ``mixer`` (and the modules ``around`` it that it replaces, a
    norm, a residual block) on ``x``: inference, float32 CPU, kernels built, no forward hooks inside."""
    if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 3:
        return False
    if mixer.d_inner % VEC or mixer.conv1d.weight.dtype != torch.float32:
        return False
    return resolve_backend(x) == "fused" and not hooked((mixer, *around))


def _pad_cols(w: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(w, (0, width - w.shape[1])).contiguous()


def _weights(mixer) -> list[torch.Tensor | None]:
    """The kernel's parameter arrays (transposed, padded), in its argument order."""
    e, n, r = mixer.d_inner, mixer.d_state, mixer.dt_rank
    p = -(-(r + 2 * n) // VEC) * VEC
    dmp = -(-mixer.d_model // VEC) * VEC
    k = mixer.conv1d.weight.shape[-1]
    cb = mixer.conv1d.bias
    return [
        mixer.in_proj.weight.t().contiguous(), mixer.in_proj.bias,
        mixer.conv1d.weight.reshape(e, k).t().contiguous(), cb,
        _pad_cols(mixer.x_proj.weight.t(), p), mixer.dt_proj.weight.t().contiguous(),
        mixer.dt_proj.bias.float().contiguous(), (-torch.exp(mixer.A_log.float())).t().contiguous(),
        mixer.D.float().contiguous(), _pad_cols(mixer.out_proj.weight.t(), dmp), mixer.out_proj.bias,
    ]


def fused_layer(mixer, x: torch.Tensor, norm=None, residual: bool = False, reverse: bool = False,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """``[x +] mixer(norm(x))`` (each part optional) by the fused kernel; see the module docstring."""
    from training.kernels import native

    x = x.contiguous()
    nb, length, dm = x.shape
    if out is None:
        out = torch.empty_like(x)
    if out.shape != x.shape or out.stride(-1) != 1 or out.stride(0) != length * out.stride(1):
        raise ValueError(f"fused_layer: out must be {tuple(x.shape)} with unit channel stride, rows evenly spaced")
    weights = [w.detach().contiguous() if w is not None else None for w in _weights(mixer)]
    normw = norm.weight.detach().contiguous() if norm is not None else None
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    e, n, r = mixer.d_inner, mixer.d_state, mixer.dt_rank
    head = (ptr(x), ptr(normw), float(norm.eps) if norm is not None else 0.0, int(reverse), int(residual),
            *map(ptr, weights), nb, length, dm, e, r, n, weights[4].shape[1], mixer.conv1d.weight.shape[-1])
    native.run_items(native.load().mamba_infer_f32, nb, head, (out.data_ptr(), out.stride(1)))
    return out
