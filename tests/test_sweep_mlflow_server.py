"""A SLURM sweep starts its own MLflow tracking server and hands its URI to the cells.

`sbatch`/`squeue` are replaced by recorders (the real-cluster path is tests/test_slurm_sweep.py);
the server is a real `mlflow server` over the sweep's SQLite store, and the "cells" log through the
training's own tracker with the config the submitted job array points at.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from orchestrator import mlflow_server as ms
from orchestrator.errors import UserError
from orchestrator.launchers import slurm as slurm_launcher
from orchestrator.mlflow_sweep import live_tracking_uri, wants_server
from orchestrator.sweeps.plan import build_plan
from orchestrator.sweeps.run import describe, run_sweep
from orchestrator.sweeps.spec import load_sweep

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def write_sweep(tmp_path: Path, name: str, executor: str = "slurm", **extra) -> Path:
    spec = {"name": name, "base": {"model.name": "rwsa-xs", "trainer.max_steps": 2},
            "grid": {"trainer.seed": [0, 1]}, "profile": "local", "executor": executor, **extra}
    p = tmp_path / f"{name}.yaml"
    p.write_text(json.dumps(spec))  # JSON is YAML
    return p


@pytest.fixture
def sbatch(monkeypatch):
    """Record submitted arrays (their cell folders) instead of calling sbatch; every task stays
    PENDING for the scheduler."""
    submitted: list[list[Path]] = []

    def map_array(ex, fn, cell_dirs, *rest):
        submitted.append([Path(d) for d in cell_dirs])
        job = 1000 + len(submitted)
        return [f"{job}_{i}" for i in range(len(cell_dirs))], "#!/bin/bash\n"

    monkeypatch.setattr(slurm_launcher, "map_array", map_array)
    monkeypatch.setattr(slurm_launcher, "job_states", lambda jobs: {j: {"State": "PENDING"} for j in jobs})
    return submitted


@pytest.fixture
def servers(tmp_path):
    """Stop every server the test left under tmp_path."""
    yield
    for f in tmp_path.rglob(ms.SERVER_JSON):
        info = ms.read_server(f.parent)
        ms.stop_server(f.parent, timeout_s=10)
        if info and ms._pid_alive(info.pid):
            os.killpg(info.pid, signal.SIGKILL)


def sweep(path: Path, root: Path, overrides: list[str] | None = None, out=lambda _: None) -> int:
    """``orchestrate sweep PATH --root ROOT [overrides]`` as the library runs it."""
    return run_sweep(build_plan(path, root=root, overrides=overrides), out=out)


def script_cells(cells: list[Path]) -> list[Path]:
    """The cell folders a submitted job array runs."""
    return cells


def ledger(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "ledger.json").read_text())


def log_like_a_cell(cell_dir: Path) -> str:
    """What a job does with its config: open its MLflow run with the training's tracker, log."""
    from training.config import load_run_config
    from training.tracking import build_tracker

    cfg = load_run_config(cell_dir / "config.yaml", [])
    tracker = build_tracker(cfg.mlflow, cell_dir, rank=0, run_id=None,
                            params={"trainer.seed": cfg.trainer.seed}, tags=dict(cfg.mlflow.tags))
    tracker.log({"train/loss_g": 1.5}, step=1)
    (cell_dir / "note.txt").write_text("hello\n")
    tracker.log_artifact(cell_dir / "note.txt")
    tracker.close()
    return tracker.run_id


