"""The Trainer: builds the parts of a run from its config, owns its state, resumes, saves.

`Trainer.fit()` is the loop (one screen): preemption check at every step boundary, `train_step`,
periodic logging / validation / checkpoint, final summary. Everything heavy lives in `loop.py`
(step, validation), `checkpoint.py`, `preempt.py`, `tracking.py`.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import torch

from common.rundir import CHECKPOINTS_DIR, CONFIG_FILE
from training import device as device_policy
from training import distributed
from training.checkpoint import CheckpointManager
from training.config import ConfigError, RunConfig, flatten, save_config, to_yaml
from training.evaluation.segment_eval import resolve_mode
from training.loop import StepContext, train_step, validate
from training.losses import LossWeights
from training.model_names import segment_problem
from training.preempt import EXIT_PREEMPTED
from training.preempt import from_environment as preemption_from_environment
from training.schedule import epoch_boundary, resolve_epoch_steps, train_clips
from training.seeding import rng_state, seed_everything, set_rng_state
from training.tracking import build_tracker, git_source, source_tags

log = logging.getLogger(__name__)

NUM_CLIPS = 3


def resolve_segment(cfg: RunConfig, G) -> int:
    """Training crop in samples: cfg.data.segment_samples or the model's; one the model cannot take
    (`training.model_names.segment_problem`, as the pre-submit checks) is a ConfigError naming valid lengths."""
    seg = cfg.data.segment_samples or G.segment_samples
    problem = segment_problem(cfg.model.name, seg, discriminator=cfg.loss.discriminator)
    if problem:
        raise ConfigError(problem, "data.segment_samples")
    return seg


def git_commit() -> str:
    """The full commit of the code being run (see `tracking.git_source`)."""
    return git_source()[0]


class Trainer:
    """One training run on one rank. Build with `Trainer(cfg, workdir, env)`, then `fit()`, `close()`."""

    def __init__(self, cfg: RunConfig, workdir: Path, env: distributed.DistEnv):
        from sharding.stream import TrainStream
        from training.evaluation.metrics import PesqPool
        from training.models import build_model
        from training.models.tf_blocks import set_activation_checkpointing

        self.cfg, self.workdir, self.env = cfg, Path(workdir), env
        self.on_validation = None  # fn(step, {"val/<metric>": value, ...}) after each validation, rank 0
        t = cfg.trainer
        if cfg.data.batch_size % env.world_size:
            raise ConfigError(f"data.batch_size: global batch {cfg.data.batch_size} is not divisible by "
                              f"{env.world_size} ranks", "data.batch_size")
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.device = distributed.pick_device(t.device, env, cfg.launcher.gpus_per_node)
        self.bf16 = t.precision == "bf16" and self.device.type == "cuda"
        if t.precision == "bf16" and not self.bf16:
            log.warning("trainer.precision=bf16 has no effect on %s: training in fp32", self.device)
        self.deterministic = device_policy.deterministic_for(self.device, t.deterministic)
        device_policy.numerics(self.device, self.deterministic, t.tf32)
        seed_everything(t.seed, self.deterministic)
        self.G = build_model(cfg.model.name, seed=t.seed, **cfg.model.options).to(self.device)
        self.facts = self._check_runtime()
        set_activation_checkpointing(self.G, t.activation_checkpointing)
        self.D = build_model("metric-discriminator", seed=t.seed + 1).to(self.device) if cfg.loss.discriminator else None
        self.segment = resolve_segment(cfg, self.G)
        self.val_segment = (self.G.segment_samples if resolve_mode(cfg.eval.mode, cfg.model.name, validation=True)
                            == "rwsa_segments" else None)  # the RWSA authors' validation protocol
        seed_everything(t.seed + 1_000_003 * env.rank, self.deterministic)  # per-rank dropout streams
        o = cfg.optim

        def adamw(m):
            return torch.optim.AdamW(m.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

        self.opt_g = adamw(self.G)
        self.epoch_steps = resolve_epoch_steps(o.epoch_steps, None if isinstance(o.epoch_steps, int) else
                                               train_clips(cfg.data.train), cfg.data.batch_size)
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.opt_g, gamma=o.lr_decay)
        self.opt_d = adamw(self.D) if self.D is not None else None
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.opt_d, gamma=o.lr_decay) if self.D is not None else None
        self.stream = TrainStream(cfg.data.train, segment_samples=self.segment,
                                  batch_size=cfg.data.batch_size // env.world_size, seed=t.seed, rank=env.rank,
                                  world_size=env.world_size, num_workers=cfg.data.num_workers,
                                  on_mismatch="convert" if cfg.data.skip_bad else "reject",
                                  skip_bad=cfg.data.skip_bad)
        self.pesq_pool = PesqPool(t.pesq_workers) if self.D is not None else None
        self.ctx = StepContext(self.G, self.D, self.opt_g, self.opt_d, self.G.stft, LossWeights.from_config(cfg.loss),
                               self.device, env.world_size, self.pesq_pool, o.grad_clip, self.bf16,
                               pesq_overlap=t.pesq_overlap)
        self.ckpt = CheckpointManager(self.workdir / CHECKPOINTS_DIR, keep_last=t.keep_last, rank=env.rank,
                                      world_size=env.world_size)
        self.preempt = preemption_from_environment(t.time_limit_margin_s).install()
        self.step, self.best_pesq, self.best_step = 0, -math.inf, -1
        self.last_val: dict[str, float] = {}
        self.clips: list = []
        self.noisy_val: dict[str, float] | None = None
        self.mlflow_run_id: str | None = None
        self.tracker = None
        self.meter = None
        self._meter_state: dict = {}
        self._pending: list = []
        self._progress = None

    def _check_runtime(self) -> dict[str, str]:
        """Refuse a GPU run whose Mamba layers would fall back to the torch scan unasked (the import
        error is the message); log and return the run's runtime facts (MLflow tags)."""
        from training.mamba import Mamba, scan

        if self.device.type != "cpu" and any(isinstance(m, Mamba) for m in self.G.modules()):
            try:
                scan.choose_backend(self.device.type)
            except scan.ScanBackendError as e:
                raise ConfigError(str(e), "SE_SCAN_BACKEND") from None
        t = self.cfg.trainer
        facts = device_policy.runtime_facts(self.device, self.env.world_size, deterministic=self.deterministic,
                                            tf32=t.tf32, precision="bf16" if self.bf16 else "fp32")
        log.info("runtime: %s", device_policy.describe(facts))
        return facts

    # ----- state ---------------------------------------------------------------------------------
    def shared_state(self) -> dict:
        opt = lambda o: o.state_dict() if o is not None else {}  # noqa: E731
        return {
            "step": self.step, "epoch": self.step // self.epoch_steps, "best_pesq": self.best_pesq,
            "best_step": self.best_step, "world_size": self.env.world_size,
            "generator": self.G.state_dict(), "discriminator": self.D.state_dict() if self.D is not None else {},
            "opt_g": self.opt_g.state_dict(), "opt_d": opt(self.opt_d),
            "sched_g": self.sched_g.state_dict(), "sched_d": opt(self.sched_d),
            "config": to_yaml(self.cfg), "mlflow_run_id": self.tracker.run_id or "",
            "pending_metrics": self.tracker.pending(), "counters": dict(self.ctx.counters),
        }

    def rank_state(self) -> dict:
        return {"rank": self.env.rank, "rng": rng_state(), "loader": self.stream.state_dict(),
                "meter": self.meter.state_dict() if self.meter is not None else {},
                "param_digest": self.param_digest()}

    def param_digest(self) -> str:
        """sha256 of this rank's G and D parameters: equal on every rank of a healthy DDP run."""
        import hashlib

        h = hashlib.sha256()
        for m in (self.G, self.D):
            for p in (m.parameters() if m is not None else ()):
                h.update(p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def resume(self) -> int:
        """Load the newest complete checkpoint (if any); returns its step (0 when none)."""
        self.ckpt.clean_incomplete()
        distributed.barrier()
        folder = self.ckpt.latest()
        if folder is None:
            return 0
        # Always to CPU: the RNG states must arrive as CPU ByteTensors, and load_state_dict moves the
        # weights and optimizer moments onto this run's device (whatever device wrote the files).
        shared, mine = self.ckpt.load(folder, map_location="cpu")
        self.G.load_state_dict(shared["generator"], strict=True)
        self.opt_g.load_state_dict(shared["opt_g"])
        self.sched_g.load_state_dict(shared["sched_g"])
        if self.D is not None:
            self.D.load_state_dict(shared["discriminator"], strict=True)
            self.opt_d.load_state_dict(shared["opt_d"])
            self.sched_d.load_state_dict(shared["sched_d"])
        self.step, self.best_pesq, self.best_step = int(shared["step"]), float(shared["best_pesq"]), int(shared["best_step"])
        self.ctx.counters.update(shared.get("counters", {}))
        self.mlflow_run_id = shared.get("mlflow_run_id") or None
        self._pending = shared.get("pending_metrics", [])
        if mine is not None and int(shared["world_size"]) == self.env.world_size:
            set_rng_state(mine["rng"])
            self.stream.load_state_dict(mine["loader"])
            self._meter_state = mine.get("meter", {})
        else:
            log.warning("checkpoint %s was written by %s ranks, this run has %d: data order and RNG restart "
                        "(not an exact resume)", folder.name, shared["world_size"], self.env.world_size)
        log.info("resumed from %s (step %d)", folder, self.step)
        return self.step

    def open_tracker(self) -> None:
        cfg = self.cfg
        tags = {"se.kind": "train", "se.model": cfg.model.name, "se.seed": str(cfg.trainer.seed),
                "se.world_size": str(self.env.world_size), "se.git_commit": git_commit(),
                "se.hostname": distributed.hostname(), "run_name": cfg.name, **source_tags(), **self.facts,
                **cfg.mlflow.tags}
        params = flatten(cfg) | {"model.params": str(sum(p.numel() for p in self.G.parameters())),
                                 "optim.epoch_steps_resolved": str(self.epoch_steps)}
        self.tracker = build_tracker(cfg.mlflow, self.workdir, rank=self.env.rank, run_id=self.mlflow_run_id,
                                     params=params, tags=tags)
        self.tracker.restore_pending(self._pending)
        self.tracker.flush()
        self.tracker.log_text(to_yaml(cfg), CONFIG_FILE)  # the resolved config, from the start

    def save(self) -> None:
        self.ckpt.save(self.step, self.shared_state(), self.rank_state())
        self.tracker.flush(strict=False)  # normally empty: every window and validation is flushed live

    def write_progress(self, state: str, val_pesq: float | None = None) -> None:
        """`progress.json` (format: training/progress.py), rank 0."""
        if self.env.is_main:
            from training.progress import ProgressFile

            if self._progress is None:
                self._progress = ProgressFile(self.workdir, self.cfg.trainer.max_steps)
            self._progress.update(self.step, state, self.best_pesq, val_pesq)

    # ----- periodic work -------------------------------------------------------------------------
    def run_validation(self) -> dict[str, float]:
        from sharding.stream import iter_utterances

        cfg = self.cfg
        utts = iter_utterances(cfg.data.valid, limit=cfg.data.valid_limit)
        val, clips = validate(self.G, utts, device=self.device, rank=self.env.rank, world_size=self.env.world_size,
                              num_workers=cfg.trainer.pesq_workers, keep_clips=NUM_CLIPS if self.env.is_main else 0,
                              with_noisy=self.noisy_val is None, bf16=self.bf16, segment=self.val_segment)
        if self.noisy_val is None:
            self.noisy_val = {k: val.pop(k) for k in list(val) if k.startswith("noisy_")}
            self.tracker.log({f"val/{k}": v for k, v in self.noisy_val.items()}, 0)
        self.clips, self.last_val = clips, val
        improved = math.isfinite(val["pesq"]) and val["pesq"] > self.best_pesq
        if improved:
            self.best_pesq, self.best_step = val["pesq"], self.step
            if self.env.is_main:
                self.ckpt.save_best({"step": self.step, "pesq": val["pesq"], "config": to_yaml(cfg),
                                     "generator": self.G.state_dict(),
                                     "discriminator": self.D.state_dict() if self.D is not None else {}})
        self.tracker.log({f"val/{k}": v for k, v in val.items() if k != "n"} | {"val/best_pesq": self.best_pesq},
                         self.step)
        return val

    # ----- the loop ------------------------------------------------------------------------------
    def fit(self) -> int:
        """Train to `trainer.max_steps`; returns 0, or EXIT_PREEMPTED after checkpointing on a stop request."""
        from training.progress import Meter

        t, start_step = self.cfg.trainer, self.step
        if self.env.is_main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.workdir / CONFIG_FILE)
        self.write_progress("running")
        self.meter = meter = Meter(self, total=t.max_steps, start=self.step)
        meter.load_state_dict(self._meter_state)
        while self.step < t.max_steps:
            if self.preempt.should_stop(self.device):
                log.warning("stopping at step %d: %s; checkpointing for requeue", self.step, self.preempt.reason)
                if self.ckpt.latest() is None or self.ckpt.complete_steps()[-1] != self.step:
                    self.save()
                self.write_progress("preempted")
                meter.close()
                return EXIT_PREEMPTED
            metrics = train_step(self.ctx, next(self.stream))
            self.step += 1
            if epoch_boundary(self.step, self.epoch_steps):
                self.sched_g.step()
                if self.sched_d is not None:
                    self.sched_d.step()
            meter.update(metrics)
            val = None
            if self.step % t.log_every == 0 or self.step == t.max_steps:
                meter.log()
                self.tracker.flush(strict=False)  # live: at most log_every steps behind
                self.write_progress("running")
            if self.cfg.data.valid and ((t.val_every and self.step % t.val_every == 0) or self.step == t.max_steps):
                val = self.run_validation()
                self.tracker.flush(strict=False)  # validation metrics at once
                self.write_progress("running", val.get("pesq"))
            if self.step % t.ckpt_every == 0 or self.step == t.max_steps:
                self.save()
                self.write_progress("running")
            if val is not None and self.on_validation is not None and self.env.is_main:  # after the save:
                self.on_validation(self.step, {f"val/{k}": v for k, v in val.items() if k != "n"}  # a caller may
                                   | {"val/best_pesq": self.best_pesq})  # stop the run here (Tune's ASHA)
        meter.close()
        self.finish(start_step)
        distributed.barrier()  # no rank tears down its process group while rank 0 still writes artifacts
        return 0

    def finish(self, start_step: int) -> None:
        """Artifacts (config, best checkpoint, clips, spectrogram) and the summary screen (rank 0)."""
        self.write_progress("done")
        if not self.env.is_main:
            return
        from training.progress import summary_text, write_clip_artifacts

        art = self.workdir / "artifacts"
        write_clip_artifacts(self.clips, art)
        self.tracker.log_artifact(self.workdir / CONFIG_FILE)
        if art.is_dir():
            self.tracker.log_artifacts(art, "validation")
        best = self.ckpt.root / "best"
        if best.is_dir():
            self.tracker.log_artifacts(best, "checkpoints/best")
        print(summary_text(self, start_step), file=sys.stderr, flush=True)

    def close(self, status: str = "FINISHED") -> None:
        self.preempt.uninstall()
        self.stream.close()
        if self.pesq_pool is not None:
            self.pesq_pool.close()
        if self.tracker is not None:
            self.tracker.close(status)
