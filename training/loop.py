"""One optimisation step: `train_step(ctx, batch)` (validation: `training.validation`).

Step: scale noisy/clean by the batch's ``norm`` (1 / RMS of the whole noisy utterance, as the authors
normalise before cropping; without it, the crop's noisy RMS); STFT; G forward; iSTFT; the PESQ targets
of every segment are submitted to a process pool right away; then two updates in one of two orders:

- ``pesq_overlap=True`` (default): G update first (six weighted terms, the metric term from D as
  it is before this step's update), then the D update on (clean, clean) -> 1 and (clean, est) ->
  PESQ_norm, est being the same pre-update estimate as in the authors' code. The PESQ targets are
  computed while G's loss, backward, all-reduce and optimizer step run: off the critical path.
- ``pesq_overlap=False``: the papers' code order (MP-SENet lineage): D update first, G's metric term
  from the freshly updated D; the step waits for PESQ after the D forward.

The only difference is which D the generator's metric term sees (one D update older with
overlap); both are exact per-step schemes (no state carried across steps, so resume stays bitwise).
Gradients are averaged across ranks by an explicit all-reduce; a non-finite loss or gradient skips
that optimizer step on every rank.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from training import distributed
from training.losses import LossWeights, discriminator_loss, generator_loss
from training.progress import WINDOW_KEYS
from training.stft import STFTSpec, mag_pha_istft, mag_pha_stft

log = logging.getLogger(__name__)


class StepCounters(dict):
    """Steps skipped for a non-finite loss or gradient, PESQ targets that failed: counted over the run,
    on every rank alike (a part of the checkpoint)."""

    def __init__(self):
        super().__init__(nonfinite_skipped=0, pesq_failed=0)

    def state_dict(self) -> dict[str, int]:
        return dict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.update(state)


@dataclass
class StepContext:
    """Everything `train_step` needs; built once per run (`training.build`)."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    spec: STFTSpec
    weights: LossWeights
    device: torch.device
    world_size: int = 1
    pesq_pool: object | None = None  # training.pesq_targets.PesqPool
    grad_clip: float | None = None
    bf16: bool = False
    pesq_overlap: bool = True
    counters: StepCounters = field(default_factory=StepCounters)

    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _grad_norm(params, clip: float | None) -> torch.Tensor:
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    return torch.nn.utils.clip_grad_norm_(params, clip if clip else math.inf)


def _apply(ctx: StepContext, loss: torch.Tensor, module: torch.nn.Module, opt, clip) -> tuple[float, bool]:
    """Backward, average gradients, step -- unless a rank has a non-finite loss or the averaged
    gradient is non-finite (identical on every rank, so all ranks decide alike).
    Returns (grad norm, stepped)."""
    local_bad = not bool(torch.isfinite(loss.detach()).item())
    if not local_bad:
        loss.backward()
    if distributed.any_rank(local_bad, ctx.device):
        opt.zero_grad(set_to_none=True)
        return float("nan"), False
    params = [p for p in module.parameters() if p.requires_grad]
    distributed.average_gradients(params, ctx.world_size)
    norm = _grad_norm(params, clip)
    if not bool(torch.isfinite(norm).item()):
        opt.zero_grad(set_to_none=True)
        return float("nan"), False
    opt.step()
    return float(norm), True


