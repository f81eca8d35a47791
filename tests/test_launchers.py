"""The launch layer without a cluster: the registry, and what one SLURM task does
(`slurm_task.run_cell`: the real `python -m training.run` as a child, exit code of every rank
gathered by rank 0, attempts log, SIGTERM recorded). The real-cluster behaviour (requeue,
preemption, scancel, DDP) is in tests/test_slurm_sweep.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import launchers
from orchestrator.launchers import base
from orchestrator.launchers.local import LocalLauncher
from orchestrator.launchers.ray import RayLauncher

REPO = Path(__file__).resolve().parent.parent


def test_registry_and_ledger_executor(tmp_path):
    assert isinstance(launchers.get("local", tmp_path), LocalLauncher)
    assert isinstance(launchers.get("ray", tmp_path), RayLauncher)
    slurm = launchers.get("slurm", tmp_path, job_name="j")
    assert slurm.name == "slurm" and not slurm.blocking and slurm.folder == tmp_path / "logs"
    with pytest.raises(ValueError, match="unknown executor 'pbs'"):
        launchers.get("pbs", tmp_path)
    assert launchers.executor_of({"executor": "ray", "cells": {}}) == "ray"
    assert launchers.executor_of({"cells": {"a": {"job_id": "local:12"}}}) == "local"
    assert launchers.executor_of({"cells": {"a": {"job_id": "12_3"}}}) == "slurm"


def _task(cell: Path, rank: int, ntasks: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SLURM_JOB_ID": "41", "SLURM_ARRAY_JOB_ID": "40",
           "SLURM_ARRAY_TASK_ID": "1", "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(ntasks),
           "SLURM_RESTART_COUNT": "0", "SLURM_JOB_NODELIST": "node1"}
    code = f"from orchestrator.launchers.slurm_task import run_cell; run_cell({str(cell)!r}, {{'X_RANK': '$SLURM_PROCID'}})"
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)


def test_run_cell_gathers_every_rank_and_records_sigterm(tmp_path):
    cell = tmp_path / "cells" / "c"
    cell.mkdir(parents=True)
    (cell / "config.yaml").write_text("trainer:\n  max_steps: ten\n")  # training.run: exit 2 (bad config)
    procs = [_task(cell, r, 2) for r in (0, 1)]
    assert [p.wait(timeout=120) for p in procs] == [2, 2]
    assert (cell / base.EXIT_CODE_FILE).read_text() == "2\n" and not base.was_terminated(cell)
    lines = (cell / base.ATTEMPTS_FILE).read_text().splitlines()
    assert len(lines) == 2 and " start 40_1 restart=0 nodes=node1" in lines[0] and lines[1].endswith("end 40_1 rc=2")
    assert not (cell / ".ranks").joinpath("40_1.0").exists()  # rank files cleaned up
    # scancel: SIGTERM reaches the task (and, relayed, its training process): recorded for refresh
    p = _task(cell, 0, 1)
    deadline = time.monotonic() + 60
    while (cell / base.ATTEMPTS_FILE).read_text().count(" start ") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=120)
    assert rc != 0 and base.was_terminated(cell) and base.read_exit_code(cell) == rc


def test_state_watcher_reads_sacct_and_squeue_formats(tmp_path):
    """submitit's parser over both answers: sacct (clusters with accounting) and the squeue fallback."""
    from orchestrator.launchers.slurm import read_states

    sacct = "JobID|State|NodeList\n12_[2-3%4]|PENDING|None\n12_0|COMPLETED|node1\n12_0.batch|COMPLETED|node1\n" \
            "12_1|CANCELLED by 0|node2\n"
    info = read_states(sacct)
    assert {k: v["State"] for k, v in info.items()} == {"12_2": "PENDING", "12_3": "PENDING", "12_0": "COMPLETED",
                                                        "12_1": "CANCELLED by 0"}
    squeue = "JOBID|STATE|REASON\n12_0|RUNNING|None\n12_1|PENDING|Priority\n"
    info = read_states(squeue.encode())
    assert info["12_1"] == {"JobID": "12_1", "State": "PENDING", "Reason": "Priority"}
    assert info["12_0"]["State"] == "RUNNING"


def test_slurm_refresh_maps_scheduler_states(tmp_path, monkeypatch):
    from orchestrator.launchers import slurm

    answers = {"1_0": {"State": "RUNNING"}, "1_1": {"State": "PENDING", "Reason": "Priority"},
               "1_2": {"State": "CANCELLED by 0"}, "1_3": {"State": "TIMEOUT"}, "1_4": {}}
    monkeypatch.setattr(slurm, "job_states", lambda jobs: {j: answers[j] for j in jobs})
    cells = {}
    for i in range(5):
        (tmp_path / f"c{i}").mkdir()
        cells[f"c{i}"] = {"state": "submitted", "job_id": f"1_{i}", "workdir": f"c{i}"}
    base.write_exit_code(tmp_path / "c4", 0)  # left the queue (no accounting) with its exit code
    data = {"executor": "slurm", "cells": cells}
    slurm.SlurmLauncher(tmp_path).refresh(data)
    assert {k: v["state"] for k, v in cells.items()} == {"c0": "running", "c1": "submitted", "c2": "cancelled",
                                                         "c3": "failed", "c4": "done"}
    assert cells["c1"]["reason"] == "Priority"
    monkeypatch.setattr(slurm, "job_states", lambda jobs: None)  # the scheduler did not answer
    cells["c0"]["state"] = "running"
    slurm.SlurmLauncher(tmp_path).refresh(data)
    assert cells["c0"]["state"] == "running"


LIGHT_PROBE = r"""
import json, sys
class Blocked:  # what the SLURM task wrapper must never import (the training process imports them itself)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "omegaconf", "yaml", "numpy", "submitit", "ray", "mlflow"):
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Blocked())
from orchestrator.launchers.slurm_task import run_cell
try:
    rc = run_cell(sys.argv[1])
except SystemExit as e:
    rc = e.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "omegaconf", "yaml", "numpy", "submitit"})
print(json.dumps({"rc": rc, "heavy": heavy}))
"""


def test_slurm_task_wrapper_runs_without_omegaconf_or_torch(tmp_path):
    """The wrapper each SLURM task runs (`slurm_task.run_cell`), imported and run with torch, omegaconf,
    yaml, numpy and submitit blocked: it starts the cell's training process (here a config refused
    before any work: exit 2) and writes the exit code and attempts.log as on a cluster."""
    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "config.yaml").write_text("trainer: {max_steps: zero}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run([sys.executable, "-c", LIGHT_PROBE, str(cell)], cwd=REPO, capture_output=True, text=True,
                       timeout=180, env={**env, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"rc": 2, "heavy": []}
    assert base.read_exit_code(cell) == 2 and base.count_attempts(cell) == 1
    assert "end 0 rc=2" in (cell / "attempts.log").read_text()
