"""A DDP cell on a REAL 2-node Ray cluster (ray.cluster_utils.Cluster: two raylets on this machine)
through Ray Train: 2 workers (one per node), the training process of rank 1 is killed after a
checkpoint, Ray Train restarts the group (FailureConfig) and the run resumes from the newest
checkpoint to the same weights as an uninterrupted run of the same config (training.run.spawn)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest
from conftest import two_node_cluster

from orchestrator.launchers.ray_train import read_pids
from training.checkpoint import MARKER, load_file

pytestmark = pytest.mark.slow  # 1.5 min on 2 busy cores: Ray start-up, the Ray run (~1 min), the reference


@pytest.fixture
def ray_cluster(monkeypatch):
    # the raylets (and so the workers' training processes) inherit this environment; the reference
    # run below gets the same (the plain-PyTorch scan: fastest for these tiny shapes)
    cluster = two_node_cluster(monkeypatch, {"RAY_USAGE_STATS_ENABLED": "0", "SE_SCAN_BACKEND": "torch",
                                             "MLFLOW_DISABLE_TELEMETRY": "true"})
    import ray

    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_ddp_cell_on_two_ray_nodes_resumes_after_a_worker_is_killed(ray_cluster, demo_data, tmp_path):
    import ray

    from orchestrator.sweeps.plan import build_plan
    from orchestrator.sweeps.run import run_sweep
    from orchestrator.sweeps.status import status_rows
    from training.config import load_run_config
    from training.run import spawn

    assert os.environ["SE_SCAN_BACKEND"] == "torch"
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    base = {"model.name": "rwsa-xs", "model.options": {"hidden": 8, "num_blocks": 1},
            "data.train": str(demo_data / "train"), "data.valid": str(demo_data / "valid"),
            "data.segment_samples": 1800, "data.batch_size": 2, "data.valid_limit": 1,
            "trainer.max_steps": 6, "trainer.val_every": 6, "trainer.ckpt_every": 2, "trainer.log_every": 1,
            "trainer.pesq_workers": 0, "trainer.num_threads": 1, "loss.discriminator": False}
    spec = {"name": "rt", "base": base, "grid": {"trainer.seed": [0]}, "executor": "ray",
            "resources": {"nodes": 2, "nproc": 1, "cpus_per_task": 1}}
    sweep = tmp_path / "rt.yaml"
    sweep.write_text(json.dumps(spec))
    cell = tmp_path / "runs" / "rt" / "cells" / "s0"
    killed: dict = {}

    def kill_rank1_after_a_checkpoint():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if (cell / "checkpoints" / "step-000002" / MARKER).exists() and 1 in read_pids(cell):
                killed["pid"] = read_pids(cell)[1]
                os.kill(read_pids(cell)[1], signal.SIGKILL)
                return
            time.sleep(0.2)

    t0 = time.monotonic()
    killer = threading.Thread(target=kill_rank1_after_a_checkpoint, daemon=True)
    killer.start()
    assert run_sweep(build_plan(sweep, root=tmp_path / "runs"), out=print) == 0
    killer.join(timeout=5)
    ray_s = time.monotonic() - t0
    assert killed, "the worker was never killed"
    (row,) = status_rows(tmp_path / "runs" / "rt")
    assert row["state"] == "done" and row["step"] == 6
    log0 = (cell / "logs" / "rank-0.log").read_text()
    resumed = [int(m) for m in re.findall(r"resumed from \S+ \(step (\d+)\)", log0)]
    assert resumed and min(resumed) >= 2, log0[-2000:]  # the restarted group resumed from a checkpoint, not step 0
    # the same MLflow run across the restart, world size 2
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'rt' / 'mlflow.db'}")
    run = client.get_run((cell / "mlflow_run_id").read_text().strip())
    assert run.data.tags.get("se.world_size") == "2" and run.info.status == "FINISHED"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss_g")) == 6
    # exact: the same weights as an uninterrupted 2-rank run of the same config
    ref = tmp_path / "ref"
    cfg = load_run_config(cell / "config.yaml", ["mlflow.enabled=false"])
    assert spawn(cfg, ref, 2) == 0
    final = "step-000006"
    for r in (0, 1):
        got = load_file(cell / "checkpoints" / final / f"rank-{r}.pt")["param_digest"]
        assert got == load_file(ref / "checkpoints" / final / f"rank-{r}.pt")["param_digest"]
    print(f"ray train cell, rank 1 killed after the step-2 checkpoint, resumed from step {resumed}: {ray_s:.0f} s")
