"""Atomic, complete-or-absent checkpoint directories with keep-last-K retention and a `best` copy.

Layout under `root` (= WORKDIR/checkpoints):

    step-000120/state.pt      rank 0: models, optimizers, schedulers, step/epoch, best metric,
                              resolved config, MLflow run id, pending metrics (plain containers)
    step-000120/rank-0.pt     per rank: RNG states (python/numpy/torch/CUDA) and loader state
    step-000120/rank-1.pt ...
    step-000120/COMPLETE      marker, written by rank 0 after a barrier, last
    best/                     a copy of the models of the best validation step (same files)

A save writes into `.tmp-step-N/` (every file temp+fsync+rename), then rank 0 writes the marker,
fsyncs and renames the folder to `step-N` and fsyncs `root`. Folders without the marker and
`.tmp-*` leftovers are ignored and removed by `clean_incomplete()`. Everything stored loads with
`torch.load(weights_only=True)`.

`SE_CKPT_TEST_PAUSE=STEP:SECONDS` (tests only): in the save of step STEP, sleep SECONDS after the
files are written and before the marker/rename, so a test can SIGKILL a run in the middle of a save.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

import torch

from training import distributed
from training.configtools import atomic_write_text

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
STATE = "state.pt"
_STEP_RE = re.compile(r"^step-(\d+)$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to `path` via a temp file in the same folder, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_marker(folder: Path, step: int) -> None:
    atomic_write_text(folder / MARKER, f"{step}\n")


def load_file(path: Path, map_location="cpu"):
    return torch.load(path, map_location=map_location, weights_only=True)


class CheckpointManager:
    """Save/load `step-N` checkpoints for one rank of a (possibly distributed) run."""

    def __init__(self, root: Path, *, keep_last: int = 2, rank: int = 0, world_size: int = 1):
        if keep_last < 1:
            raise ValueError(f"trainer.keep_last: expected >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.rank = rank
        self.world_size = world_size

    # ----- discovery -------------------------------------------------------------------------
    def complete_steps(self) -> list[int]:
        """Steps of complete checkpoints, ascending."""
        if not self.root.is_dir():
            return []
        steps = []
        for p in self.root.iterdir():
            m = _STEP_RE.match(p.name)
            if m and (p / MARKER).is_file():
                steps.append(int(m.group(1)))
        return sorted(steps)

    def latest(self) -> Path | None:
        steps = self.complete_steps()
        return self.path(steps[-1]) if steps else None

    def path(self, step: int) -> Path:
        return self.root / f"step-{step:06d}"

    def clean_incomplete(self) -> list[Path]:
        """Rank 0: remove `.tmp-*` folders and `step-N` folders without a marker. Returns them."""
        removed: list[Path] = []
        if self.rank != 0 or not self.root.is_dir():
            return removed
        for p in self.root.iterdir():
            if p.is_dir() and (p.name.startswith(".tmp-") or (_STEP_RE.match(p.name) and not (p / MARKER).exists())):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        if removed:
            log.warning("removed %d incomplete checkpoint(s): %s", len(removed), [p.name for p in removed])
        return removed

    # ----- save ------------------------------------------------------------------------------
    def save(self, step: int, shared: dict, per_rank: dict) -> Path:
        """Collective. `shared` is written by rank 0, `per_rank` by every rank."""
        final = self.path(step)
        tmp = self.root / f".tmp-step-{step:06d}"
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        distributed.barrier()
        atomic_torch_save(per_rank, tmp / f"rank-{self.rank}.pt")
        if self.rank == 0:
            atomic_torch_save(shared, tmp / STATE)
        pause_step, _, pause_s = os.environ.get("SE_CKPT_TEST_PAUSE", "").partition(":")
        if pause_step and int(pause_step) == step:
            log.warning("SE_CKPT_TEST_PAUSE: pausing %s s inside the save of step %d", pause_s, step)
            time.sleep(float(pause_s))
        distributed.barrier()
        if self.rank == 0:
            _fsync_dir(tmp)
            _write_marker(tmp, step)
            if final.exists():  # a stale complete copy of the same step (re-run after a crash)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._prune()
        distributed.barrier()
        return final

    def _prune(self) -> None:
        steps = self.complete_steps()
        for s in steps[: -self.keep_last]:
            try:
                shutil.rmtree(self.path(s))
            except OSError as e:  # a failed delete must never stop training
                log.warning("could not delete old checkpoint %s: %s", self.path(s), e)

    def save_best(self, shared: dict) -> Path:
        """Rank 0 only: replace `best/` atomically with `shared` (models + metadata)."""
        best = self.root / "best"
        tmp = self.root / ".tmp-best"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        atomic_torch_save(shared, tmp / STATE)
        _write_marker(tmp, int(shared.get("step", 0)))
        old = self.root / ".old-best"
        if old.exists():
            shutil.rmtree(old)
        if best.exists():
            os.replace(best, old)
        os.replace(tmp, best)
        _fsync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)
        return best

    # ----- load ------------------------------------------------------------------------------
    def load(self, folder: Path, map_location="cpu") -> tuple[dict, dict | None]:
        """(shared state, this rank's state or None when the checkpoint has no file for it)."""
        shared = load_file(folder / STATE, map_location)
        mine = folder / f"rank-{self.rank}.pt"
        per_rank = load_file(mine, map_location) if mine.is_file() else None
        return shared, per_rank

    def num_rank_files(self, folder: Path) -> int:
        return len(list(folder.glob("rank-*.pt")))
