"""What every launcher shares: the cell command, the exit-code contract, the cell's own files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from training.configtools import atomic_write_text

EXIT_DONE = 0
EXIT_BAD_CONFIG = 2
EXIT_PREEMPTED = 75  # == training.preempt.EXIT_PREEMPTED (EX_TEMPFAIL)
EXIT_CODE_FILE = "exit_code"  # written by the job wrapper after the run ends
ATTEMPTS_FILE = "attempts.log"  # one "start"/"end" line per job attempt
PROGRESS_FILE = "progress.json"  # written by training: {step, max_steps, best_pesq, state}
RUN_ID_FILE = "mlflow_run_id"  # written by training


def cell_command(cell_dir: str | Path, python: str | None = None, nproc: int = 1) -> list[str]:
    """``python -m training.run --config CELL/config.yaml --workdir CELL`` (torchrun when nproc > 1)."""
    py = python or sys.executable
    cell_dir = str(cell_dir)
    tail = ["--config", os.path.join(cell_dir, "config.yaml"), "--workdir", cell_dir]
    if nproc > 1:
        return [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "training.run", *tail]
    return [py, "-m", "training.run", *tail]


def state_from_exit_code(rc: int) -> str:
    """0 → done, 75 → preempted, anything else (2 = bad config, signals) → failed."""
    if rc == EXIT_DONE:
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
    """Job attempts that started (lines beginning with a timestamp and ' start ')."""
    try:
        lines = (Path(cell_dir) / ATTEMPTS_FILE).read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if " start " in line)


def read_progress(cell_dir: str | Path) -> dict:
    """The trainer's progress.json, or {} when absent/partial/garbled (read defensively)."""
    try:
        data = json.loads((Path(cell_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_run_id(cell_dir: str | Path) -> str | None:
    try:
        text = (Path(cell_dir) / RUN_ID_FILE).read_text().strip()
    except OSError:
        return None
    return text or None
