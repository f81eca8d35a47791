"""The inference-only fused Mamba kernel (training/mamba/infer.py) against the training path's forward."""

from __future__ import annotations

import pytest
import torch

from training.mamba import BiMamba, Mamba, ResidualMamba
from training.mamba.infer import fused_layer, usable
from training.models.tf_blocks import AttentionModule, MambAttentionBlock

pytest.importorskip("training.mamba.scan_fused", reason="C kernels not buildable here", exc_type=ImportError)


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Parameters moved off their initial values (A, D, biases, norm weights all matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape and got.dtype == ref.dtype
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


# d_model not a multiple of 16 (padded projections), L below the conv width, across chunks (36 steps)
# with 6-, 4- and 1-row tiles of the projections in the last chunk
@pytest.mark.parametrize("batch,length,d_model", [(1, 3, 4), (2, 45, 12), (2, 80, 16), (1, 40, 24)])
def test_fused_paths_equal_training_forward(batch, length, d_model):
    x = torch.randn(batch, length, d_model, generator=torch.Generator().manual_seed(length))
    for cls in (Mamba, ResidualMamba, BiMamba):
        torch.manual_seed(d_model)
        module = _perturbed(cls(d_model, expand=4), batch)
        ref = module(x)  # grad enabled: the autograd (training) path
        assert ref.grad_fn is not None
        with torch.no_grad():
            got = module(x)
        with torch.inference_mode():
            got_im = module(x)
        _close(got, ref.detach())
        assert torch.equal(got, got_im)


def test_fused_layer_is_what_no_grad_runs_and_reverse_is_the_flipped_branch():
    torch.manual_seed(1)
    block = _perturbed(ResidualMamba(8, expand=4), 3)
    x = torch.randn(2, 40, 8)
    with torch.no_grad():
        assert usable(block.mixer, x, block) and not usable(block.mixer, x.double())
        assert torch.equal(block(x), fused_layer(block.mixer, x, norm=block.norm, residual=True))
        flipped = fused_layer(block.mixer, x, norm=block.norm, residual=True, reverse=True)
        _close(flipped, block(x.flip(1)).flip(1))
    assert not usable(block.mixer, x)  # grad enabled


def test_hooks_see_every_call_so_flop_counts_do_not_change():
    torch.manual_seed(2)
    block = BiMamba(8, expand=4)
    x = torch.randn(1, 20, 8)
    seen = []
    handle = block.forward_blocks[0].mixer.x_proj.register_forward_hook(lambda m, a, y: seen.append(y.shape))
    try:
        with torch.no_grad():
            assert not usable(block.forward_blocks[0].mixer, x, block.forward_blocks[0])
            block(x)
    finally:
        handle.remove()
    assert seen == [torch.Size([1, 20, 1 + 2 * 16])]  # dt rank + B + C: x_proj ran as a module


@pytest.mark.parametrize("options", [{}, {"attn_position": "after"}, {"order": "ft"}, {"attention": None}])
def test_tf_block_inference_equals_training_forward(options):
    """A whole MambAttention block (fused BiMamba, the attention's and the kernel-1 ConvTranspose1d's
    projections accumulated onto the residuals) under no_grad against its autograd forward, batch 1
    and 2, from [B, C, T, F] and from channels-last input: same values, the input's layout, and the
    input left as it was (the frequency axis's sequences are views of channels-last input)."""
    torch.manual_seed(4)
    attention = options.pop("attention", AttentionModule(8, 2))
    block = _perturbed(MambAttentionBlock(8, attention, **options), 5).eval()
    for batch in (1, 2):
        x = torch.randn(batch, 8, 21, 13, generator=torch.Generator().manual_seed(batch))
        ref = block(x)
        for layout in (torch.contiguous_format, torch.channels_last):
            xl = x.contiguous(memory_format=layout)
            with torch.no_grad():
                got = block(xl)
            _close(got, ref.detach())
            assert got.is_contiguous(memory_format=layout), layout
            assert torch.equal(xl, x), "the block wrote into its input"
