"""`orchestrate sweep` against a REAL SLURM (munged + slurmctld + two slurmd on this machine),
submitted through submitit (orchestrator.launchers.slurm).

Real training (`python -m training.run`) of a tiny RWSA-MambaUNet XS on a tiny demo corpus:
a 2-cell sweep to completion with MLflow child runs, a 2-node gloo DDP job, a real preemption
(a high-PriorityTier partition requeues the job) that resumes from its checkpoint under the same
MLflow run, and `scancel` of one cell followed by a rerun that resubmits only that cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, slurm_available

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent

_reason = slurm_available()
if _reason:
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture(autouse=True)
def stop_mlflow_servers(tmp_path):
    """Every slurm sweep starts its MLflow tracking server (SWEEP_DIR/mlflow-server): stop them."""
    yield
    from orchestrator import mlflow_server as ms

    for f in tmp_path.rglob(ms.SERVER_JSON):
        ms.stop_server(f.parent, timeout_s=10)




def tiny_base(demo: Path, max_steps: int) -> dict:
    return {
        "model.name": "rwsa-xs", "model.options": {"hidden": 8, "num_blocks": 1},
        "data.train": str(demo / "train"), "data.valid": str(demo / "valid"),
        "data.segment_samples": 1800, "data.batch_size": 2, "data.valid_limit": 1,
        "trainer.max_steps": max_steps, "trainer.val_every": max_steps, "trainer.ckpt_every": 2,
        "trainer.log_every": 1, "trainer.pesq_workers": 1, "trainer.num_threads": 1,
        "loss.discriminator": False,
    }


def write_sweep(tmp_path: Path, name: str, base: dict, grid: dict, **extra) -> Path:
    spec = {"name": name, "base": base, "grid": grid, "profile": "local", "executor": "slurm", **extra}
    p = tmp_path / f"{name}.yaml"
    p.write_text(json.dumps(spec))  # JSON is YAML
    return p


def orchestrate(cluster: SlurmCluster, *args: str) -> str:
    env = dict(cluster.env, MLFLOW_DISABLE_TELEMETRY="true")
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"orchestrate {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def status(sweep_dir: Path) -> dict[str, dict]:
    from orchestrator.sweeps.status import status_rows

    return {r["cell"]: r for r in status_rows(sweep_dir)}


# Waits are generous: on a loaded 2-core CI machine a tiny job's start-up (imports, kernel cache)
# alone can take a minute. Only the time bound scales; every condition stays as it is.
WAIT_SCALE = float(os.environ.get("SE_TEST_WAIT_SCALE", "2.5"))


def wait_for(cluster, sweep_dir: Path, cond, timeout_s: float, what: str) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s * WAIT_SCALE
    problem = f"timed out waiting for {what}"
    while time.monotonic() < deadline:
        rows = status(sweep_dir)
        try:
            if cond(rows):
                return rows
        except AssertionError as e:
            problem = f"while waiting for {what}: {e}"
            break
        time.sleep(1.0)
    logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((sweep_dir / "logs").glob("*.out")))
    raise AssertionError(f"{problem}: {rows}\n{logs}\n{cluster.log_tail(15)}")


def all_done(rows) -> bool:
    bad = [r for r in rows.values() if r["state"] in ("failed", "cancelled")]
    assert not bad, f"cells ended {[(r['cell'], r['state']) for r in bad]}"
    return all(r["state"] == "done" for r in rows.values())


def mlflow_runs(sweep_dir: Path, parent: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(sweep_dir.name)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    return client, runs


def ledger(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "ledger.json").read_text())


def test_two_cell_sweep_completes_with_mlflow_runs(cluster, demo_data, tmp_path):
    sweep = write_sweep(tmp_path, "two", tiny_base(demo_data, 2), {"trainer.seed": [0, 1]})
    dry = orchestrate(cluster, "sweep", str(sweep), "--root", str(tmp_path / "runs"), "--dry-run")
    out = orchestrate(cluster, "sweep", str(sweep), "--root", str(tmp_path / "runs"))
    sweep_dir = tmp_path / "runs" / "two"
    assert "submitted job array" in out and "sweep id: two" in out and f"orchestrate status {sweep_dir}" in out
    # --dry-run printed exactly what submitit submitted: one array, both cells, pickled tasks
    submitted = (sweep_dir / "slurm" / "submit-000.sbatch").read_text()
    assert dry[dry.index("#!/bin/bash"):] == submitted + "\n" and "#SBATCH --array=0-1%2" in submitted
    assert "submitit.core._submit" in submitted and len(list((sweep_dir / "logs").glob("*_submitted.pkl"))) == 2
    rows = wait_for(cluster, sweep_dir, all_done, 240, "both cells done")
    assert [(r["step"], r["max_steps"]) for r in rows.values()] == [(2, 2), (2, 2)]
    assert all(r["attempts"] == 1 and r["job_id"] for r in rows.values())
    table = orchestrate(cluster, "status", str(sweep_dir))
    assert table.count(" done ") == 2 and "2 done" in table
    parent = ledger(sweep_dir)["mlflow"]["parent_run_id"]
    # the jobs logged through the sweep's own tracking server, into SWEEP_DIR/mlflow.db
    server = json.loads((sweep_dir / "mlflow-server" / "server.json").read_text())
    assert ledger(sweep_dir)["mlflow"]["tracking_uri"] == server["uri"] and server["uri"].startswith("http://")
    assert all(f"tracking_uri: {server['uri']}" in (sweep_dir / "cells" / c / "config.yaml").read_text()
               for c in ("s0", "s1"))
    client, runs = mlflow_runs(sweep_dir, parent)
    assert sorted(r.info.run_name for r in runs) == ["s0", "s1"]
    assert {r.info.run_id for r in runs} == {rows["s0"]["mlflow_run_id"], rows["s1"]["mlflow_run_id"]}
    for r in runs:
        assert r.info.status == "FINISHED"
        assert "val/pesq" in r.data.metrics and 1.0 <= r.data.metrics["val/pesq"] <= 4.7
        assert max(m.step for m in client.get_metric_history(r.info.run_id, "train/loss_g")) == 2
    assert client.get_run(parent).info.status == "FINISHED"  # every cell done → parent closed
    # rerunning the finished sweep submits nothing
    again = orchestrate(cluster, "sweep", str(sweep), "--root", str(tmp_path / "runs"))
    assert "2 done" in again and "0 to submit" in again and "submitted job array" not in again


def test_two_node_gloo_ddp(cluster, demo_data, tmp_path):
    sweep = write_sweep(tmp_path, "ddp", tiny_base(demo_data, 2), {"trainer.seed": [0]},
                        resources={"nodes": 2, "nproc": 1, "cpus_per_task": 1})
    orchestrate(cluster, "sweep", str(sweep), "--root", str(tmp_path / "runs"))
    sweep_dir = tmp_path / "runs" / "ddp"
    script = next((sweep_dir / "slurm").glob("*.sbatch")).read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    rows = wait_for(cluster, sweep_dir, all_done, 240, "the 2-node cell done")
    assert rows["s0"]["step"] == 2
    attempts = (sweep_dir / "cells" / "s0" / "attempts.log").read_text()
    assert "nodes=node[1-2]" in attempts
    client, (run,) = mlflow_runs(sweep_dir, ledger(sweep_dir)["mlflow"]["parent_run_id"])
    assert run.data.tags.get("se.world_size") == "2"


def test_preemption_requeues_and_resumes_same_mlflow_run(cluster, demo_data, tmp_path):
    max_steps = 6
    sweep = write_sweep(tmp_path, "pre", tiny_base(demo_data, max_steps), {"trainer.seed": [0]})
    orchestrate(cluster, "sweep", str(sweep), "--root", str(tmp_path / "runs"))
    sweep_dir = tmp_path / "runs" / "pre"
    cell = sweep_dir / "cells" / "s0"
    wait_for(cluster, sweep_dir, lambda r: (r["s0"]["step"] or 0) >= 2, 240, "training under way")
    run_id = (cell / "mlflow_run_id").read_text().strip()
    # a job in the high-PriorityTier partition needs every CPU: SLURM signals (USR2), then requeues ours
    urgent = cluster.run("sbatch", "--parsable", "-p", "urgent", "-N2", "--ntasks-per-node=2",
                         "-o", str(tmp_path / "urgent.out"), "--wrap", "sleep 2").strip()
    wait_for(cluster, sweep_dir, lambda r: r["s0"]["attempts"] >= 2 or r["s0"]["state"] == "done", 240,
             "the requeued job to start again")
    rows = wait_for(cluster, sweep_dir, all_done, 240, "the preempted cell to finish")
    assert rows["s0"]["step"] == max_steps and rows["s0"]["attempts"] == 2
    attempts = (cell / "attempts.log").read_text()
    assert "rc=75" in attempts and "restart=1" in attempts and attempts.strip().endswith("rc=0")
    assert (cell / "mlflow_run_id").read_text().strip() == run_id == rows["s0"]["mlflow_run_id"]
    client, runs = mlflow_runs(sweep_dir, ledger(sweep_dir)["mlflow"]["parent_run_id"])
    assert [r.info.run_id for r in runs] == [run_id]
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss_g")]
    assert max(steps) == max_steps and min(steps) == 1
    assert urgent and "(Preempted)" not in attempts


def test_scancel_one_cell_then_rerun_resubmits_only_it(cluster, demo_data, tmp_path):
    base = tiny_base(demo_data, 2)
    sweep = write_sweep(tmp_path, "canc", base, {"trainer.seed": [0, 1]},
                        overrides=[{"match": {"trainer.seed": 1}, "set": {"trainer.max_steps": 400}}])
    root = str(tmp_path / "runs")
    orchestrate(cluster, "sweep", str(sweep), "--root", root)
    sweep_dir = tmp_path / "runs" / "canc"
    wait_for(cluster, sweep_dir, lambda r: r["s0"]["state"] == "done" and (r["s1"]["step"] or 0) >= 2, 240,
             "s0 done and s1 under way")
    job = ledger(sweep_dir)["cells"]["s1"]["job_id"]
    cluster.run("scancel", job)
    rows = wait_for(cluster, sweep_dir, lambda r: r["s1"]["state"] in ("cancelled", "failed"), 60, "s1 cancelled")
    assert rows["s1"]["state"] == "cancelled" and rows["s0"]["state"] == "done"
    out = orchestrate(cluster, "sweep", str(sweep), "--root", root)
    assert "1 done" in out and "1 to submit" in out and "(1 cells: s1)" in out
    led = ledger(sweep_dir)["cells"]
    assert len(led["s0"]["job_ids"]) == 1 and len(led["s1"]["job_ids"]) == 2 and led["s1"]["job_ids"][0] == job
    assert led["s1"]["state"] == "submitted"
    orchestrate(cluster, "cancel", str(sweep_dir), "s1")  # no need to train 400 steps
    assert ledger(sweep_dir)["cells"]["s1"]["state"] == "cancelled"


@pytest.mark.slow
def test_time_limit_signal_chains_through_a_requeue(cluster, demo_data, tmp_path):
    """The job's own USR2 (what `--signal=USR2@N` sends before the time limit): the run checkpoints,
    exits 75, the wrapper runs `scontrol requeue` itself, and the next attempt finishes the run."""
    sweep = write_sweep(tmp_path, "chain", tiny_base(demo_data, 4), {"trainer.seed": [0]})
    orchestrate(cluster, "sweep", str(sweep), "--root", str(tmp_path / "runs"))
    sweep_dir = tmp_path / "runs" / "chain"
    wait_for(cluster, sweep_dir, lambda r: (r["s0"]["step"] or 0) >= 2, 240, "training under way")
    task = ledger(sweep_dir)["cells"]["s0"]["job_id"]
    cluster.run("scancel", "--signal=USR2", task)  # to the job steps, like --signal without B:
    rows = wait_for(cluster, sweep_dir, all_done, 300, "the requeued run to finish")
    assert rows["s0"]["step"] == 4 and rows["s0"]["attempts"] == 2
    out = next((sweep_dir / "logs").glob("*_0_log.out")).read_text()
    assert f"requeueing {task}" in out
    assert ledger(sweep_dir)["cells"]["s0"]["job_ids"] == [task]  # requeued, not resubmitted


def test_max_array_size_is_the_clusters(cluster):
    """Without the profile's max_array_size, sweeps split at what the cluster's controller says."""
    from orchestrator.launchers import slurm
    from orchestrator.profiles import ClusterProfile

    said = cluster.run("scontrol", "show", "config")
    slurm._cluster_max_array_size.cache_clear()
    try:
        assert slurm.max_array_size(ClusterProfile()) == slurm.parse_max_array_size(said) == 1001  # SLURM's default
    finally:
        slurm._cluster_max_array_size.cache_clear()


def _attempt_spans(cell: Path) -> list[tuple[str, str]]:
    """(start, end) timestamps of each attempt in a cell's attempts.log."""
    starts, ends = [], []
    for line in (cell / "attempts.log").read_text().splitlines():
        stamp, word = line.split()[:2]
        (starts if word == "start" else ends).append(stamp)
    return list(zip(starts, ends))


