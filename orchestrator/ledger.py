"""The sweep ledger: ``SWEEP_DIR/ledger.json``, one record per cell, under a file lock.

Only the orchestrator writes it (jobs write files in their own cell folder instead), always as
``with Ledger(path).locked() as data: ...`` so read-modify-write is atomic across concurrent
``orchestrate`` commands (fcntl lock on ``ledger.json.lock``; atomic temp+fsync+rename write).

Cell record::

    {"index": 0, "config": "cells/rwsa-xs_s0/config.yaml", "workdir": "cells/rwsa-xs_s0",
     "values": {...}, "state": "pending", "job_id": "123_0", "job_ids": ["123_0"],
     "attempts": 0, "submissions": 1, "mlflow_run_id": null, "exit_code": null,
     "slurm_state": null, "reason": null, "updated": "2026-11-22T03:00:00Z"}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path

from common.atomic import atomic_write_text
from common.safe_names import check_name
from orchestrator.errors import UserError

STATES = ("pending", "submitted", "running", "done", "failed", "cancelled", "preempted")
FINAL_OK = "done"
RESUBMIT = ("pending", "failed", "cancelled", "preempted")
ACTIVE = ("submitted", "running")
LEDGER_FILE = "ledger.json"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_cell_record(index: int, config: str, workdir: str, values: dict) -> dict:
    return {
        "index": index, "config": config, "workdir": workdir, "values": values,
        "state": "pending", "job_id": None, "job_ids": [], "attempts": 0, "submissions": 0,
        "mlflow_run_id": None, "exit_code": None, "slurm_state": None, "reason": None,
        "updated": now(),
    }


class Ledger:
    """A sweep's ledger file. ``read()`` for a snapshot, ``locked()`` to change it."""

    def __init__(self, sweep_dir: str | Path):
        self.dir = Path(sweep_dir)
        self.path = self.dir / LEDGER_FILE
        self.lock_path = self.dir / (LEDGER_FILE + ".lock")

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise UserError(f"{self.path}: no sweep ledger here (run `orchestrate sweep FILE` first)") from None
        except ValueError as e:
            raise UserError(f"{self.path}: ledger is not valid JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
            raise UserError(f"{self.path}: ledger has no 'cells' mapping")
        for cid, rec in data["cells"].items():
            if not isinstance(rec, dict):
                raise UserError(f"{self.path}: cell {cid!r}: expected a record (mapping), got {type(rec).__name__}")
            if rec.get("state") not in STATES:
                raise UserError(f"{self.path}: cell {cid!r}: state {rec.get('state')!r} is not one of {', '.join(STATES)}")
            if not isinstance(rec.get("workdir"), str):
                raise UserError(f"{self.path}: cell {cid!r}: 'workdir' must be a folder path string")
            check_name(rec["workdir"], f"{self.path}: cell {cid!r}", "workdir", folder=True, error=UserError)
        if "mlflow" in data and not isinstance(data["mlflow"], dict):
            raise UserError(f"{self.path}: 'mlflow' must be a mapping")
        return data

    def write(self, data: dict) -> None:
        for cid, rec in data.get("cells", {}).items():
            if rec.get("state") not in STATES:
                raise ValueError(f"ledger cell {cid}: invalid state {rec.get('state')!r}")
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")

    @contextlib.contextmanager
    def locked(self, create: dict | None = None) -> Iterator[dict]:
        """Exclusive lock; yields the ledger dict (``create`` if there is none yet) and writes it
        back when the block ends without an exception."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                data = self.read() if self.exists() or create is None else create
                yield data
                data["updated"] = now()
                self.write(data)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def set_state(rec: dict, state: str, **fields) -> None:
    """Change a cell record's state (and any other fields), stamping ``updated``."""
    if state not in STATES:
        raise ValueError(f"invalid cell state {state!r}")
    rec["state"] = state
    rec.update(fields)
    rec["updated"] = now()
