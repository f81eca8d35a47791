"""The Trainer: wires one rank's parts (built by `training.build.build_trainer`), resumes, fits, saves.

`Trainer.fit()` is the loop (one screen): fault point and preemption check at every step boundary,
`train_step`, periodic logging / validation / checkpoint, final summary. Each stateful part owns its
state (`state_dict()` / `load_state_dict()`); `self.state` names them for the checkpoint manager,
which saves and restores the collection (`training.checkpoint.RunState`). The Trainer itself is
the part holding the step. Everything heavy lives in `loop.py` (step), `validation.py`,
`checkpoint.py`, `preempt.py`, `tracking.py`, `progress.py`.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common import faults
from common.rundir import CONFIG_FILE
from training import distributed
from training.checkpoint import Facts, NoState, RunState
from training.config import RunConfig, flatten, save_config, to_yaml
from training.loop import rehearse_step, train_step
from training.preempt import EXIT_PREEMPTED
from training.schedule import epoch_boundary
from training.seeding import GlobalRNG
from training.tracking import git_source, source_tags

if TYPE_CHECKING:
    from training.build import TrainParts

log = logging.getLogger(__name__)


def param_digest(*modules) -> str:
    """sha256 of the parameters of `modules` (None skipped): equal on every rank of a healthy DDP run."""
    h = hashlib.sha256()
    for m in modules:
        for p in (m.parameters() if m is not None else ()):
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """One training run on one rank: `build_trainer(cfg, workdir, env, device)`, `resume()`,
    `open_tracker()`, `fit()`, `close()`. ``on_validation(step, {"val/<metric>": v})``: called on
    rank 0 after each validation and that step's checkpoint (``orchestrate tune``)."""

    def __init__(self, cfg: RunConfig, workdir: Path, env: distributed.DistEnv, parts: TrainParts, *, validator, meter,
                 tracking, checkpoints, progress, preempt):
        self.cfg, self.workdir, self.env, self.parts = cfg, Path(workdir), env, parts
        self.device = parts.device
        self.validator, self.meter, self.tracking = validator, meter, tracking
        self.ckpt, self.progress, self.preempt = checkpoints, progress, preempt
        self.step = 0
        self.on_validation = None
        G, D = parts.generator, parts.discriminator
        self.state = RunState(
            shared={"trainer": self, "validator": validator, "tracking": tracking,
                    "facts": Facts(lambda: {"config": to_yaml(cfg), "world_size": env.world_size}),
                    "generator": G, "discriminator": D or NoState(), "opt_g": parts.opt_g,
                    "opt_d": parts.opt_d or NoState(), "sched_g": parts.sched_g, "sched_d": parts.sched_d or NoState(),
                    "counters": parts.ctx.counters},
            per_rank={"facts": Facts(lambda: {"rank": env.rank, "param_digest": param_digest(G, D)}),
                      "rng": GlobalRNG(), "loader": parts.stream, "meter": meter},
            flat=frozenset({"trainer", "validator", "tracking", "facts"}),
        )

    # ----- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.step // self.parts.epoch_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])

    def resume(self) -> int:
        """Collective: restore every part from the newest complete checkpoint; its step (0 when none)."""
        return self.ckpt.restore(self.state)

    def save(self) -> None:
        self.ckpt.save_state(self.step, self.state)
        self.tracker.flush(strict=False)  # normally empty: every window and validation is flushed live

    @property
    def tracker(self):
        return self.tracking.tracker

    def open_tracker(self) -> None:
        cfg, parts = self.cfg, self.parts
        tags = {"se.kind": "train", "se.model": cfg.model.name, "se.seed": str(cfg.trainer.seed),
                "se.world_size": str(self.env.world_size), "se.git_commit": git_source()[0],
                "se.hostname": distributed.hostname(), "run_name": cfg.name, **source_tags(), **parts.facts,
                **cfg.mlflow.tags}
        params = flatten(cfg) | {"model.params": str(sum(p.numel() for p in parts.generator.parameters())),
                                 "optim.epoch_steps_resolved": str(parts.epoch_steps)}
        tracker = self.tracking.open(cfg.mlflow, self.workdir, rank=self.env.rank, params=params, tags=tags)
        tracker.flush()
        tracker.log_text(to_yaml(cfg), CONFIG_FILE)  # the resolved config, from the start

    def write_progress(self, state: str, val_pesq: float | None = None) -> None:
        """`progress.json` (format: training/progress.py), rank 0."""
        if self.progress is not None:
            self.progress.update(self.step, state, self.validator.best_pesq, val_pesq)

    # ----- periodic work -------------------------------------------------------------------------
    def data_stats(self) -> dict[str, float]:
        """The stream's counts of this rank (samples, skipped, rejected, ...)."""
        return {k: v for k, v in self.parts.stream.stats().items() if k != "batches"}

    def log_window(self) -> None:
        """Collective: the meter's window, the learning rate and the run's counters at this step."""
        counters = self.parts.ctx.counters
        extras = {"train/lr": self.parts.opt_g.param_groups[0]["lr"],
                  "train/pesq_failed": float(counters["pesq_failed"]),
                  "train/nonfinite_skipped": float(counters["nonfinite_skipped"])}
        self.tracker.log(self.meter.log(self.step, extras, self.data_stats()), self.step)

    def run_validation(self) -> dict[str, float]:
        """Collective: validate; rank 0 replaces `best/` when the PESQ improved."""
        G, D = self.parts.generator, self.parts.discriminator
        val, improved = self.validator.run(G, self.step, self.tracker)
        if improved and self.env.is_main:
            self.ckpt.save_best({"step": self.step, "pesq": val["pesq"], "config": to_yaml(self.cfg),
                                 "generator": G.state_dict(), "discriminator": D.state_dict() if D is not None else {}})
        return val

    # ----- the loop ------------------------------------------------------------------------------
    def fit(self) -> int:
        """Train to `trainer.max_steps`; returns 0, or EXIT_PREEMPTED after checkpointing on a stop request."""
        t, parts, start_step = self.cfg.trainer, self.parts, self.step
        if self.env.is_main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.workdir / CONFIG_FILE)
        self.write_progress("running")
        self.meter.start(self.step)
        while self.step < t.max_steps:
            if self.step > start_step or start_step == 0:  # a resumed run's first boundary was reached before
                faults.point("train.step", step=self.step, rank=self.env.rank)
            if self.preempt.should_stop(self.device):
                log.warning("stopping at step %d: %s; checkpointing for requeue", self.step, self.preempt.reason)
                if self.ckpt.latest() is None or self.ckpt.complete_steps()[-1] != self.step:
                    self.save()
                self.write_progress("preempted")
                self.meter.close()
                return EXIT_PREEMPTED
            if t.rehearse_step_s > 0:
                metrics = rehearse_step(parts.ctx, next(parts.stream), t.rehearse_step_s, self.step)
            else:
                metrics = train_step(parts.ctx, next(parts.stream))
            self.step += 1
            if epoch_boundary(self.step, parts.epoch_steps):
                parts.sched_g.step()
                if parts.sched_d is not None:
                    parts.sched_d.step()
            self.meter.update(metrics)
            val = None
            if self.step % t.log_every == 0 or self.step == t.max_steps:
                self.log_window()
                self.tracker.flush(strict=False)  # live: at most log_every steps behind
                self.write_progress("running")
            if self.validator.due(self.step):
                val = self.run_validation()
                self.tracker.flush(strict=False)  # validation metrics at once
                self.write_progress("running", val.get("pesq"))
            if self.step % t.ckpt_every == 0 or self.step == t.max_steps:
                self.save()
                self.write_progress("running")
            if val is not None and self.on_validation is not None and self.env.is_main:  # after the save:
                self.on_validation(self.step, self.validator.logged(val))  # a caller may stop the run here
        self.meter.close()
        self.finish(start_step)
        distributed.barrier()  # no rank tears down its process group while rank 0 still writes artifacts
        return 0

    def finish(self, start_step: int) -> None:
        """Artifacts (config, best checkpoint, clips, spectrogram) and the summary screen (rank 0)."""
        self.write_progress("done")
        if not self.env.is_main:
            return
        from training.progress import summary_text, write_clip_artifacts

        v, art = self.validator, self.workdir / "artifacts"
        write_clip_artifacts(v.clips, art)
        self.tracker.log_artifact(self.workdir / CONFIG_FILE)
        if art.is_dir():
            self.tracker.log_artifacts(art, "validation")
        best = self.ckpt.root / "best"
        if best.is_dir():
            self.tracker.log_artifacts(best, "checkpoints/best")
        print(summary_text(self.cfg, world_size=self.env.world_size, device=self.device, step=self.step,
                           start_step=start_step, segment=self.parts.segment, val=v.last, noisy=v.noisy or {},
                           best_pesq=v.best_pesq, best_step=v.best_step, counters=self.parts.ctx.counters,
                           data_stats=self.data_stats(), checkpoints=self.ckpt.root, run_id=self.tracker.run_id),
              file=sys.stderr, flush=True)

    def close(self, status: str = "FINISHED") -> None:
        self.preempt.uninstall()
        self.parts.close()
        self.tracker.close(status)
