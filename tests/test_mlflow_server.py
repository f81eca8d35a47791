"""A real `mlflow server` (SQLite store, 2 uvicorn workers) under 16 concurrent writer processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator import mlflow_server as ms

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

N_WRITERS = 16
N_POINTS = 50  # per writer: 25 through log_batch, 25 through log_metric, distinct steps


def _writer(uri: str, experiment_id: str, parent_id: str, index: int, barrier, out_q) -> None:
    """One 'job': a child run under the parent, 50 metric points, params, a small artifact."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    barrier.wait(timeout=120)  # every process has imported mlflow: now they all write at once
    run = client.create_run(
        experiment_id,
        run_name=f"cell-{index}",
        tags={"mlflow.parentRunId": parent_id, "se.kind": "train", "se.cell": str(index)},
    )
    rid = run.info.run_id
    now = int(time.time() * 1000)
    half = N_POINTS // 2
    client.log_batch(
        rid,
        metrics=[Metric("train/loss_g", float(index * 1000 + s), now, s) for s in range(half)],
        params=[Param("trainer.seed", str(index)), Param("model.name", "rwsa-xs")],
    )
    for s in range(half, N_POINTS):
        client.log_metric(rid, "train/loss_g", float(index * 1000 + s), timestamp=now, step=s)
    client.log_text(rid, f"writer {index}\n", "notes/writer.txt")
    client.set_terminated(rid)
    out_q.put((index, rid))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow")
    info = ms.start_server(d, workers=2, timeout_s=180)
    try:
        yield d, info
    finally:
        ms.stop_server(d, timeout_s=10)
        if ms._pid_alive(info.pid):  # belt and braces: never leave a server behind
            os.killpg(info.pid, 9)


def test_start_writes_server_json_and_health(server):
    d, info = server
    assert (d / "server.json").exists()
    assert int((d / "server.pid").read_text()) == info.pid
    assert info.uri.startswith("http://127.0.0.1:")
    assert ms.is_healthy(info.uri)
    assert ms.running_server(d) == info
    assert ms.ensure_server(d) == info.uri  # reused, not restarted
    assert ms.read_server(d).pid == info.pid


