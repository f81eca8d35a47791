"""The MambAttention paper's baselines: LSTM-SENet, xLSTM-SENet (Table I), their attention variants
(Table IV), and MP-SENet as its official code runs (attention across batch items)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.models import build_model
from training.models.recurrent import MLSTMBlock, mlstm_parallel
from training.models.tf_blocks import AttentionModule

# The paper's Params column (rounded to 0.01 M) where it gives one.
PAPER_MILLIONS = {"xlstm-senet": 2.20, "lstm-senet": 2.34, "xlstm-attention": 2.27, "lstm-attention": 2.48,
                  "mpsenet-official": 2.05}


def _params(name):
    return sum(p.numel() for p in build_model(name, seed=0).parameters())


@pytest.mark.parametrize("name", list(PAPER_MILLIONS))
def test_parameter_counts_round_to_the_papers(name):
    assert round(_params(name) / 1e6, 2) == PAPER_MILLIONS[name]


def test_lstm_attention_has_a_t_and_an_f_mha_per_block_the_shared_variant_one():
    # Table IV's 2.48 M = LSTM-SENet (2.34 M) + two MHA (16,768 each) per block; xLSTM-Attention's 2.27 M
    # = xLSTM-SENet + one shared MHA per block (docs/fidelity.md).
    assert _params("lstm-attention") - _params("lstm-senet") == 8 * 16_768
    assert _params("lstm-attention-shared") - _params("lstm-senet") == 4 * 16_768
    assert _params("xlstm-attention") - _params("xlstm-senet") == 4 * 16_768



def test_vil_mlstm_block_has_the_xlstm_senet_shapes():
    assert sum(p.numel() for p in MLSTMBlock(64, 4).parameters()) == 61_896


def _mlstm_recurrent(q, k, v, i_pre, f_pre):
    """The mLSTM's recurrent (stabilised) form, step by step: an independent check of the parallel form."""
    b, h, length, d = q.shape
    c = torch.zeros(b, h, d, d, dtype=q.dtype)
    n = torch.zeros(b, h, d, dtype=q.dtype)
    m = torch.full((b, h), -math.inf, dtype=q.dtype)
    out = []
    for t in range(length):
        logf = F.logsigmoid(f_pre[..., t])
        m_new = torch.maximum(logf + m, i_pre[..., t])
        fg, ig = torch.exp(logf + m - m_new), torch.exp(i_pre[..., t] - m_new)
        kt = k[..., t, :] / math.sqrt(d)
        c = fg[..., None, None] * c + ig[..., None, None] * v[..., t, :, None] * kt[..., None, :]
        n = fg[..., None] * n + ig[..., None] * kt
        num = (c @ q[..., t, :, None])[..., 0]
        den = torch.maximum((n * q[..., t, :]).sum(-1).abs(), torch.exp(-m_new))
        out.append(num / (den[..., None] + 1e-6))
        m = m_new
    return torch.stack(out, dim=-2)


def test_mlstm_parallel_form_equals_the_recurrent_form():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    i_pre, f_pre = torch.randn(2, 3, 9, generator=g, dtype=torch.float64) * 2, torch.randn(2, 3, 9, generator=g,
                                                                                            dtype=torch.float64)
    torch.testing.assert_close(mlstm_parallel(q, k, v, i_pre, f_pre), _mlstm_recurrent(q, k, v, i_pre, f_pre),
                               rtol=1e-9, atol=1e-9)


def test_mlstm_block_is_causal():
    torch.manual_seed(0)
    blk = MLSTMBlock(8, 2).eval()
    x = torch.randn(1, 10, 8)
    y = x.clone()
    y[:, 6:] += torch.randn(1, 4, 8)
    with torch.no_grad():
        assert torch.allclose(blk(x)[:, :6], blk(y)[:, :6], atol=1e-6)
        assert not torch.allclose(blk(x)[:, 6:], blk(y)[:, 6:], atol=1e-3)


def test_official_attention_runs_across_the_first_axis():
    torch.manual_seed(0)
    fixed, official = AttentionModule(16, 4).eval(), AttentionModule(16, 4, across_batch=True).eval()
    official.load_state_dict(fixed.state_dict())
    x = torch.randn(6, 5, 16)  # [B*F, T, C]
    with torch.no_grad():
        torch.testing.assert_close(official(x), fixed(x.transpose(0, 1)).transpose(0, 1))


def _spectra(model, batch, frames=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = model.stft.n_freq
    return torch.rand(batch, f, frames, generator=g), (torch.rand(batch, f, frames, generator=g) - 0.5) * 6


def test_mpsenet_official_output_depends_on_the_other_batch_items_corrected_does_not():
    for name, depends in (("mpsenet-official", True), ("mpsenet", False)):
        m = build_model(name, seed=0, num_blocks=1).eval()
        mag, pha = _spectra(m, 2)
        with torch.no_grad():
            together = m(mag, pha)[0][0]
            alone = m(mag[:1], pha[:1])[0][0]
        assert (not torch.allclose(together, alone, atol=1e-5)) == depends, name


def test_attention_variants_place_the_mha_as_the_paper():
    lstm_att, xlstm_att = build_model("lstm-attention", seed=0), build_model("xlstm-attention", seed=0)
    for blk in lstm_att.blocks:
        assert blk.attn_position == "after" and blk.freq_attention is not None and blk.attention is not None
    for blk in build_model("lstm-attention-shared", seed=0).blocks:
        assert blk.attn_position == "after" and blk.freq_attention is None and blk.attention is not None
    for blk in xlstm_att.blocks:
        assert blk.attn_position == "before" and blk.freq_attention is None and blk.attention is not None
    assert all(blk.attention is None for blk in build_model("xlstm-senet", seed=0).blocks)


def test_full_flop_count_covers_the_recurrent_blocks():
    from training.models.flops import count_macs
    from training.models.recurrent import LSTMBlock

    lstm = LSTMBlock(8, hidden=12)
    x = torch.randn(3, 7, 8)
    assert count_macs(lstm, (x,), "full") == 3 * 7 * (4 * 12 * (8 + 8) + 12 * 8)
    blk = MLSTMBlock(8, 2)  # inner 16: LN + proj_up + conv + gates + proj_down modules, then the raw parts
    n, length, inner = 3, 7, 16
    expected = (2 * n * length * 8 * 2  # LayerNorm (affine)
                + n * length * 2 * inner * 8  # proj_up
                + n * inner * (length + 3) * 4  # causal depthwise conv (padded output)
                + 2 * n * length * 4 * 3 * inner  # i/f gates
                + n * length * 8 * inner  # proj_down
                + 3 * n * length * inner * 4 + 2 * n * length * length * inner)
    assert count_macs(blk, (x,), "full") == expected
