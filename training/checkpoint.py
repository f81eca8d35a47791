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

`best/` is swapped in atomically (see `save_best`); a kill inside it never loses the previous best.

What goes into the files: `RunState`, the run's parts by name (each with `state_dict()` /
`load_state_dict()`, the torchtitan/DCP `Stateful` shape: models, optimizers, schedulers, stream, RNG,
counters, meter, tracker, ...), written by `save_state` and restored by `restore`. A part's file key is
its name; the parts named in `RunState.flat` keep their fields at the top level of the file (`step`,
`best_pesq`, `mlflow_run_id`, ...: where the format has always had them), so checkpoints written before
the parts owned their state restore unchanged (tests/test_checkpoint_compat.py).

Fault points (`common.faults`): `checkpoint.files_written` (a rank's files written, before the
marker), `checkpoint.saved`, and `best.written` / `best.swapped` / `best.moved_old` / `best.moved_new`
inside `save_best`.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import yaml

from common import faults
from common.atomic import atomic_torch_save, atomic_write_text, exchange_paths
from common.atomic import fsync_dir as _fsync_dir
from common.config import ConfigError
from training import distributed

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
STATE = "state.pt"
_STEP_RE = re.compile(r"^step-(\d+)$")


def best_dir(root: Path) -> Path | None:
    """The complete best checkpoint under `root` for a reader: `best/`, else a complete `.old-best/` or
    `.tmp-best/` left by a kill inside `save_best` (read-only: `recover_best` repairs on the next start)."""
    for name in ("best", ".tmp-best", ".old-best"):
        folder = Path(root) / name
        if (folder / STATE).is_file() and (folder / MARKER).is_file():
            return folder
    return None


def _write_marker(folder: Path, step: int) -> None:
    atomic_write_text(folder / MARKER, f"{step}\n")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: unreadable, or from another model (one line naming the file)."""


def load_file(path: Path, map_location="cpu", mmap: bool = False):
    """``torch.load(weights_only=True)``; CheckpointError (one line) for a missing or unreadable file.
    ``mmap``: map the tensors instead of reading them (a cheap look at the metadata of a big file)."""
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location=map_location, weights_only=True)  # not a zip file: read it
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        if "Weights only load failed" in reason:  # torch's long advice to drop weights_only: not for us
            reason = "not a torch checkpoint, or one holding more than tensors and plain containers"
        raise CheckpointError(f"{path}: not a readable checkpoint file ({reason}); "
                              f"delete its folder to fall back to an older checkpoint") from None


def stored_config(state: dict) -> dict | None:
    """The resolved run config stored in a checkpoint (YAML text or a mapping) as a dict, else None."""
    raw = state.get("config") if isinstance(state, dict) else None
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError:
            return None
    return raw if isinstance(raw, dict) else None


def check_resume(root: Path, model: dict) -> None:
    """Before a resume: the newest complete checkpoint under ``root`` must be readable and hold the
    same ``model`` section (name + options) as this run's config; CheckpointError otherwise."""
    latest = CheckpointManager(root).latest()
    if latest is None:
        return
    state = load_file(latest / STATE, mmap=True)
    stored = (stored_config(state) or {}).get("model")
    if stored is not None and _plain(stored) != _plain(model):
        raise CheckpointError(
            f"{latest / STATE}: the run folder holds a checkpoint of model {stored.get('name')!r} "
            f"(options {stored.get('options')}), this config asks for {model.get('name')!r} "
            f"(options {model.get('options')}); use another --workdir or the same model")


def _plain(d: dict) -> str:
    return yaml.safe_dump(d, sort_keys=True)


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class NoState:
    """An absent part (a run without a discriminator): saved as {}, nothing restored."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Facts(NoState):
    """Fields written for the files' readers and never restored (resolved config, world size, digest)."""

    def __init__(self, fields: Callable[[], dict]):
        self.fields = fields

    def state_dict(self) -> dict:
        return self.fields()


