"""The fused causal depthwise conv + SiLU (C kernel) against torch's conv1d, forward and gradients."""

from __future__ import annotations

import pytest
import torch

from training.mamba.conv import causal_conv1d_silu

pytest.importorskip("training.mamba.scan_fused", reason="C kernels not buildable here", exc_type=ImportError)


def _grads(native, x, w, b, g):
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    bs = b.clone().requires_grad_() if b is not None else None
    y = causal_conv1d_silu(xs, ws, bs, native=native)
    leaves = [t for t in (xs, ws, bs) if t is not None]
    return [y, *torch.autograd.grad(y, leaves, g)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape,k,bias", [((3, 11, 21), 4, True), ((2, 2, 5), 4, False), ((1, 9, 16), 3, True)])
def test_native_matches_torch_conv(dtype, tol, shape, k, bias):
    gen = torch.Generator().manual_seed(sum(shape) + k)
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    w = torch.randn(shape[2], 1, k, generator=gen, dtype=dtype)
    b = torch.randn(shape[2], generator=gen, dtype=dtype) if bias else None
    g = torch.randn(*shape, generator=gen, dtype=dtype)
    for a, ref in zip(_grads(True, x, w, b, g), _grads(False, x, w, b, g)):
        assert a.shape == ref.shape and a.dtype == ref.dtype
        assert (a - ref).abs().max() <= tol * max(1.0, ref.abs().max().item())


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(3)
    args = [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True) for s in ((2, 7, 5), (5, 1, 4), (5,))]
    assert torch.autograd.gradcheck(lambda x, w, b: causal_conv1d_silu(x, w, b, native=True), args)


def test_result_does_not_depend_on_thread_count():
    gen = torch.Generator().manual_seed(5)
    x, w, b, g = (torch.randn(*s, generator=gen) for s in ((6, 40, 24), (24, 1, 4), (24,), (6, 40, 24)))
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(_grads(True, x, w, b, g))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, c) for a, c in zip(*runs))


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_silu(torch.zeros(2, 5, 8), torch.zeros(4, 1, 4), None, native=True)
