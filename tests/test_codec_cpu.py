"""The dense codec's inference kernels (training/kernels/codec_cpu.py) against the PyTorch modules
they replace, and the dense blocks / encoder / decoders built on them against their autograd forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from training.kernels import codec_cpu
from training.models.codec import DenseBlock, DenseEncoder, MaskDecoder, PhaseDecoder

pytest.importorskip("training.mamba.scan_fused", reason="C kernels not buildable here", exc_type=ImportError)


def _close(got, ref):
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def _randomised(*modules):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
    return modules


@pytest.mark.parametrize("n_alpha", [1, 6])
def test_instance_norm_prelu_equals_the_modules_also_into_a_channel_slice(n_alpha):
    norm, prelu = _randomised(nn.InstanceNorm2d(6, affine=True), nn.PReLU(n_alpha))
    # a mean 50x the spread: the variance must not come from cancelling float32 sums
    x = torch.randn(2, 6, 37, 29, generator=torch.Generator().manual_seed(1)) + 50.0
    ref = prelu(norm(x)).detach()
    with torch.no_grad():
        assert codec_cpu.kernel_applies(x, norm, prelu)
        _close(codec_cpu.instance_norm_prelu(x, norm, prelu), ref)
        buf = torch.full((2, 15, 37, 29), 7.0)
        got = codec_cpu.instance_norm_prelu(x, norm, prelu, out=buf[:, 4:10])
        _close(got, ref)
        assert got.data_ptr() == buf[:, 4:10].data_ptr()
        assert torch.all(buf[:, :4] == 7.0) and torch.all(buf[:, 10:] == 7.0)  # only the slice written
        with pytest.raises(ValueError, match="contiguous planes"):
            codec_cpu.instance_norm_prelu(x, norm, prelu, out=torch.empty(2, 6, 37, 30)[..., :29])


@pytest.mark.parametrize("k,s,bias,batch", [(3, 2, True, 1), (3, 2, False, 2), (4, 3, True, 2), (3, 1, True, 1)])
def test_conv_transpose_freq_equals_conv_transpose2d(k, s, bias, batch):
    (convt,) = _randomised(nn.ConvTranspose2d(5, 7, (1, k), stride=(1, s), bias=bias))
    x = torch.randn(batch, 5, 11, 13, generator=torch.Generator().manual_seed(k))
    ref = convt(x).detach()
    with torch.no_grad():
        assert codec_cpu.conv_transpose_freq_applies(x, convt)
        _close(codec_cpu.conv_transpose_freq(x, convt), ref)


def test_kernels_step_aside_for_autograd_and_hooks():
    norm, prelu, convt = _randomised(nn.InstanceNorm2d(4, affine=True), nn.PReLU(4),
                                     nn.ConvTranspose2d(4, 4, (1, 3), stride=(1, 2)))
    x = torch.randn(1, 4, 9, 8)
    assert not codec_cpu.kernel_applies(x, norm, prelu)  # autograd on
    assert not codec_cpu.conv_transpose_freq_applies(x, convt)
    assert torch.equal(codec_cpu.instance_norm_prelu(x, norm, prelu), prelu(norm(x)))
    seen = []
    handle = norm.register_forward_hook(lambda *a: seen.append(1))
    try:
        with torch.no_grad():
            assert not codec_cpu.kernel_applies(x, norm, prelu)
            codec_cpu.instance_norm_prelu(x, norm, prelu)
    finally:
        handle.remove()
    assert seen == [1]  # the hooked module ran as a module


@pytest.mark.parametrize("batch", [1, 2])
def test_dense_codec_inference_equals_training_forward(batch):
    """DenseBlock (one buffer instead of concatenations), the encoder and both decoders (both
    upsampling styles) under no_grad against their autograd forward."""
    g = torch.Generator().manual_seed(batch)
    parts = [(DenseBlock(4), (batch, 4, 12, 10)), (DenseEncoder(4), (batch, 2, 12, 21)),
             (DenseEncoder(4, freq_padding=1), (batch, 2, 12, 16)),
             (MaskDecoder(4, 21), (batch, 4, 12, 10)), (PhaseDecoder(4), (batch, 4, 12, 10)),
             (MaskDecoder(4, 16, upsample="shuffle"), (batch, 4, 12, 8)), (PhaseDecoder(4, upsample="shuffle"), (batch, 4, 12, 8))]
    for module, shape in parts:
        _randomised(module)
        x = torch.randn(shape, generator=g)
        ref = module(x).detach()
        with torch.no_grad():
            got = module(x)
        if isinstance(module, PhaseDecoder):  # atan2: compare where the angle is well defined
            ref, got = torch.cos(ref), torch.cos(got)
        _close(got, ref)


def test_inference_under_bf16_autocast_runs_like_the_autograd_forward():
    """Validation of a bf16 run enhances under autocast: the codec kernels and the TF blocks'
    residual accumulations step aside (their matmuls would run in float32, or fail on mixed
    dtypes), so a small MambAttention under no_grad runs and gives the autograd forward's magnitude
    to bf16 precision (the phase, an atan2 of bf16 values, is not compared; the fused Mamba layer
    runs in float32 in both)."""
    from training.kernels import native
    from training.models import build_model

    model = build_model("mambattention", channels=8, num_blocks=1, n_head=2, seed=0).eval()
    mag, pha = torch.rand(1, 201, 20, generator=torch.Generator().manual_seed(0)), torch.rand(1, 201, 20)
    x, norm, prelu = torch.randn(1, 4, 6, 5), nn.InstanceNorm2d(4, affine=True), nn.PReLU(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(mag, pha)
        with torch.no_grad():
            assert not native.plain_inference("cpu") and not codec_cpu.kernel_applies(x, norm, prelu)
            got = model(mag, pha)
    b = ref[0].detach().float()
    torch.testing.assert_close(got[0].float(), b, rtol=2e-2, atol=2e-2 * float(b.abs().max()))
