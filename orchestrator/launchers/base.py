"""What every launcher shares: the ``Launcher`` interface, the cell command, the exit-code contract,
the cell's own files (their names: `common.rundir`; progress.json's reader: `common.progress`)."""

from __future__ import annotations

import abc
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from common.atomic import atomic_write_text
from common.progress import read_attempts
from common.rundir import (  # the run folder's contract
    ATTEMPTS_FILE,  # noqa: F401  (re-exported: launchers write it through base)
    CONFIG_FILE,
    EXIT_CODE_FILE,
    EXIT_OK,
    EXIT_PREEMPTED,
    RUN_ID_FILE,
)
from orchestrator.ledger import ACTIVE, set_state


def cell_command(cell_dir: str | Path, python: str | None = None, nproc: int = 1) -> list[str]:
    """``python -m training.run --config CELL/config.yaml --workdir CELL`` (torchrun when nproc > 1)."""
    py = python or sys.executable
    cell_dir = str(cell_dir)
    tail = ["--config", os.path.join(cell_dir, CONFIG_FILE), "--workdir", cell_dir]
    if nproc > 1:
        return [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "training.run", *tail]
    return [py, "-m", "training.run", *tail]


def state_from_exit_code(rc: int) -> str:
    """0 → done, 75 → preempted, anything else (2 = bad config, signals) → failed."""
    if rc == EXIT_OK:
        return "done"
    if rc == EXIT_PREEMPTED:
        return "preempted"
    return "failed"


def write_exit_code(cell_dir: str | Path, rc: int) -> None:
    atomic_write_text(Path(cell_dir) / EXIT_CODE_FILE, f"{rc}\n")


def clear_exit_code(cell_dir: str | Path) -> None:
    """Before a (re)submission: an old exit code must not describe the new attempt."""
    p = Path(cell_dir) / EXIT_CODE_FILE
    if p.exists():
        os.replace(p, p.with_name(EXIT_CODE_FILE + ".prev"))


def read_exit_code(cell_dir: str | Path) -> int | None:
    """The first line of the exit-code file (None while the attempt runs)."""
    try:
        return int((Path(cell_dir) / EXIT_CODE_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def was_terminated(cell_dir: str | Path) -> bool:
    """True when the SLURM wrapper saw SIGTERM (scancel, or preemption) before the run ended."""
    try:
        return "terminated" in (Path(cell_dir) / EXIT_CODE_FILE).read_text().split()[1:]
    except OSError:
        return False


def count_attempts(cell_dir: str | Path) -> int:
    """Job attempts that started (lines beginning with a timestamp and ' start '); 0 when the file is
    absent or unreadable (`orchestrate status` names an unreadable one)."""
    lines, _ = read_attempts(cell_dir)
    return sum(1 for line in lines if " start " in line)


def read_run_id(cell_dir: str | Path) -> str | None:
    try:
        text = (Path(cell_dir) / RUN_ID_FILE).read_text().strip()
    except OSError:
        return None
    return text or None


# ------------------------------------------------------------------------------ the interface


class Launcher(abc.ABC):
    """Where a sweep's cells run. The sweep runner (`orchestrator.sweeps.run`) hands it ``[(Cell, cell_dir), ...]`` and ledger data;
    it knows nothing else about executors.

    ``submit`` starts the cells (SLURM: queues them and returns; local/Ray: runs them to the end,
    ``blocking``), recording job ids and states in the ledger; ``refresh`` updates the ledger
    records of active cells from the scheduler and the cells' files; ``cancel`` stops the active
    cells of the given records; ``describe`` is what ``--dry-run`` prints for them.
    """

    name: ClassVar[str] = "?"
    blocking: ClassVar[bool] = True  # submit returns when every cell has ended

    def __init__(self, sweep_dir: str | Path, *, job_name: str = "sweep", profile: Any = None, source: str = ""):
        self.sweep_dir = Path(sweep_dir)
        self.job_name = job_name
        self.profile = profile
        self.source = source  # the sweep file, for error messages
        self.notes: list[str] = []  # one line each: what `cancel` left alone and why

    def describe(self, cells: list) -> list[str]:
        """The commands that would run (dry run); one line per cell by default."""
        return [shlex.join(cell_command(cdir, nproc=cell.config.launcher.nproc)) for cell, cdir in cells]

    def recover(self, data: dict) -> None:  # noqa: B027 (optional hook)
        """Before a (re)run: mark cells the ledger calls active that cannot be running any more."""

    @abc.abstractmethod
    def submit(self, cells: list, out: Callable[[str], None] = print) -> int:
        """Start ``[(Cell, cell_dir), ...]``; 0 when submitted (or, blocking, every cell done)."""

    @abc.abstractmethod
    def refresh(self, data: dict) -> None:
        """Update the states of ``data["cells"]`` records that are active (submitted/running)."""

    @abc.abstractmethod
    def cancel(self, records: list[dict]) -> list[str]:
        """Stop the active cells of ``records``; returns the job ids signalled (what it refused to signal:
        one line each in ``notes``)."""

    # shared by the implementations
    def cell_dir(self, rec: dict) -> Path:
        return self.sweep_dir / rec["workdir"]

    def refresh_from_exit_codes(self, data: dict) -> None:
        """Active cells whose exit-code file exists take the state it says."""
        for rec in data["cells"].values():
            if rec["state"] in ACTIVE:
                rc = read_exit_code(self.cell_dir(rec))
                if rc is not None:
                    set_state(rec, state_from_exit_code(rc), exit_code=rc)


def refresh_files(sweep_dir: str | Path, data: dict) -> None:
    """What every cell's own files say whatever launched it: attempts and MLflow run id."""
    for rec in data["cells"].values():
        cdir = Path(sweep_dir) / rec["workdir"]
        rec["attempts"] = max(rec.get("attempts", 0), count_attempts(cdir))
        rec["mlflow_run_id"] = read_run_id(cdir) or rec.get("mlflow_run_id")