def test_16_concurrent_writers_lose_nothing(server):
    from mlflow.tracking import MlflowClient

    _, info = server
    client = MlflowClient(tracking_uri=info.uri)
    exp_id = client.create_experiment("concurrency")
    parent = client.create_run(exp_id, run_name="sweep", tags={"se.kind": "sweep", "se.sweep": "conc"})
    parent_id = parent.info.run_id

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(N_WRITERS)
    out_q = ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(info.uri, exp_id, parent_id, i, barrier, out_q))
        for i in range(N_WRITERS)
    ]
    for p in procs:
        p.start()
    results = {}
    deadline = time.monotonic() + 240
    while len(results) < N_WRITERS and time.monotonic() < deadline:
        try:
            i, rid = out_q.get(timeout=max(0.1, deadline - time.monotonic()))
            results[i] = rid
        except Exception:
            break
    for p in procs:
        p.join(timeout=max(1.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * N_WRITERS
    assert sorted(results) == list(range(N_WRITERS))

    children = client.search_runs(
        [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000
    )
    assert sorted(r.info.run_id for r in children) == sorted(results.values())
    total = 0
    for i, rid in results.items():
        run = client.get_run(rid)
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.params == {"trainer.seed": str(i), "model.name": "rwsa-xs"}
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(rid, "train/loss_g")
        assert sorted((m.step, m.value) for m in history) == [
            (s, float(i * 1000 + s)) for s in range(N_POINTS)
        ]
        total += len(history)
        assert [a.path for a in client.list_artifacts(rid, "notes")] == ["notes/writer.txt"]
        local = client.download_artifacts(rid, "notes/writer.txt")
        assert Path(local).read_text() == f"writer {i}\n"
    assert total == N_WRITERS * N_POINTS


def test_artifacts_are_written_by_the_server(server):
    d, info = server
    # --serve-artifacts: jobs upload through HTTP, the server writes under DIR/artifacts
    files = list((d / "artifacts").rglob("writer.txt"))
    assert len(files) == N_WRITERS


def test_cli_status_and_stop(server, capsys):
    d, info = server
    assert cli.main(["mlflow-server", str(d), "--status"]) == 0
    assert info.uri in capsys.readouterr().out
    assert cli.main(["mlflow-server", str(d), "--stop"]) == 0
    deadline = time.monotonic() + 20
    while ms._pid_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ms._pid_alive(info.pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(info.pid, 0)  # the uvicorn workers went with it
    assert not ms.is_healthy(info.uri)
    assert not (d / "server.json").exists() and not (d / "server.pid").exists()
    assert cli.main(["mlflow-server", str(d), "--status"]) == 1


def test_profile_mlflow_host_is_read_defensively(tmp_path):
    cases = {  # profile text -> host
        "name: c\nmlflow_host: 10.1.2.3\n": "10.1.2.3",
        "name: c\n": "127.0.0.1",  # no key
        "mlflow_host: [unclosed\n": "127.0.0.1",  # not YAML
        "- a\n- b\n": "127.0.0.1",  # not a mapping
    }
    for i, (text, host) in enumerate(cases.items()):
        path = tmp_path / f"p{i}.yaml"
        path.write_text(text)
        assert ms.profile_mlflow_host(str(path)) == host, text
    assert ms.profile_mlflow_host(str(tmp_path / "missing.yaml")) == "127.0.0.1"
    assert ms.profile_mlflow_host("no-such-profile") == "127.0.0.1"
    assert ms.profile_mlflow_host(None) == "127.0.0.1"


def test_server_command_shape():
    cmd = ms.server_command(
        backend_store_uri="sqlite:////x/m.db", artifacts_destination="/x/a", host="login1.example.org", port=5055
    )
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert "--serve-artifacts" in cmd
    assert cmd[cmd.index("--workers") + 1] == "2"
    assert cmd[cmd.index("--host") + 1] == "login1.example.org"
    assert "login1.example.org:*" in cmd[cmd.index("--allowed-hosts") + 1].split(",")
    private = ms.server_command(backend_store_uri="sqlite:////x/m.db", artifacts_destination="/x/a", host="10.0.0.5")
    assert "--allowed-hosts" not in private  # MLflow admits private addresses by default
    with pytest.raises(ValueError, match="workers"):
        ms.server_command(backend_store_uri="sqlite:////x/m.db", artifacts_destination="/x/a", workers=1)
    with pytest.raises(ValueError, match="backend-store-uri"):
        ms.start_server("/tmp/unused-mlflow-dir", backend_store_uri="file:///tmp/mlruns")


@pytest.mark.slow
def test_ui_serves_a_sweeps_sqlite_store(tmp_path):
    """`orchestrate ui --sweep DIR` starts `mlflow ui` on the ledger's store and prints the URL."""
    import json
    import signal
    import subprocess
    import sys
    import urllib.request

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("ui-demo", artifact_location=(tmp_path / "a").as_uri())
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "ledger.json").write_text(json.dumps({"sweep": "s", "mlflow": {"tracking_uri": uri}, "cells": {}}))
    port = ms.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "--sweep", str(sweep), "--port", str(port)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        ms.wait_healthy(url, timeout_s=180, proc=proc)
        req = urllib.request.Request(
            f"{url}/api/2.0/mlflow/experiments/search", data=b'{"max_results": 10}',
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as r:
            names = {e["name"] for e in json.loads(r.read())["experiments"]}
        assert "ui-demo" in names
        deadline = time.monotonic() + 30
        line = ""
        while "MLflow UI:" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        assert f"MLflow UI: {url}" in line
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_ui_of_a_tracking_server_only_prints_its_url(capsys):
    assert cli.main(["ui", "--tracking-uri", "http://login1:5055/"]) == 0
    assert "MLflow UI: http://login1:5055" in capsys.readouterr().out
