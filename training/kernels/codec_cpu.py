"""The dense codec's steps without autograd on CPU, where PyTorch's own are memory-bound (C kernels
in ``csrc/codec_impl.h``). Each takes the modules it replaces, and runs those modules instead
whenever its kernel does not apply (autograd, autocast, forward hooks, other dtypes, devices or
options), so the two always agree to float32 rounding (tests/test_codec_cpu.py).

- ``instance_norm_prelu(x, norm, prelu, out=None) -> Tensor[B, C, H, W]``: ``prelu(norm(x))`` for an
  affine InstanceNorm2d without running statistics and a PReLU of 1 or C weights, written into
  ``out`` when given: any ``[B, C, H, W]`` view with contiguous planes, such as a channel slice of
  a bigger buffer (how DenseBlock concatenates). PyTorch spends seven passes over memory on
  instance_norm + prelu + cat, this two reads and a write.
- ``conv_transpose_freq(x, convt) -> Tensor[B, C_out, T, (F - 1) S + K]``: a ConvTranspose2d with
  kernel (1, K), stride (1, S), no padding or groups, as a 1x1 convolution to K * C_out channels
  (oneDNN) and one overlap-add pass; PyTorch's CPU ConvTranspose2d runs a reference col2im.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.kernels import native


def _planes_contiguous(t: torch.Tensor) -> bool:
    b, c, h, w = t.shape
    return t.stride(3) == 1 and (h == 1 or t.stride(2) == w) and (c == 1 or t.stride(1) == h * w)


def _plain_inference(x: torch.Tensor, modules: tuple, kernel: str) -> bool:
    """What both kernels need: float32 4-D CPU input, no autograd, no autocast, no hooks on the
    modules they replace, and the kernel built."""
    from training.mamba.infer import hooked

    return (x.device.type == "cpu" and native.plain_inference("cpu") and x.dtype == torch.float32 and x.dim() == 4
            and not hooked(modules) and native.kernel(kernel) is not None)


def kernel_applies(x: torch.Tensor, norm: nn.Module, prelu: nn.Module) -> bool:
    """Whether the C kernel takes this input and these modules (else the modules run)."""
    return (isinstance(norm, nn.InstanceNorm2d) and norm.affine and norm.weight.dtype == torch.float32
            and not (norm.track_running_stats and not norm.training) and isinstance(prelu, nn.PReLU)
            and prelu.weight.numel() in (1, x.shape[1]) and x.is_contiguous()
            and _plain_inference(x, (norm, prelu), "inorm_prelu_f32"))


def instance_norm_prelu(x: torch.Tensor, norm: nn.Module, prelu: nn.Module, out: torch.Tensor | None = None):
    """``prelu(norm(x))``, into ``out`` (a [B, C, H, W] view with contiguous planes) when given."""
    if out is not None and (out.shape != x.shape or not _planes_contiguous(out) or out.dtype != x.dtype):
        raise ValueError(f"out must be a {tuple(x.shape)} {x.dtype} view with contiguous planes, got "
                         f"{tuple(out.shape)} {out.dtype} strides {out.stride()}")
    if not kernel_applies(x, norm, prelu):
        y = prelu(norm(x))
        return y if out is None else out.copy_(y)
    b, c, h, w = x.shape
    if out is None:
        out = torch.empty_like(x)
    params = [p.detach().contiguous() for p in (norm.weight, norm.bias, prelu.weight)]
    native.run_items(native.kernel("inorm_prelu_f32"), b * c, (x.data_ptr(), *(p.data_ptr() for p in params), params[2].numel(),
                                        norm.eps, c, h * w), (out.data_ptr(), out.stride(0)))
    return out


def conv_transpose_freq_applies(x: torch.Tensor, convt: nn.Module) -> bool:
    """Whether :func:`conv_transpose_freq` runs its kernel on this input and module."""
    return (isinstance(convt, nn.ConvTranspose2d) and convt.weight.dtype == torch.float32
            and convt.kernel_size[0] == 1 and convt.stride[0] == 1 and convt.padding == (0, 0)
            and convt.output_padding == (0, 0) and convt.dilation == (1, 1) and convt.groups == 1
            and convt.padding_mode == "zeros" and _plain_inference(x, (convt,), "convt_freq_f32"))


def conv_transpose_freq(x: torch.Tensor, convt: nn.Module) -> torch.Tensor:
    """``convt(x)`` for a ConvTranspose2d (1, K) with stride (1, S) along the last axis."""
    if not conv_transpose_freq_applies(x, convt):
        return convt(x)
    b, _, t, f = x.shape
    c_in, c_out, _, k = convt.weight.shape
    s = convt.stride[1]
    w = convt.weight.detach().permute(3, 1, 0, 2).reshape(k * c_out, c_in, 1, 1)  # tap-major, as z is read
    z = F.conv2d(x, w).contiguous()  # [B, K * C_out, T, F]
    out = x.new_empty(b, c_out, t, (f - 1) * s + k)
    bias = None if convt.bias is None else convt.bias.detach().contiguous()
    native.run_items(native.kernel("convt_freq_f32"), b * c_out,
                     (z.data_ptr(), None if bias is None else bias.data_ptr(), c_out, k, s, t, f), (out.data_ptr(),))
    return out
