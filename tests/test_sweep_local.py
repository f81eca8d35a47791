"""`orchestrate sweep --executor local` (and ray) with the real training on a tiny demo corpus:
completion, status, resume of a failed cell only (MLflow parent/child runs: tests/test_journeys.py,
on the journey's local sweep)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import write_sweep

from orchestrator.cli import main as cli_main
from orchestrator.sweeps.status import status_rows

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def sweep_file(tmp_path: Path, demo: Path, name: str, **extra) -> Path:
    base = {
        "model.name": "rwsa-xs", "model.options": {"hidden": 8, "num_blocks": 1},
        "data.train": str(demo / "train"), "data.valid": str(demo / "valid"),
        "data.segment_samples": 1800, "data.batch_size": 2, "data.valid_limit": 1,
        "trainer.max_steps": 3, "trainer.val_every": 3, "trainer.ckpt_every": 3, "trainer.log_every": 1,
        "trainer.pesq_workers": 1, "trainer.num_threads": 1, "loss.discriminator": False,
    }
    return write_sweep(tmp_path, name, base, **{"resources": {"max_parallel": 2}, **extra})


def test_local_sweep_runs_resumes_only_failed_cells(tmp_path, demo_data, capsys):
    # fails inside the job (a model option the model does not take), past the pre-submit checks
    bad = {"match": {"trainer.seed": 1}, "set": {"model.options": {"hidden": 8, "num_blocks": 1, "no_such": 1}}}
    p = sweep_file(tmp_path, demo_data, "loc", overrides=[bad])
    root = str(tmp_path / "runs")
    assert cli_main(["sweep", str(p), "--root", root]) == 1  # one cell failed
    rows = {r["cell"]: r for r in status_rows(tmp_path / "runs" / "loc")}
    assert rows["s0"]["state"] == "done" and rows["s0"]["step"] == 3 and rows["s0"]["mlflow_run_id"]
    assert rows["s1"]["state"] == "failed"
    ledger = json.loads((tmp_path / "runs/loc/ledger.json").read_text())
    assert ledger["cells"]["s1"]["exit_code"] != 0
    # the same command again: nothing to redo for s0, s1 fails again (its config is unchanged)
    capsys.readouterr()
    assert cli_main(["sweep", str(p), "--root", root]) == 1
    out = capsys.readouterr().out
    assert "1 done" in out and "1 to submit" in out and "started s0" not in out and "started s1" in out
    ledger = json.loads((tmp_path / "runs/loc/ledger.json").read_text())
    assert ledger["cells"]["s0"]["submissions"] == 1 and ledger["cells"]["s1"]["submissions"] == 2
    # changing a started cell's config is refused (exit 2), naming the cell
    capsys.readouterr()
    assert cli_main(["sweep", str(p), "--root", root, "trainer.max_steps=5"]) == 2
    assert "cell s0 already ran with a different config" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_executor_runs_a_cell(tmp_path, demo_data, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    p = sweep_file(tmp_path, demo_data, "ray1", grid={"trainer.seed": [0]}, resources={"cpus_per_task": 1})
    try:
        assert cli_main(["sweep", str(p), "--root", str(tmp_path / "runs"), "--executor", "ray"]) == 0
    finally:
        import ray

        ray.shutdown()
    (row,) = status_rows(tmp_path / "runs" / "ray1")
    assert row["state"] == "done" and row["step"] == 3 and row["job_id"].startswith("ray:")


@pytest.mark.slow
def test_local_executor_ddp_with_nproc(tmp_path, demo_data, capsys):
    from mlflow.tracking import MlflowClient

    p = sweep_file(tmp_path, demo_data, "lddp", grid={"trainer.seed": [0]}, resources={"nproc": 2})
    assert cli_main(["sweep", str(p), "--root", str(tmp_path / "runs")]) == 0
    assert "-m torch.distributed.run --standalone --nproc_per_node=2 -m training.run" in capsys.readouterr().out
    (row,) = status_rows(tmp_path / "runs" / "lddp")
    assert row["state"] == "done" and row["step"] == 3
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs/lddp/mlflow.db'}")
    run = client.get_run(row["mlflow_run_id"])
    assert run.data.tags.get("se.world_size") == "2"
