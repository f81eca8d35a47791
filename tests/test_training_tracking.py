"""MLflow tracker: buffered until flush, re-opened by id, no duplicated steps after a resume."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402

from training.config import MlflowConfig  # noqa: E402
from training.tracking import RUN_ID_FILE, NullTracker, build_tracker  # noqa: E402


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_buffered_flush_reopen_and_dedupe(tmp_path):
    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t", tags={"se.sweep": "s"})
    work = tmp_path / "run"
    tr = build_tracker(cfg, work, rank=0, run_id=None, params={"a.b": "1"}, tags={"se.model": "m"})
    run_id = tr.run_id
    assert (work / RUN_ID_FILE).read_text().strip() == run_id
    for s in (1, 2, 3):
        tr.log({"train/loss": s * 1.0}, s)
    assert tr.client.get_metric_history(run_id, "train/loss") == []  # buffered
    pending = tr.pending()  # what a checkpoint at step 3 stores
    tr.flush(strict=True)  # handed to the sender and written
    tr.log({"train/loss": 4.0}, 4)  # logged after the checkpoint, lost by the "preemption"
    # resume: a new tracker re-opens the run from the workdir file, re-flushes the checkpoint's pending
    tr2 = build_tracker(cfg, work, rank=0, run_id=None, params={}, tags={})
    assert tr2.run_id == run_id
    tr2.restore_pending(pending)
    tr2.log({"train/loss": 4.0}, 4)
    tr2.close()
    assert _history(tr2.client, run_id, "train/loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    run = tr2.client.get_run(run_id)
    assert run.data.params == {"a.b": "1"} and run.data.tags["se.model"] == "m"
    assert run.info.status == "FINISHED"


def test_nested_child_run_and_non_zero_rank(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = build_tracker(MlflowConfig(tracking_uri=uri, experiment="sweep"), tmp_path / "p", rank=0,
                           run_id=None, params={}, tags={})
    child_cfg = MlflowConfig(tracking_uri=uri, experiment="ignored", parent_run_id=parent.run_id)
    child = build_tracker(child_cfg, tmp_path / "c", rank=0, run_id=None, params={}, tags={})
    info = child.client.get_run(child.run_id)
    assert info.data.tags["mlflow.parentRunId"] == parent.run_id
    assert info.info.experiment_id == parent.client.get_run(parent.run_id).info.experiment_id
    assert isinstance(build_tracker(child_cfg, tmp_path / "c", rank=1, run_id=None, params={}, tags={}), NullTracker)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def test_evaluate_says_in_one_line_before_any_work_what_mlflow_cannot_take(trained_run, tmp_path, capsys):
    """`orchestrate evaluate` with MLflow on: a tracking server that does not answer, a test-set name
    MLflow cannot take as a metric name, a run missing from the store: exit 2, one line with the
    choice (retry / --no-mlflow), no report written; the MLflow check itself takes seconds, not minutes."""
    import time

    from orchestrator.cli import main
    from training.tracking import TIMEOUT_S, TrackingError, mlflow_client, require_tracking

    run, uri, corpus = trained_run
    dead = f"http://127.0.0.1:{_closed_port()}"
    run_id = (run / "mlflow_run_id").read_text().strip()
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match="does not answer"):
        require_tracking(dead, run_id=run_id, opt_out="--no-mlflow")
    assert time.monotonic() - t0 < TIMEOUT_S
    other = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow_client(other).search_experiments()  # a store without the run
    cases = {
        ("--tracking-uri", dead): f"MLflow tracking server {dead} does not answer (connection refused): retry when "
                                  "it is back, or add --no-mlflow",
        ("--name", "a*b?"): "MLflow metric name 'eval/a*b?/n' is not allowed",
        ("--tracking-uri", other): f"MLflow run {run_id} is not in the store at {other}",
        ("--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"): "none.db: no such database file",
    }
    capsys.readouterr()  # MLflow's own lines about creating `other`
    for extra, message in cases.items():
        out = tmp_path / f"ev{len(extra[1])}-{extra[1][-3:]}"
        assert main(["evaluate", str(run), "--testset", str(corpus / "test"), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert "--no-mlflow" in err[0] and not out.exists()
    assert require_tracking(uri, run_id=run_id, keys=["eval/test/n"]) is None  # the run's own store: fine
    assert not (tmp_path / "none.db").exists()