def test_slurm_sweep_starts_a_server_and_cells_log_into_it(tmp_path, sbatch, servers):
    from mlflow.tracking import MlflowClient

    p = write_sweep(tmp_path, "srv")
    root = tmp_path / "runs"
    out: list[str] = []
    assert sweep(p, root, out=out.append) == 0
    sweep_dir = (root / "srv").resolve()
    folder = sweep_dir / "mlflow-server"
    info = ms.running_server(folder)
    assert info is not None, f"no tracking server in {folder}"
    assert info.uri.startswith("http://127.0.0.1:")  # slurm/local.yaml: mlflow_host 127.0.0.1
    store = f"sqlite:///{sweep_dir / 'mlflow.db'}"
    assert info.backend_store_uri == store
    ml = ledger(sweep_dir)["mlflow"]
    assert ml["tracking_uri"] == info.uri and ml["store"] == store and ml["server_dir"] == str(folder)
    assert any(info.uri in line for line in out)
    assert live_tracking_uri(ml) == info.uri

    (script,) = sbatch
    cells = script_cells(script)
    assert [c.name for c in cells] == ["s0", "s1"]
    run_ids = [log_like_a_cell(c) for c in cells]

    # the runs landed in the sweep's own store (read directly here), children of the parent run
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("srv")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{ml['parent_run_id']}'")
    assert sorted(r.info.run_id for r in children) == sorted(run_ids)
    assert all(r.data.metrics["train/loss_g"] == 1.5 and r.info.status == "FINISHED" for r in children)
    assert len(list((folder / "artifacts").rglob("note.txt"))) == 2  # uploaded through the server

    # the same command again (resume) reuses the running server
    out.clear()
    assert sweep(p, root, out=out.append) == 0
    assert ms.read_server(folder).pid == info.pid and ledger(sweep_dir)["mlflow"]["tracking_uri"] == info.uri
    assert "0 to submit" in "\n".join(out) and len(sbatch) == 1

    # a sweep pointed at a server (here on the command line) uses it and starts none
    given = write_sweep(tmp_path, "given")
    assert sweep(given, root, [f"mlflow.tracking_uri={info.uri}"], out=out.append) == 0
    gdir = (root / "given").resolve()
    assert not (gdir / "mlflow-server").exists() and ledger(gdir)["mlflow"]["tracking_uri"] == info.uri
    run_id = log_like_a_cell(script_cells(sbatch[-1])[0])
    run = MlflowClient(tracking_uri=info.uri).get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == ledger(gdir)["mlflow"]["parent_run_id"]


def _kill(info: ms.ServerInfo) -> None:
    """A crash: the server's process group dies, server.json stays behind."""
    os.killpg(info.pid, signal.SIGKILL)
    assert ms._wait_group_gone(info.pid, 20)  # the uvicorn workers too: they hold the port


def test_dead_server_comes_back_and_started_cells_follow_it(tmp_path, sbatch, servers):
    p = write_sweep(tmp_path, "crash")
    root = tmp_path / "runs"
    assert sweep(p, root) == 0
    sweep_dir = (root / "crash").resolve()
    folder = sweep_dir / "mlflow-server"
    first = ms.read_server(folder)
    _kill(first)
    # restarted on its recorded port: same URI, the submitted cells' configs stay valid
    assert sweep(p, root) == 0
    second = ms.running_server(folder)
    assert second is not None and second.pid != first.pid and second.uri == first.uri
    _kill(second)
    # its port taken meanwhile: another port; the started cells take the new URI (same store)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", second.port))
        squatter.listen()
        assert sweep(p, root) == 0
    third = ms.running_server(folder)
    assert third is not None and third.uri != second.uri
    # a ledger pointing at a dead server: `status` closes the parent run through the store itself
    dead = {"tracking_uri": second.uri, "store": third.backend_store_uri}
    assert live_tracking_uri(dead) == third.backend_store_uri
    assert ledger(sweep_dir)["mlflow"]["tracking_uri"] == third.uri
    for cell in script_cells(sbatch[0]):
        assert f"tracking_uri: {third.uri}" in (cell / "config.yaml").read_text()
    assert len(sbatch) == 1  # nothing resubmitted: the cells are still queued


