"""Build one rank's training from its config: the parts (`build_parts`) and the Trainer wired from
them and the run's services (`build_trainer`). The device is picked once per run, by the caller
(`training.run`), and given here.

The order of the seeded steps is part of the contract (a run started again, or resumed, is bitwise
the same): seed `trainer.seed`; build G, then D (each under its own fixed seed, `build_model(seed=)`);
seed `trainer.seed + 1_000_003 * rank` (each rank's dropout stream); optimizers, schedulers, stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from common.rundir import CHECKPOINTS_DIR
from training import device as device_policy
from training import distributed
from training.config import ConfigError, RunConfig
from training.loop import StepContext
from training.losses import LossWeights
from training.model_names import segment_problem
from training.seeding import seed_everything

log = logging.getLogger(__name__)


@dataclass
class TrainParts:
    """What one rank trains with (built by `build_parts`); the discriminator's parts are None without it."""

    device: torch.device
    facts: dict[str, str]  # runtime facts: MLflow tags (`training.device.runtime_facts`)
    generator: torch.nn.Module
    discriminator: torch.nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler | None
    stream: object  # sharding.stream.TrainStream: batches of this rank
    pesq_pool: object | None  # training.pesq_targets.PesqPool of the discriminator's targets
    ctx: StepContext  # what `train_step` uses (the models, optimizers, counters above)
    segment: int  # training crop in samples
    epoch_steps: int  # steps per learning-rate decay

    def close(self) -> None:
        self.stream.close()
        if self.pesq_pool is not None:
            self.pesq_pool.close()


def resolve_segment(cfg: RunConfig, G) -> int:
    """Training crop in samples: cfg.data.segment_samples or the model's; one the model cannot take
    (`training.model_names.segment_problem`, as the pre-submit checks) is a ConfigError naming valid lengths."""
    seg = cfg.data.segment_samples or G.segment_samples
    problem = segment_problem(cfg.model.name, seg, discriminator=cfg.loss.discriminator)
    if problem:
        raise ConfigError(problem, "data.segment_samples")
    return seg


def runtime_facts(G, device: torch.device, world_size: int, *, deterministic: bool, tf32: bool,
                  bf16: bool) -> dict[str, str]:
    """Refuse a GPU run whose Mamba layers would fall back to the torch scan unasked (the import
    error is the message); log and return the run's runtime facts (MLflow tags)."""
    from training.mamba import Mamba, scan

    if device.type != "cpu" and any(isinstance(m, Mamba) for m in G.modules()):
        try:
            scan.choose_backend(device.type)
        except scan.ScanBackendError as e:
            raise ConfigError(str(e), "SE_SCAN_BACKEND") from None
    facts = device_policy.runtime_facts(device, world_size, deterministic=deterministic, tf32=tf32,
                                        precision="bf16" if bf16 else "fp32")
    log.info("runtime: %s", device_policy.describe(facts))
    return facts


def build_parts(cfg: RunConfig, env: distributed.DistEnv, device: torch.device) -> TrainParts:
    """The models, optimizers, schedulers, stream and step context of this rank (seeded order: see above)."""
    from sharding.stream import TrainStream
    from training.models import build_model
    from training.models.tf_blocks import set_activation_checkpointing
    from training.pesq_targets import PesqPool
    from training.schedule import resolve_epoch_steps

    t, o = cfg.trainer, cfg.optim
    if cfg.data.batch_size % env.world_size:
        raise ConfigError(f"data.batch_size: global batch {cfg.data.batch_size} is not divisible by "
                          f"{env.world_size} ranks", "data.batch_size")
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    bf16 = t.precision == "bf16" and device.type == "cuda"
    if t.precision == "bf16" and not bf16:
        log.warning("trainer.precision=bf16 has no effect on %s: training in fp32", device)
    deterministic = device_policy.deterministic_for(device, t.deterministic)
    device_policy.numerics(device, deterministic, t.tf32)
    seed_everything(t.seed, deterministic)
    G = build_model(cfg.model.name, seed=t.seed, **cfg.model.options).to(device)
    facts = runtime_facts(G, device, env.world_size, deterministic=deterministic, tf32=t.tf32, bf16=bf16)
    set_activation_checkpointing(G, t.activation_checkpointing)
    D = build_model("metric-discriminator", seed=t.seed + 1).to(device) if cfg.loss.discriminator else None
    segment = resolve_segment(cfg, G)
    seed_everything(t.seed + 1_000_003 * env.rank, deterministic)  # per-rank dropout streams

    def adamw(m):
        return torch.optim.AdamW(m.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

    def decay(opt):
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=o.lr_decay)

    opt_g = adamw(G)
    sched_g = decay(opt_g)
    opt_d = adamw(D) if D is not None else None
    sched_d = decay(opt_d) if opt_d is not None else None
    stream = TrainStream(cfg.data.train, segment_samples=segment, batch_size=cfg.data.batch_size // env.world_size,
                         seed=t.seed, rank=env.rank, world_size=env.world_size, num_workers=cfg.data.num_workers,
                         on_mismatch="convert" if cfg.data.skip_bad else "reject", skip_bad=cfg.data.skip_bad)
    epoch_steps = resolve_epoch_steps(o.epoch_steps, stream.num_samples, cfg.data.batch_size)  # manifest read once
    pesq_pool = PesqPool(t.pesq_workers) if D is not None else None
    ctx = StepContext(G, D, opt_g, opt_d, G.stft, LossWeights.from_config(cfg.loss), device, env.world_size,
                      pesq_pool, o.grad_clip, bf16, pesq_overlap=t.pesq_overlap)
    return TrainParts(device=device, facts=facts, generator=G, discriminator=D, opt_g=opt_g, opt_d=opt_d,
                      sched_g=sched_g, sched_d=sched_d, stream=stream,
                      pesq_pool=pesq_pool, ctx=ctx, segment=segment, epoch_steps=epoch_steps)


def build_trainer(cfg: RunConfig, workdir: Path, env: distributed.DistEnv, device: torch.device):
    """The Trainer of this rank: its parts, validator, meter, tracker state, checkpoint manager, progress
    file (rank 0) and stop-signal handling (installed here)."""
    from training.checkpoint import CheckpointManager
    from training.evaluation.protocol import enhancer_for
    from training.preempt import from_environment
    from training.progress import Meter, ProgressFile
    from training.tracking import TrackerState
    from training.trainer import Trainer
    from training.validation import Validator

    workdir, t = Path(workdir), cfg.trainer
    parts = build_parts(cfg, env, device)
    validator = Validator(cfg, device=device, rank=env.rank, world_size=env.world_size,  # the run's eval.mode
                          enhancer=enhancer_for(parts.generator, cfg, validation=True, device=device,
                                                bf16=parts.ctx.bf16))
    return Trainer(
        cfg, workdir, env, parts, validator=validator, tracking=TrackerState(),
        meter=Meter(t.max_steps, device, is_main=env.is_main, name=cfg.name),
        checkpoints=CheckpointManager(workdir / CHECKPOINTS_DIR, keep_last=t.keep_last, rank=env.rank,
                                      world_size=env.world_size),
        progress=ProgressFile(workdir, t.max_steps) if env.is_main else None,
        preempt=from_environment(t.time_limit_margin_s).install(),
    )
