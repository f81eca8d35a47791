"""AttentionModule (SDPA or the C kernel on nn.MultiheadAttention's parameters) equals
nn.MultiheadAttention; the C inference kernel equals float64 SDPA on odd shapes and large scores,
independent of the thread count; activation checkpointing of the TF blocks leaves the gradients
unchanged."""

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


@pytest.mark.parametrize("dh", [4, 6, 8, 12, 16])
@pytest.mark.parametrize("seqs,length,heads", [(1, 1, 1), (3, 17, 2), (2, 33, 3), (5, 130, 4)])
def test_kernel_matches_float64_sdpa(dh, seqs, length, heads):
    from training.kernels.attention_cpu import attention_from_qkv, kernel_applies, sdpa_from_qkv

    torch.manual_seed(dh + length)
    # x20: scores up to ~100 in magnitude, so the softmax must subtract the row maximum.
    qkv = torch.randn(seqs, length, 3 * heads * dh) * torch.tensor([20.0, 20.0, 1.0]).repeat_interleave(heads * dh)
    assert kernel_applies(qkv, heads)
    out = attention_from_qkv(qkv, heads)
    ref = sdpa_from_qkv(qkv.double(), heads)
    assert out.dtype == torch.float32 and out.shape == (seqs, length, heads * dh)
    # As accurate as PyTorch's own float32 path (scores of ~400 carry float32 rounding of ~1e-5).
    ours = float((out.double() - ref).abs().max())
    theirs = float((sdpa_from_qkv(qkv, heads).double() - ref).abs().max())
    assert ours <= 4 * theirs + 1e-6 * float(ref.abs().max()), (ours, theirs)


@pytest.mark.parametrize("dh", [4, 8])
def test_kernel_adds_the_projection_bias_as_it_reads(dh, monkeypatch):
    """``bias=`` gives what the kernel gives on ``qkv + bias`` (the same float additions, so bitwise),
    on the kernel and on the SDPA path; and AttentionModule.residual at inference, which projects
    without the bias and lets the kernel add it (a parameter's bias too: no SDPA), equals ``x +
    module(x)``."""
    from training.kernels import attention_cpu
    from training.kernels.attention_cpu import attention_from_qkv, sdpa_from_qkv

    torch.manual_seed(dh)
    qkv, bias = torch.randn(3, 29, 3 * 2 * dh), torch.randn(3 * 2 * dh)
    assert torch.equal(attention_from_qkv(qkv, 2, bias=bias), attention_from_qkv(qkv + bias, 2))
    assert torch.equal(sdpa_from_qkv(qkv, 2, bias=bias), sdpa_from_qkv(qkv + bias, 2))
    m = AttentionModule(2 * dh, n_head=2).eval()
    with torch.no_grad():
        m.attn.in_proj_bias.normal_()
        m.attn.out_proj.bias.normal_()
        x = torch.randn(3, 29, 2 * dh)
        ref, kept = x + m(x), x.clone()
        monkeypatch.setattr(attention_cpu, "sdpa_from_qkv", None)  # the kernel or a TypeError
        got = m.residual(x)
        assert torch.equal(x, kept), "residual() wrote into its input without inplace=True"
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert m.residual(x, inplace=True) is x
        torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)


def test_kernel_does_not_depend_on_thread_count():
    from training.kernels.attention_cpu import attention_from_qkv

    qkv = torch.randn(7, 45, 3 * 32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = attention_from_qkv(qkv, 4)
        torch.set_num_threads(2)
        two = attention_from_qkv(qkv, 4)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_inputs_the_kernel_does_not_take_go_to_sdpa():
    from training.kernels.attention_cpu import attention_from_qkv, kernel_applies, sdpa_from_qkv

    cases = {"head size 5": (torch.randn(2, 9, 3 * 10), 2), "float64": (torch.randn(2, 9, 3 * 16).double(), 4),
             "needs grad": (torch.randn(2, 9, 3 * 16, requires_grad=True), 4)}
    for why, (qkv, heads) in cases.items():
        assert not kernel_applies(qkv, heads), why
        assert torch.equal(attention_from_qkv(qkv, heads), sdpa_from_qkv(qkv, heads)), why
    assert not kernel_applies(torch.randn(2, 9, 3 * 16), 4, dropout_p=0.1)  # dropout: SDPA's


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
