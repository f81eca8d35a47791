"""AttentionModule (SDPA on nn.MultiheadAttention's parameters) equals nn.MultiheadAttention; activation
checkpointing of the TF blocks leaves the gradients unchanged."""

from __future__ import annotations

import pytest
import torch

from training.models.tf_blocks import AttentionModule


def test_matches_multihead_attention_in_train_and_eval_mode():
    torch.manual_seed(0)
    m = AttentionModule(16, n_head=4)
    x = torch.randn(3, 37, 16)
    for train in (True, False):
        m.train(train)
        ln = m.layernorm(x)
        ref = m.attn(ln, ln, ln, need_weights=False)[0]
        with torch.inference_mode(not train):
            out = m(x)
        assert out.shape == (3, 37, 16)
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), (train, (out - ref).abs().max())


def test_gradients_match():
    torch.manual_seed(1)
    m = AttentionModule(8, n_head=2)
    x = torch.randn(2, 11, 8)
    m(x).square().sum().backward()
    ours = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    ln = m.layernorm(x)
    m.attn(ln, ln, ln, need_weights=False)[0].square().sum().backward()
    for a, b in zip(ours, (p.grad for p in m.parameters())):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def _with_saved_bytes(fn, *args):
    """``fn(*args)`` and the bytes autograd saved for its backward."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, sum(sizes)


@pytest.mark.parametrize("name,options", [
    ("rwsa-xs", {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}),  # MambAttention blocks
    ("mpsenet", {"channels": 8, "num_blocks": 1, "n_head": 2}),  # TS-Conformer blocks
])
def test_activation_checkpointing_saves_memory_and_gives_the_same_gradients(name, options):
    """Recomputing the TF blocks in backward keeps fewer tensors for autograd and changes no
    gradient (bitwise on CPU)."""
    from training.models import build_model
    from training.models.tf_blocks import set_activation_checkpointing

    grads, saved = [], []
    for on in (False, True):
        g = build_model(name, seed=0, **options)
        assert set_activation_checkpointing(g, on) > 0
        torch.manual_seed(3)
        mag, pha = torch.rand(2, g.stft.n_freq, 16), torch.rand(2, g.stft.n_freq, 16)
        out, nbytes = _with_saved_bytes(g, mag, pha)
        saved.append(nbytes)
        sum(o.square().mean() for o in out if torch.is_tensor(o)).backward()
        grads.append([p.grad for p in g.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert saved[1] < 0.7 * saved[0], saved
