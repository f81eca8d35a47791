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
    """A sweep's layout: the store runs/x/mlflow.db, the server folder runs/x/mlflow-server/."""
    d = tmp_path_factory.mktemp("sweep") / "mlflow-server"
    info = ms.start_server(d, backend_store_uri=f"sqlite:///{d.parent / 'mlflow.db'}", workers=2, timeout_s=180)
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
    assert not (d / "server.pid").exists()
    assert ms.read_server(d) == info  # kept: a later start comes back on its port
    assert cli.main(["mlflow-server", str(d), "--status"]) == 1


def _timed_cli(args: list[str], capsys) -> tuple[int, float, str]:
    t0 = time.monotonic()
    rc = cli.main(args)
    return rc, time.monotonic() - t0, capsys.readouterr().err.strip()


def test_a_stopped_server_is_named_at_once_by_ui_compare_status(server, tmp_path, capsys):
    """After `mlflow-server --stop`: ui, compare and status of the sweep fail within seconds with one
    line naming the server and the command that starts it (exit 2)."""
    import json

    d, info = server
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    ml = {"tracking_uri": info.uri, "store": info.backend_store_uri, "server_dir": str(d), "parent_run_id": None}
    (sweep / "ledger.json").write_text(json.dumps({"sweep": "s", "executor": "slurm", "cells": {}, "mlflow": ml}))
    for args in (["ui", "--sweep", str(sweep)], ["compare", str(sweep), "--no-log"], ["status", str(sweep)]):
        rc, took, err = _timed_cli(args, capsys)
        assert rc == 2 and took < 10, (args, rc, took)
        line = err.splitlines()[-1]
        assert line.startswith("error: MLflow tracking server " + info.uri) and "does not answer" in line, err
        assert f"`orchestrate mlflow-server {d} --background`" in line
    rc, took, err = _timed_cli(["ui", "--tracking-uri", info.uri], capsys)
    assert rc == 2 and took < 10 and "orchestrate mlflow-server DIR --background" in err


def test_background_restart_on_the_recorded_port_and_stop_never_signals_a_stranger(server, capsys):
    import json
    import signal
    import subprocess

    d, first = server  # stopped by test_cli_status_and_stop
    assert cli.main(["mlflow-server", str(d), "--background", "--timeout", "180"]) == 0
    assert capsys.readouterr().out.strip() == first.uri  # the same URI: running jobs reconnect
    second = ms.running_server(d)
    assert second is not None and second.pid != first.pid and second.identity["pid"] == second.pid
    # the server dies and its pid is taken by another process: --stop must leave that one alone
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record = json.loads((d / "server.json").read_text())
        (d / "server.json").write_text(json.dumps({**record, "pid": stranger.pid,
                                                   "identity": {**record["identity"], "pid": stranger.pid}}))
        assert cli.main(["mlflow-server", str(d), "--stop"]) == 0
        assert f"names pid {stranger.pid}, which is another process now" in capsys.readouterr().out
        assert stranger.poll() is None
        old = {k: v for k, v in record.items() if k != "identity"}  # a record of an older version
        (d / "server.json").write_text(json.dumps({**old, "pid": stranger.pid}))
        assert ms.stop_server(d) == "not the server" and stranger.poll() is None
        (d / "server.json").write_text(json.dumps(record))
        assert ms.stop_server(d, timeout_s=10) == "stopped"
        assert not ms._pid_alive(second.pid) and stranger.poll() is None
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()
        if ms._pid_alive(second.pid):
            os.killpg(second.pid, signal.SIGKILL)


@pytest.mark.parametrize("port", ["99999", "-1", "0", "busy"])
def test_a_bad_or_busy_port_is_one_line_before_anything_starts(tmp_path, capsys, port):
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        value = str(squatter.getsockname()[1]) if port == "busy" else port
        for mode in (["--background"], []):
            rc, took, err = _timed_cli(["mlflow-server", str(tmp_path / "m"), "--port", value, *mode], capsys)
            assert rc == 2 and took < 5 and len(err.splitlines()) == 1, (rc, took, err)
            assert ("is in use" if port == "busy" else "--port must be 1-65535") in err
    assert not (tmp_path / "m" / "server.log").exists()  # nothing was started


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


