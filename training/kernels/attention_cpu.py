"""Self-attention from a packed QKV projection on CPU, without autograd (inference).

``attention_from_qkv(qkv, heads, dropout_p=0, bias=None) -> Tensor[S, L, C]`` for ``qkv`` of shape
``[S, L, 3C]`` (the output of ``F.linear(x, in_proj_weight, in_proj_bias)``, or of ``x @
in_proj_weight.T`` with ``bias=in_proj_bias``, which the kernel adds as it reads): softmax(q k^T /
sqrt(C / heads)) v per head, no mask, heads concatenated in the order ``out_proj`` expects. It
uses the C kernel (``csrc/attention_impl.h``) for float32 CPU input without autograd or dropout,
head sizes 4, 6, 8, 12 or 16, when the kernels build here; else ``F.scaled_dot_product_attention``.
Both agree to float32 rounding (tests/test_attention.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.kernels import native

KERNEL_HEAD_SIZES = (4, 6, 8, 12, 16)
KERNEL = "attn_forward_f32"


def kernel_applies(qkv: torch.Tensor, heads: int, dropout_p: float = 0.0) -> bool:
    """Whether the C kernel takes this input (else SDPA runs)."""
    return (dropout_p == 0.0 and qkv.device.type == "cpu" and qkv.dtype == torch.float32 and not qkv.requires_grad
            and qkv.shape[-1] // 3 // heads in KERNEL_HEAD_SIZES and native.kernel(KERNEL) is not None)


def sdpa_from_qkv(qkv: torch.Tensor, heads: int, dropout_p: float = 0.0, bias: torch.Tensor | None = None):
    """The same attention through PyTorch's SDPA (any device, dtype, autograd)."""
    if bias is not None:
        qkv = qkv + bias
    s, length, c3 = qkv.shape
    c = c3 // 3
    q, k, v = qkv.view(s, length, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # each [S, heads, L, dh]
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return o.transpose(1, 2).reshape(s, length, c)


def attention_from_qkv(qkv: torch.Tensor, heads: int, dropout_p: float = 0.0, bias: torch.Tensor | None = None):
    """[S, L, 3C] packed projections (+ ``bias`` [3C] when given) -> [S, L, C] attention output (C
    kernel when it applies; it adds the bias as it reads q, k and v)."""
    if not kernel_applies(qkv, heads, dropout_p) or (bias is not None and bias.requires_grad and torch.is_grad_enabled()):
        return sdpa_from_qkv(qkv, heads, dropout_p, bias)
    s, length, c3 = qkv.shape
    c = c3 // 3
    qkv = qkv.contiguous()
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    out = torch.empty(s, length, c, dtype=torch.float32)
    native.run_items(native.kernel(KERNEL), s * heads,
                     (qkv.data_ptr(), None if b is None else b.data_ptr(), s, length, heads, c // heads),
                     (out.data_ptr(),))
    return out