def test_local_ray_and_opted_out_sweeps_keep_their_store(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    local = build_plan(write_sweep(tmp_path, "loc", executor="local"), root=root).tracking
    assert local.uri == f"sqlite:///{(root / 'loc' / 'mlflow.db').resolve()}" and local.server_dir is None
    off = build_plan(write_sweep(tmp_path, "off", mlflow={"server": False}), root=root).tracking
    assert off.uri.startswith("sqlite:///") and off.server_dir is None
    assert not list(root.rglob("mlflow-server"))
    assert wants_server("sqlite:////x.db", None, "slurm") and not wants_server("sqlite:////x.db", None, "ray")
    assert wants_server("sqlite:////x.db", True, "local") and not wants_server("http://h:1", True, "slurm")
    assert not wants_server("file:///tmp/mlruns", None, "slurm")
    with pytest.raises(UserError, match="needs a database store"):
        wants_server("file:///tmp/mlruns", True, "local")
    with pytest.raises(UserError, match=r"mlflow.server: expected true, false or null"):
        load_sweep(write_sweep(tmp_path, "bad", mlflow={"server": "yes"}))


def test_slurm_without_a_reachable_address_is_refused_before_any_work(tmp_path, monkeypatch):
    prof = tmp_path / "far_profile.yaml"
    prof.write_text("name: far\ndefaults: {time_min: 30}\n")  # no mlflow_host
    monkeypatch.setattr(ms, "reachable_host", lambda: None)  # the host name resolves to loopback
    p = write_sweep(tmp_path, "far", profile=str(prof))
    with pytest.raises(UserError, match="set mlflow_host in the cluster profile"):
        sweep(p, tmp_path / "runs")
    assert not (tmp_path / "runs" / "far").exists()  # nothing written
    # a dry run starts nothing and says what the real run will do
    assert any(line.startswith("# mlflow: tracking server in") for line in describe(build_plan(p, root=tmp_path / "runs")))


def test_plan_and_sweep_say_when_the_store_cannot_hold_the_mlflow_rate(tmp_path, sbatch, servers, monkeypatch):
    """`orchestrate plan` compares the sweep's MLflow rate with its store's measured ceiling
    (planner.STORE_CEILING_POINTS_S, benchmarks/bench_mlflow_rate.py) and names the setting that fits;
    a SLURM sweep says it before anything is submitted."""
    from orchestrator import planner
    from orchestrator.commands.plan import cost_text

    rwsa = str(Path(__file__).resolve().parents[1] / "sweeps" / "rwsa_sizes.yaml")
    sqlite, pg = planner.STORE_CEILING_POINTS_S["sqlite"], planner.STORE_CEILING_POINTS_S["postgresql"]
    assert sqlite > 0 and pg > 0
    planned = cost_text(build_plan(rwsa, root=tmp_path / "runs"))
    rate = float(planned.split("MLflow ")[-1].split(" points/h")[0].replace(",", "")) / 3600
    fits = rate <= planner.MLFLOW_HEADROOM * sqlite
    assert ("of a sqlite store's measured ceiling" in planned) == (not fits) and fits  # rwsa_sizes fits
    heavy = cost_text(build_plan(rwsa, overrides=["trainer.log_every=1"], root=tmp_path / "runs"))  # 10x the windows
    note = heavy.splitlines()[-1]
    assert note.startswith("MLflow: ") and "of a sqlite store's measured ceiling" in note and "trainer.log_every x" in note
    factor = int(note.split("trainer.log_every x")[1].split()[0])
    assert factor >= 2
    # a SLURM sweep: the same line before the job array goes out
    monkeypatch.setitem(planner.STORE_CEILING_POINTS_S, "sqlite", 1e-3)
    out: list[str] = []
    assert sweep(write_sweep(tmp_path, "busy"), tmp_path / "runs", out=out.append) == 0
    line = next(i for i, s in enumerate(out) if "sqlite store's measured ceiling" in s)
    assert line < next(i for i, s in enumerate(out) if "submitted" in s) and len(sbatch) == 1