def train_step(ctx: StepContext, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """One G (and D) update on this rank's batch {"noisy", "clean": [b, N], optional "norm": [b, 1]}; returns
    scalar metrics."""
    G, D, spec = ctx.generator, ctx.discriminator, ctx.spec
    noisy = batch["noisy"].to(ctx.device, torch.float32)
    clean = batch["clean"].to(ctx.device, torch.float32)
    n = noisy.shape[-1]
    norm = batch.get("norm")  # 1 / whole-utterance noisy RMS (the stream's); else the crop's
    norm = norm.to(ctx.device, torch.float32) if norm is not None else \
        torch.rsqrt(noisy.pow(2).mean(-1, keepdim=True).clamp_min(1e-10))
    noisy, clean = noisy * norm, clean * norm
    clean_mag, clean_pha, clean_com = mag_pha_stft(clean, spec)
    noisy_mag, noisy_pha, _ = mag_pha_stft(noisy, spec)

    with ctx.autocast():
        mag, pha, com = G(noisy_mag, noisy_pha)
    mag, pha, com = mag.float(), pha.float(), com.float()
    est = mag_pha_istft(mag, pha, spec, length=n)
    rec_mag, _, rec_com = mag_pha_stft(est, spec)  # rec_com: the consistency target
    # what D sees of the estimate: the generator's `mag` (MP-SENet lineage as MambAttention/SEMamba/RWSA run it),
    # or |STFT(est)|^0.3 for a generator marked as the official MP-SENet train.py runs it (docs/fidelity.md)
    d_mag = rec_mag if getattr(G, "discriminator_input", "generator") == "restft" else mag
    out: dict[str, float] = {}
    job = ctx.pesq_pool.submit(clean.detach().cpu().numpy(), est.detach().cpu().numpy()) if D is not None else None
    g_terms = dict(clean_wav=clean, clean_mag=clean_mag, clean_pha=clean_pha, clean_com=clean_com,
                   est_wav=est, est_mag=mag, est_pha=pha, est_com=com, rec_com=rec_com)
    stepped_d = True
    if D is not None and not ctx.pesq_overlap:
        stepped_d = _discriminator_update(ctx, job, clean_mag, d_mag, out)
    stepped_g = _generator_update(ctx, g_terms, clean_mag, d_mag, out)
    if D is not None and ctx.pesq_overlap:
        stepped_d = _discriminator_update(ctx, job, clean_mag, d_mag, out)
    distributed.average_batchnorm_stats(G)  # same running statistics on every rank (MP-SENet's BatchNorm)
    if not stepped_g or not stepped_d:
        ctx.counters["nonfinite_skipped"] += 1
        log.warning("non-finite loss or gradient: optimizer step skipped (%d so far)",
                    ctx.counters["nonfinite_skipped"])
    return out


def _discriminator_update(ctx: StepContext, job, clean_mag, est_mag, out: dict) -> bool:
    """D forward on (clean, clean) and (clean, est), then wait for the PESQ targets, D step."""
    D = ctx.discriminator
    ctx.opt_d.zero_grad(set_to_none=True)
    with ctx.autocast():
        real = D(clean_mag, clean_mag).flatten()
        fake = D(clean_mag, est_mag.detach()).flatten()
    scores, ok = job.result()
    n_ok = torch.tensor([float(ok.sum())], device=ctx.device)
    num_ok_global = int(distributed.all_reduce(n_ok).item())
    failed = ctx.world_size * len(ok) - num_ok_global
    ctx.counters["pesq_failed"] += failed
    loss_d, parts = discriminator_loss(
        real, fake, torch.from_numpy(np.nan_to_num(scores)), torch.from_numpy(ok),
        num_ok_global=num_ok_global, world_size=ctx.world_size,
    )
    gn_d, stepped_d = _apply(ctx, loss_d, D, ctx.opt_d, None)
    out.update(loss_d=float(loss_d.detach()), grad_norm_d=gn_d, pesq_failed=float(failed),
               pesq_target=float(np.mean(scores[ok])) if ok.any() else float("nan"),
               **{k: float(v) for k, v in parts.items()})
    return stepped_d


def _generator_update(ctx: StepContext, terms: dict, clean_mag, est_mag, out: dict) -> bool:
    """G step on the six weighted terms; the metric term through D with D's weights frozen."""
    D = ctx.discriminator
    ctx.opt_g.zero_grad(set_to_none=True)
    metric_fake = None
    if D is not None:
        D.requires_grad_(False)
        with ctx.autocast():
            metric_fake = D(clean_mag, est_mag).flatten()
    try:
        loss_g, parts = generator_loss(**terms, metric_fake=metric_fake, weights=ctx.weights)
        gn_g, stepped_g = _apply(ctx, loss_g, ctx.generator, ctx.opt_g, ctx.grad_clip)
    finally:
        if D is not None:
            D.requires_grad_(True)
    out.update(loss_g=float(loss_g.detach()), grad_norm=gn_g, **{k: float(v) for k, v in parts.items()})
    return stepped_g


def rehearse_step(ctx: StepContext, batch: dict[str, torch.Tensor], step_s: float, step: int) -> dict[str, float]:
    """Rehearsal step (`trainer.rehearse_step_s`): the batch was drawn from the real stream; wait `step_s`
    (the planner's GPU step time) instead of forward/backward, and return deterministic synthetic values
    under every name `train_step` returns. The first call gives each optimizer its real state (one step
    on zero gradients) so that checkpoints have the real size."""
    if step_s > 0:
        time.sleep(step_s)
    for opt in (ctx.opt_g, ctx.opt_d):
        if opt is not None and not opt.state:
            params = [p for g in opt.param_groups for p in g["params"]]
            for p in params:
                p.grad = torch.zeros_like(p)
            opt.step()
            opt.zero_grad(set_to_none=True)
    v = 1.0 / (1.0 + 0.001 * step)
    out = {k: v for k in WINDOW_KEYS}
    if ctx.discriminator is None:
        for k in ("loss_d", "disc_real", "disc_fake", "grad_norm_d", "pesq_target"):
            out.pop(k)
    else:
        out["pesq_failed"] = 0.0
    return out
