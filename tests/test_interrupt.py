"""Ctrl-C in `orchestrate sweep` (local and Ray executors): the running cell checkpoints at a step
boundary and ends `preempted` (exit 75 in its attempts.log), the command exits 130 with one line,
and running the same command again resumes the cell from that checkpoint to the end, in the same
MLflow run. Real processes, a real local Ray instance; the signal is the terminal's SIGINT, sent to
the sweep command alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_sweep

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _step(cell: Path) -> int:
    try:
        return int(json.loads((cell / "progress.json").read_text()).get("step", 0))
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])  # Ray's quick case:
# the same code path with two ranks, tests/test_ray_cells.py
def test_ctrl_c_checkpoints_the_running_cell_and_the_rerun_resumes_it(executor, demo_data, tmp_path):
    if executor == "ray":
        pytest.importorskip("ray")
    sweep = write_sweep(tmp_path, "cc", {
        "model.name": "rwsa-xs", "model.options": {"hidden": 8, "num_blocks": 1},
        "data.train": str(demo_data / "train"), "data.valid": str(demo_data / "valid"),
        "data.segment_samples": 1800, "data.batch_size": 2, "data.valid_limit": 1,
        "trainer.max_steps": STEPS, "trainer.val_every": STEPS, "trainer.ckpt_every": STEPS,
        "trainer.log_every": 1, "trainer.num_threads": 1, "loss.discriminator": False,
    }, grid={"trainer.seed": [0]}, resources={"cpus_per_task": 1})
    cmd = [sys.executable, "-m", "orchestrator.cli", "sweep", str(sweep), "--root", str(tmp_path / "runs"),
           "--executor", executor]
    cell = tmp_path / "runs" / "cc" / "cells" / "s0"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # so that only the command gets the SIGINT
    deadline = time.monotonic() + 240
    while _step(cell) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the cell did not start training"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "Traceback" not in err and "interrupted (run the same command again to resume)" in err
    stopped_at = _step(cell)
    assert 2 <= stopped_at < STEPS
    assert (cell / "checkpoints" / f"step-{stopped_at:06d}" / "COMPLETE").exists()
    assert "end rc=75" in (cell / "attempts.log").read_text()
    ledger = json.loads((tmp_path / "runs" / "cc" / "ledger.json").read_text())
    assert ledger["cells"]["s0"]["state"] == "preempted"
    run_id = (cell / "mlflow_run_id").read_text().strip()

    again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    progress = json.loads((cell / "progress.json").read_text())
    assert progress["step"] == STEPS and progress["attempt_start_step"] == stopped_at  # resumed, not restarted
    assert (cell / "mlflow_run_id").read_text().strip() == run_id
    starts = [ln for ln in (cell / "attempts.log").read_text().splitlines() if " start " in ln]
    assert len(starts) == 2
    if executor == "ray":  # a one-process cell is a one-worker Ray Train run: its progress reached Ray
        reported = json.loads((cell / ".ray-ranks" / "reported.json").read_text())
        assert reported["step"] == STEPS and "train/loss_g" in reported
