"""train_step: a non-finite loss skips the optimizer steps (counted) and leaves the weights intact."""

from __future__ import annotations

import torch

from training.loop import StepContext, train_step
from training.losses import LossWeights
from training.models import build_model
from training.pesq_targets import PesqPool

TINY = {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}


def _ctx():
    torch.manual_seed(0)
    G = build_model("rwsa-xs", seed=0, **TINY)
    D = build_model("metric-discriminator", seed=1)
    opt = lambda m: torch.optim.AdamW(m.parameters(), lr=5e-4, betas=(0.8, 0.99), weight_decay=0.01)  # noqa: E731
    return StepContext(G, D, opt(G), opt(D), G.stft, LossWeights(), torch.device("cpu"), 1, PesqPool(0))


def _snapshot(m):
    """Parameters only: the spectral-norm power-iteration buffers of D move at every forward."""
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def test_nonfinite_batch_is_skipped_and_counted_then_training_goes_on():
    ctx = _ctx()
    g = torch.Generator().manual_seed(0)
    clean = 0.1 * torch.randn(2, 1800, generator=g)
    good = {"clean": clean, "noisy": clean + 0.05 * torch.randn(2, 1800, generator=g)}
    bad = {k: v.clone() for k, v in good.items()}
    bad["noisy"][1, 100] = float("nan")
    bad["clean"][1, 100] = float("nan")
    g0, d0 = _snapshot(ctx.generator), _snapshot(ctx.discriminator)
    out = train_step(ctx, bad)
    assert ctx.counters["nonfinite_skipped"] == 1
    assert all(torch.equal(v, p) for (k, v), p in zip(g0.items(), ctx.generator.parameters()))
    assert all(torch.equal(v, p) for (k, v), p in zip(d0.items(), ctx.discriminator.parameters()))
    assert not ctx.opt_g.state and not ctx.opt_d.state  # AdamW never stepped: no moments were created
    out = train_step(ctx, good)
    assert ctx.counters["nonfinite_skipped"] == 1 and torch.isfinite(torch.tensor(out["loss_g"]))
    assert any(not torch.equal(v, p) for v, p in zip(g0.values(), ctx.generator.parameters()))
    assert out["pesq_failed"] >= 0 and "disc_fake" in out
