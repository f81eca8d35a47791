"""The papers' losses: anti-wrapping phase terms, weights, the discriminator's dropped segments."""

from __future__ import annotations

import math

import torch

from training.losses import LossWeights, anti_wrap, discriminator_loss, generator_loss, phase_losses


def test_anti_wrap_is_distance_to_nearest_multiple_of_two_pi():
    x = torch.tensor([0.0, 2 * math.pi, -4 * math.pi, math.pi / 2, 2 * math.pi + 0.25, -0.25])
    expected = torch.tensor([0.0, 0.0, 0.0, math.pi / 2, 0.25, 0.25])
    assert torch.allclose(anti_wrap(x), expected, atol=1e-6)


def test_phase_losses_ignore_full_turns_and_see_differences():
    g = torch.Generator().manual_seed(0)
    ref = (torch.rand(2, 5, 7, generator=g) * 2 - 1) * math.pi
    ip, gd, iaf = phase_losses(ref, ref + 2 * math.pi)
    assert max(ip.item(), gd.item(), iaf.item()) < 1e-5
    # a constant offset changes only IP; a ramp along time changes IAF but not GD
    ip, gd, iaf = phase_losses(ref, ref + 0.5)
    assert abs(ip.item() - 0.5) < 1e-5 and gd.item() < 1e-5 and iaf.item() < 1e-5
    ramp = 0.1 * torch.arange(7.0).view(1, 1, 7)
    ip, gd, iaf = phase_losses(ref, ref + ramp)
    assert abs(iaf.item() - 0.1) < 1e-5 and gd.item() < 1e-5


def test_generator_loss_is_the_weighted_sum_with_doubled_complex_terms():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    kw = dict(
        clean_wav=r(2, 100), clean_mag=r(2, 4, 6), clean_pha=r(2, 4, 6), clean_com=r(2, 4, 6, 2),
        est_wav=r(2, 100), est_mag=r(2, 4, 6), est_pha=r(2, 4, 6), est_com=r(2, 4, 6, 2),
        rec_com=r(2, 4, 6, 2), metric_fake=r(2),
    )
    w = LossWeights()
    total, terms = generator_loss(weights=w, **kw)
    assert abs(terms["complex"].item() - 2 * torch.mean((kw["est_com"] - kw["clean_com"]) ** 2).item()) < 1e-6
    assert abs(terms["consistency"].item() - 2 * torch.mean((kw["est_com"] - kw["rec_com"]) ** 2).item()) < 1e-6
    assert abs(terms["metric"].item() - torch.mean((kw["metric_fake"] - 1) ** 2).item()) < 1e-6
    assert abs(terms["time"].item() - torch.mean(torch.abs(kw["est_wav"] - kw["clean_wav"])).item()) < 1e-6
    manual = (0.2 * terms["time"] + 0.9 * terms["magnitude"] + 0.1 * terms["complex"] + 0.3 * terms["phase"]
              + 0.1 * terms["consistency"] + 0.05 * terms["metric"])
    assert abs(total.item() - manual.item()) < 1e-6
    total2, terms2 = generator_loss(weights=w, **{**kw, "metric_fake": None})
    assert "metric" not in terms2 and abs(total2.item() - (manual - 0.05 * terms["metric"]).item()) < 1e-6


def test_discriminator_drops_only_failed_segments():
    real = torch.tensor([0.9, 0.8, 1.0])
    fake = torch.tensor([0.5, 0.2, 0.7])
    target = torch.tensor([0.4, float("nan"), 0.6])
    ok = torch.tensor([True, False, True])
    loss, parts = discriminator_loss(real, fake, target, ok)
    exp_real = ((0.1**2) + (0.2**2) + 0.0) / 3
    exp_fake = ((0.1**2) + (0.1**2)) / 2
    assert abs(parts["disc_real"].item() - exp_real) < 1e-6
    assert abs(parts["disc_fake"].item() - exp_fake) < 1e-6
    assert math.isfinite(loss.item())
    _, none_ok = discriminator_loss(real, fake, target, torch.zeros(3, dtype=torch.bool))
    assert none_ok["disc_fake"].item() == 0.0


def test_discriminator_split_over_ranks_matches_global_batch_gradient():
    """Two 'ranks' with different failure counts: averaged gradients == the global batch's gradient."""
    w = torch.tensor(0.7, requires_grad=True)
    x = torch.tensor([0.2, 0.9, 0.4, 0.6])
    target = torch.tensor([0.3, 0.5, float("nan"), 0.1])
    ok = torch.isfinite(target)
    real = torch.full((4,), 0.5)

    def grad_of(idx, **kw):
        w.grad = None
        loss, _ = discriminator_loss(real[idx] * w, x[idx] * w, target[idx], ok[idx], **kw)
        loss.backward()
        return w.grad.clone()

    full = grad_of(slice(0, 4))
    n_ok = int(ok.sum())
    halves = (grad_of(slice(0, 2), num_ok_global=n_ok, world_size=2)
              + grad_of(slice(2, 4), num_ok_global=n_ok, world_size=2)) / 2
    assert torch.allclose(full, halves, atol=1e-6)
