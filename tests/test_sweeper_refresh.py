"""How `refresh` turns a finished SLURM array task's exit code file into a cell state (no cluster:
squeue is replaced by an empty queue, as after the task has left it)."""

from __future__ import annotations

import pytest

from orchestrator.launchers import slurm as slurm_launcher
from orchestrator.sweeps.status import refresh


@pytest.mark.parametrize(
    "exit_file,state",
    [
        ("0\n", "done"),
        ("75\n", "preempted"),  # checkpointed and asked for a requeue
        ("75\nterminated\n", "cancelled"),  # TERM from scancel, checkpoint written in time
        ("137\nterminated\n", "cancelled"),  # TERM from scancel, then killed after KillWait
        ("137\n", "failed"),  # killed without a TERM first (e.g. out of memory)
        ("1\n", "failed"),
    ],
)
def test_exit_code_file_gives_the_cell_state(tmp_path, monkeypatch, exit_file, state):
    monkeypatch.setattr(slurm_launcher, "job_states", lambda jobs: {j: {} for j in jobs})  # left the queue
    cell = tmp_path / "cells" / "s1"
    cell.mkdir(parents=True)
    (cell / "exit_code").write_text(exit_file)
    data = {"executor": "slurm", "cells": {"s1": {"state": "running", "job_id": "12_1", "workdir": "cells/s1"}}}
    refresh(tmp_path, data)
    assert data["cells"]["s1"]["state"] == state