@dataclass
class RunState:
    """A run's parts by name: `shared` ones in `state.pt` (written by rank 0, restored on every rank),
    `per_rank` ones in `rank-R.pt`; the names in `flat` spread their fields over the file's top level."""

    shared: dict[str, Stateful]
    per_rank: dict[str, Stateful]
    flat: frozenset[str] = field(default_factory=frozenset)

    def collect(self, parts: dict[str, Stateful]) -> dict:
        out: dict = {}
        for name, part in parts.items():
            if name in self.flat:
                out.update(part.state_dict())
            else:
                out[name] = part.state_dict()
        return out

    def restore(self, parts: dict[str, Stateful], stored: dict) -> None:
        for name, part in parts.items():  # a part newer than the file (counters, meter) starts from {}
            part.load_state_dict(stored if name in self.flat else stored.get(name, {}))


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
        self.recover_best()  # before `.tmp-*` folders go: `.tmp-best` may be the only complete best
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
        faults.point("checkpoint.files_written", step=step, rank=self.rank)
        distributed.barrier()
        if self.rank == 0:
            _fsync_dir(tmp)
            _write_marker(tmp, step)
            if final.exists() and exchange_paths(tmp, final):  # a stale copy of the same step (re-run
                shutil.rmtree(tmp)  # after a crash): swapped in one step, then the stale one removed
            else:
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
            _fsync_dir(self.root)
            self._prune()
            faults.point("checkpoint.saved", step=step, rank=self.rank)
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
        """Rank 0 only: replace `best/` with `shared` (models + metadata); a complete `best/` survives any kill.

        The new copy is written complete into `.tmp-best/`, then swapped with `best/` in one atomic
        step (`renameat2(RENAME_EXCHANGE)`), so `best/` is always a complete checkpoint. Where the file
        system cannot swap, `best/` is renamed to `.old-best/` and `.tmp-best/` to `best/`; a kill
        between the two renames is repaired by `recover_best()` on the next start (and readers fall
        back to `.old-best/`, see `best_dir()`).
        """
        best = self.root / "best"
        tmp = self.root / ".tmp-best"
        old = self.root / ".old-best"
        self.recover_best()
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        atomic_torch_save(shared, tmp / STATE)
        _fsync_dir(tmp)
        step = int(shared.get("step", 0))
        _write_marker(tmp, step)
        faults.point("best.written", step=step)
        if best.exists() and exchange_paths(tmp, best):
            faults.point("best.swapped", step=step)
            _fsync_dir(self.root)
            shutil.rmtree(tmp, ignore_errors=True)  # now the previous best
            return best
        if best.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(best, old)
            faults.point("best.moved_old", step=step)
        os.replace(tmp, best)
        faults.point("best.moved_new", step=step)
        _fsync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)
        return best

    def recover_best(self) -> Path | None:
        """Rank 0: after a kill inside `save_best`, make `best/` complete again. Returns `best/` or None.

        `best/` missing: a complete `.tmp-best/` (the newer copy) or else a complete `.old-best/` is
        renamed to `best/`. Leftovers beside a complete `best/` are removed.
        """
        if self.rank != 0 or not self.root.is_dir():
            return None
        best, tmp, old = self.root / "best", self.root / ".tmp-best", self.root / ".old-best"
        if not (best / MARKER).is_file():
            for candidate in (tmp, old):
                if (candidate / MARKER).is_file() and (candidate / STATE).is_file():
                    if best.exists():
                        shutil.rmtree(best)
                    os.replace(candidate, best)
                    _fsync_dir(self.root)
                    log.warning("restored best/ from %s (a save of the best checkpoint was interrupted)",
                                candidate.name)
                    break
        if (best / MARKER).is_file():
            for leftover in (tmp, old):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
            return best
        return None

    def save_state(self, step: int, state: RunState) -> Path:
        """Collective: `save` the parts of `state` (the shared ones collected on rank 0 only)."""
        shared = state.collect(state.shared) if self.rank == 0 else {}
        return self.save(step, shared, state.collect(state.per_rank))

    # ----- load ------------------------------------------------------------------------------
    def restore(self, state: RunState) -> int:
        """Collective: rank 0 removes incomplete checkpoints, then every rank restores `state` from the
        newest complete one; returns its step (0 when there is none: nothing restored).

        Loaded to CPU whatever device wrote it: the RNG states must arrive as CPU tensors, and the
        models' and optimizers' `load_state_dict` move the rest onto this run's device. The per-rank
        parts are restored only from a checkpoint of as many ranks as this run has; otherwise data
        order and RNG restart (a warning: not an exact resume)."""
        self.clean_incomplete()
        distributed.barrier()
        folder = self.latest()
        if folder is None:
            return 0
        shared, mine = self.load(folder, map_location="cpu")
        state.restore(state.shared, shared)
        if mine is not None and int(shared["world_size"]) == self.world_size:
            state.restore(state.per_rank, mine)
        else:
            log.warning("checkpoint %s was written by %s ranks, this run has %d: data order and RNG restart "
                        "(not an exact resume)", folder.name, shared["world_size"], self.world_size)
        log.info("resumed from %s (step %d)", folder, int(shared["step"]))
        return int(shared["step"])

    def load(self, folder: Path, map_location="cpu") -> tuple[dict, dict | None]:
        """(shared state, this rank's state or None when the checkpoint has no file for it)."""
        shared = load_file(folder / STATE, map_location)
        mine = folder / f"rank-{self.rank}.pt"
        per_rank = load_file(mine, map_location) if mine.is_file() else None
        return shared, per_rank

    def num_rank_files(self, folder: Path) -> int:
        return len(list(folder.glob("rank-*.pt")))
