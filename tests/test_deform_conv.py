"""Plain-PyTorch deformable conv vs a naive per-pixel loop (torchvision's documented semantics)."""

import math

import pytest
import torch

from training.models.deform_conv import DeformConv2d, deform_conv2d


def _bilinear(img, y, x):
    """img[H, W] at real (y, x); corners outside the image contribute zero."""
    h, w = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    val = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                val += wy * wx * float(img[yy, xx])
    return val


def _naive(x, offset, weight, bias, stride, pad, dil):
    b, c_in, h, w = x.shape
    c_out, cpg, kh, kw = weight.shape
    groups = c_in // cpg
    h_out, w_out = offset.shape[2:]
    out = torch.zeros(b, c_out, h_out, w_out, dtype=torch.float64)
    for n in range(b):
        for o in range(c_out):
            g = o // (c_out // groups)
            for ho in range(h_out):
                for wo in range(w_out):
                    acc = 0.0 if bias is None else float(bias[o])
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            py = ho * stride - pad + i * dil + float(offset[n, 2 * k, ho, wo])
                            px = wo * stride - pad + j * dil + float(offset[n, 2 * k + 1, ho, wo])
                            for ci in range(cpg):
                                acc += float(weight[o, ci, i, j]) * _bilinear(x[n, g * cpg + ci], py, px)
                    out[n, o, ho, wo] = acc
    return out


@pytest.mark.parametrize(
    "c_in,c_out,groups,stride,pad,dil,bias,scale",
    [
        (3, 3, 3, 1, 1, 1, False, 1.5),  # depthwise, as in RWSA (offsets up to +-1.5)
        (2, 4, 1, 1, 1, 1, True, 3.0),  # dense, large offsets: many samples fall outside
        (4, 2, 2, 2, 0, 2, True, 0.7),  # grouped, stride 2, dilation 2, no padding
    ],
)
def test_matches_naive_loop(c_in, c_out, groups, stride, pad, dil, bias, scale):
    g = torch.Generator().manual_seed(c_in * 7 + c_out)
    x = torch.randn(2, c_in, 6, 7, generator=g, dtype=torch.float64)
    conv = DeformConv2d(
        c_in, c_out, 3, stride=stride, padding=pad, dilation=dil, groups=groups, bias=bias
    ).double()
    h_out = (6 + 2 * pad - dil * 2 - 1) // stride + 1
    w_out = (7 + 2 * pad - dil * 2 - 1) // stride + 1
    offset = torch.randn(2, 18, h_out, w_out, generator=g, dtype=torch.float64) * scale
    offset[0, 0, 0, 0] = -5.0  # a tap entirely outside (zero)
    offset[0, 1, 0, 1] = 0.25  # a tap straddling the border
    got = conv(x, offset)
    want = _naive(
        x, offset, conv.weight.detach(), None if conv.bias is None else conv.bias.detach(), stride, pad, dil
    )
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert got.grad_fn is not None  # the training form
    with torch.no_grad():  # the inference form (one matmul over the sampled columns)
        torch.testing.assert_close(conv(x, offset), want, rtol=1e-9, atol=1e-9)


def test_zero_offsets_equal_regular_conv():
    torch.manual_seed(0)
    x = torch.randn(1, 5, 9, 8, dtype=torch.float64)
    w = torch.randn(5, 1, 3, 3, dtype=torch.float64)
    got = deform_conv2d(x, torch.zeros(1, 18, 9, 8, dtype=torch.float64), w, padding=1)
    torch.testing.assert_close(got, torch.nn.functional.conv2d(x, w, padding=1, groups=5))


def test_gradients_reach_offsets_and_parameters():
    torch.manual_seed(0)
    conv = DeformConv2d(4, 4, 3, padding=1, groups=4, bias=False)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    offset = (torch.rand(1, 18, 5, 5) - 0.5).requires_grad_()
    conv(x, offset).square().sum().backward()
    assert x.grad.abs().sum() > 0 and offset.grad.abs().sum() > 0 and conv.weight.grad.abs().sum() > 0
    assert conv.weight.shape == (4, 1, 3, 3) and conv.bias is None


def test_bad_offset_shape():
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d(torch.zeros(1, 2, 4, 4), torch.zeros(1, 18, 3, 3), torch.zeros(2, 1, 3, 3), padding=1)
