"""training.models.tf_blocks.PointwiseConvTranspose1d: the TF blocks' kernel-1 ConvTranspose1d computed as
a matmul on channel-last storage gives nn.ConvTranspose1d's output and gradients (same parameters)."""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models.tf_blocks import PointwiseConvTranspose1d


def test_same_output_and_gradients_as_conv_transpose():
    torch.manual_seed(0)
    ours = PointwiseConvTranspose1d(12, 5)
    torch.manual_seed(0)
    ref = nn.ConvTranspose1d(12, 5, 1)
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)  # same init draws
    assert set(ours.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 40, 12, dtype=torch.float64)  # channel-last storage, passed as the blocks do
    outs, grads = [], []
    for m in (ours.double(), ref.double()):
        xi = x.clone().requires_grad_()
        y = m(xi.transpose(1, 2))
        assert y.shape == (3, 5, 40)
        (y * torch.arange(40.0, dtype=torch.float64)).sum().backward()
        outs.append(y.detach())
        grads.append((xi.grad, m.weight.grad, m.bias.grad))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