@pytest.mark.slow  # ~2.5 min on a busy machine: three cells one after another; CI checks the text (test_sweep.py)
def test_max_parallel_holds_across_arrays_on_the_cluster(cluster, demo_data, tmp_path):
    """`resources.max_parallel: 1` on a 3-cell sweep whose arrays hold at most 2 tasks (the profile's
    max_array_size): two arrays, the second waiting for the first; never more than one cell runs,
    though the cluster has room for all three (2 nodes x 2 CPUs, 1 CPU a cell)."""
    profile = tmp_path / "small.yaml"
    profile.write_text((REPO / "slurm" / "local.yaml").read_text() + "max_array_size: 2\n")
    sweep = write_sweep(tmp_path, "lim", tiny_base(demo_data, 2), {"trainer.seed": [0, 1, 2]},
                        profile=str(profile), resources={"max_parallel": 1, "cpus_per_task": 1})
    out = orchestrate(cluster, "sweep", str(sweep), "--root", str(tmp_path / "runs"))
    sweep_dir = tmp_path / "runs" / "lim"
    assert out.count("submitted job array") == 2, out
    first, second = sorted((sweep_dir / "slurm").glob("submit-*.sbatch"))
    array = ledger(sweep_dir)["cells"]["s0"]["job_id"].split("_")[0]
    assert "#SBATCH --array=0-1%1" in first.read_text()
    assert f"#SBATCH --dependency=afterany:{array}" in second.read_text()
    jobs = {rec["job_id"] for rec in ledger(sweep_dir)["cells"].values()}
    most = 0
    deadline = time.monotonic() + 360 * WAIT_SCALE
    while time.monotonic() < deadline:
        running = cluster.run("squeue", "-h", "-r", "-t", "RUNNING", "-o", "%i").split()
        most = max(most, len(jobs & set(running)))
        if all(r["state"] == "done" for r in status(sweep_dir).values()):
            break
        assert not any(r["state"] in ("failed", "cancelled") for r in status(sweep_dir).values()), status(sweep_dir)
        time.sleep(0.5)
    assert all(r["state"] == "done" for r in status(sweep_dir).values()), status(sweep_dir)
    assert most == 1
    spans = sorted(span for c in ("s0", "s1", "s2") for span in _attempt_spans(sweep_dir / "cells" / c))
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # one after another