def test_process_identity_is_checked_before_any_signal():
    import signal
    import subprocess

    from common import procid

    child = subprocess.Popen(["sleep", "300"])
    try:
        me = procid.identify(child.pid)
        assert me["pid"] == child.pid and me["cmdline"] == "sleep 300" and procid.is_same(me)
        for field, value in (("start_ticks", me["start_ticks"] + 1), ("cmdline", "sleep 30"), ("boot_id", "x")):
            assert not procid.is_same({**me, field: value})
            assert not procid.signal_if_same({**me, field: value}, signal.SIGKILL) and child.poll() is None
        assert not procid.signal_if_same(None) and not procid.signal_if_same({"pid": "x"})
        assert procid.signal_if_same(me, signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM
        assert not procid.is_same(me) and not procid.signal_if_same(me)  # gone (and reaped)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.slow
def test_ui_serves_a_sweeps_sqlite_store_and_its_artifacts(server):
    """`orchestrate ui --sweep DIR` of a sweep whose server is stopped... is refused (above); on the
    sweep's SQLite store itself it starts `mlflow ui`, prints the URL and serves the artifacts the
    server wrote (beside the store, in its folder), e.g. the writers' notes/writer.txt."""
    import json
    import signal
    import sqlite3
    import subprocess
    import sys
    import urllib.request

    d, info = server
    store = info.backend_store_uri
    db = store[len("sqlite:///") :]
    run_id = sqlite3.connect(db).execute(
        "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid where t.key = 'se.cell' limit 1"
    ).fetchone()[0]
    port = ms.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "--tracking-uri", store, "--port", str(port)],
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
        assert "concurrency" in names
        with urllib.request.urlopen(f"{url}/get-artifact?path=notes/writer.txt&run_uuid={run_id}", timeout=30) as r:
            assert r.status == 200 and r.read().decode().startswith("writer ")
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


def test_ui_command_serves_the_artifacts_of_the_server_beside_the_store(server):
    d, info = server
    cmd = ms.ui_command(info.backend_store_uri)
    assert cmd[cmd.index("--artifacts-destination") + 1] == info.artifacts_destination == str(d / "artifacts")


def test_ui_of_a_tracking_server_only_prints_its_url(server, capsys):
    d, info = server
    live = ms.ensure_server_info(d, timeout_s=180)  # running again, or started on the recorded port
    try:
        assert cli.main(["ui", "--tracking-uri", live.uri + "/"]) == 0
        assert f"MLflow UI: {live.uri}" in capsys.readouterr().out
    finally:
        ms.stop_server(d, timeout_s=10)


def test_sqlite_stores_follow_the_umask(tmp_path):
    """The server's default store and a sweep's direct store: 0664 under umask 002 (SQLite alone: 0644)."""
    from orchestrator.mlflow_sweep import ensure_parent_run

    old = os.umask(0o002)
    try:
        ms._setup(tmp_path / "srv", None, None, None, None)
        ensure_parent_run(f"sqlite:///{tmp_path / 'direct' / 'mlflow.db'}", "e", "s")
    finally:
        os.umask(old)
    for db in (tmp_path / "srv" / "mlflow.db", tmp_path / "direct" / "mlflow.db"):
        assert oct(db.stat().st_mode & 0o777) == "0o664", db


def test_a_server_started_with_se_server_timing_times_log_batch_inside_the_server(tmp_path, monkeypatch):
    """The rehearsal's server (`SE_SERVER_TIMING` set): MLflow's own app behind orchestrator.mlflow_timing;
    each log_batch request's seconds land in the folder (one line a second per worker), other calls don't."""
    import json

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    timing = tmp_path / "timing"
    monkeypatch.setenv(ms.TIMING_ENV, str(timing))
    d = tmp_path / "mlflow-server"
    assert ms.server_command(backend_store_uri="sqlite:///x.db", artifacts_destination="a")[-2:] == \
        ["--app-name", "se-timed"]
    info = ms.start_server(d, backend_store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", workers=2, timeout_s=180)
    try:
        client = MlflowClient(tracking_uri=info.uri)
        rid = client.create_run(client.create_experiment("timed")).info.run_id
        for step in range(5):
            client.log_batch(rid, metrics=[Metric("train/loss_g", 1.0, 0, step)])
        client.log_metric(rid, "train/lr", 1e-3, step=0)  # not a log_batch: not timed
        deadline = time.monotonic() + 20
        seconds: list[float] = []
        while time.monotonic() < deadline and len(seconds) < 5:
            time.sleep(0.5)
            seconds = [s for p in timing.glob("log-batch-*.jsonl") for line in p.read_text().splitlines()
                       for s in json.loads(line)["s"]]
        assert len(seconds) == 5 and all(0 < s < 10 for s in seconds), seconds
        assert len(client.get_metric_history(rid, "train/loss_g")) == 5  # MLflow's app served them
    finally:
        ms.stop_server(d, timeout_s=10)
        if ms._pid_alive(info.pid):
            os.killpg(info.pid, 9)
