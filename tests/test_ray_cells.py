"""`orchestrate sweep --executor ray` on a REAL two-node Ray cluster (ray.cluster_utils.Cluster: two
raylets on this machine, one CPU each unless said), the command run as a user runs it (its own
process, RAY_ADDRESS naming the cluster):

- a DDP cell (2 workers, one per node, gloo on CPU) stopped by Ctrl-C or by SIGTERM to the command:
  both ranks checkpoint at the same step, the ledger ends the cell `preempted`, its MLflow run is
  KILLED, the command exits 130; the rerun resumes from that step in the same MLflow run, and the
  cell's progress reached Ray (`ray.train.report`: the last reported metrics hold the last step and
  the losses);
- a DDP cell and a one-process cell run at the same time (placement by Ray's resources).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import two_node_cluster, write_sweep

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10
BASE = {"model.name": "rwsa-xs", "model.options": {"hidden": 8, "num_blocks": 1},
        "data.segment_samples": 1800, "data.batch_size": 2, "data.valid_limit": 1,
        "trainer.max_steps": STEPS, "trainer.val_every": STEPS, "trainer.ckpt_every": STEPS,
        "trainer.log_every": 1, "trainer.num_threads": 1, "trainer.pesq_workers": 0, "loss.discriminator": False}
ENV = {"PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true",
       "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture
def ray_cluster(monkeypatch):
    cluster = two_node_cluster(monkeypatch, ENV)
    yield cluster
    cluster.shutdown()


@pytest.fixture
def roomy_ray_cluster(monkeypatch):
    cluster = two_node_cluster(monkeypatch, ENV, head_cpus=2)
    yield cluster
    cluster.shutdown()


def _step(cell: Path) -> int:
    try:
        return int(json.loads((cell / "progress.json").read_text()).get("step", 0))
    except (OSError, ValueError):
        return 0


def _sweep_cmd(sweep: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "sweep", str(sweep), "--root", str(root), "--executor", "ray"]


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, id="ctrl-c"),
                                 pytest.param(signal.SIGTERM, id="sigterm", marks=pytest.mark.slow)])
def test_stopped_ddp_cell_is_preempted_and_the_rerun_resumes_it(sig, ray_cluster, demo_data, tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.launchers.ray_train import PID_DIR, REPORTED_FILE

    t0 = time.monotonic()
    sweep = write_sweep(tmp_path, "rd", {**BASE, "data.train": str(demo_data / "train"),
                                         "data.valid": str(demo_data / "valid")},
                        grid={"trainer.seed": [0]}, executor="ray",
                        resources={"nodes": 2, "nproc": 1, "cpus_per_task": 1})
    runs = tmp_path / "runs"
    cell = runs / "rd" / "cells" / "s0"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    proc = subprocess.Popen(_sweep_cmd(sweep, runs), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # the signal: to it alone
    deadline = time.monotonic() + 240
    while _step(cell) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the cell did not start training"
        time.sleep(0.2)
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, out[-2000:] + err[-2000:] + (cell / "launcher.log").read_text()[-3000:]
    assert "interrupted (run the same command again to resume)" in err and "Traceback" not in err
    stopped_at = _step(cell)
    assert 2 <= stopped_at < STEPS
    ckpt = cell / "checkpoints" / f"step-{stopped_at:06d}"
    assert (ckpt / "COMPLETE").exists() and (ckpt / "rank-0.pt").exists() and (ckpt / "rank-1.pt").exists()
    assert "end rc=75" in (cell / "attempts.log").read_text(), (cell / "launcher.log").read_text()[-3000:]
    ledger = json.loads((runs / "rd" / "ledger.json").read_text())
    assert ledger["cells"]["s0"]["state"] == "preempted"
    run_id = (cell / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'rd' / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "KILLED"
    stop_s = time.monotonic() - t0

    again = subprocess.run(_sweep_cmd(sweep, runs), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    progress = json.loads((cell / "progress.json").read_text())
    assert progress["step"] == STEPS and progress["attempt_start_step"] == stopped_at  # resumed, not restarted
    assert "resumed from" in (cell / "logs" / "rank-0.log").read_text()
    assert (cell / "mlflow_run_id").read_text().strip() == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags.get("se.world_size") == "2"
    # the progress reached Ray: the last metrics reported by the workers (the fit's Result.metrics)
    reported = json.loads((cell / PID_DIR / REPORTED_FILE).read_text())
    assert reported["step"] == STEPS and reported["max_steps"] == STEPS
    assert "train/loss_g" in reported, sorted(reported)
    print(f"ray DDP cell, {signal.Signals(sig).name} at step {stopped_at}: stopped in {stop_s:.0f} s, "
          f"resumed to the end in {time.monotonic() - t0 - stop_s:.0f} s")


def _attempt_span(cell: Path) -> tuple[float, float]:
    """(start, end) unix seconds of the cell's (only) attempt, from its attempts.log."""
    stamps = {}
    for line in (cell / "attempts.log").read_text().splitlines():
        when, what = line.split(" ", 1)
        stamps[what.split()[0]] = datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").timestamp()
    return stamps["start"], stamps["end"]


@pytest.mark.slow
def test_a_ddp_cell_and_a_one_process_cell_run_side_by_side(roomy_ray_cluster, demo_data, tmp_path):
    sweep = write_sweep(tmp_path, "sb", {**BASE, "data.train": str(demo_data / "train"),
                                         "data.valid": str(demo_data / "valid")},
                        grid={"launcher.nodes": [2, 1]}, executor="ray",
                        resources={"nproc": 1, "cpus_per_task": 1, "max_parallel": 2})
    runs = tmp_path / "runs"
    env = {**os.environ, "RAY_ADDRESS": roomy_ray_cluster.address}
    t0 = time.monotonic()
    done = subprocess.run(_sweep_cmd(sweep, runs), cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    cells = sorted((runs / "sb" / "cells").iterdir())
    assert len(cells) == 2
    (s1, e1), (s2, e2) = (_attempt_span(c) for c in cells)
    overlap = min(e1, e2) - max(s1, s2)
    assert overlap > 0, (s1, e1, s2, e2)
    assert len([c for c in cells if (c / "logs" / "rank-1.log").exists()]) == 1  # one of them is the DDP cell
    for c in cells:  # both reported their progress to Ray
        assert json.loads((c / ".ray-ranks" / "reported.json").read_text())["step"] == STEPS
    print(f"two cells side by side on Ray: overlap {overlap:.0f} s, sweep {time.monotonic() - t0:.0f} s")
