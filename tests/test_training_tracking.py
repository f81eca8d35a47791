"""MLflow tracker: buffered until flush, re-opened by id, no duplicated steps after a resume."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

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
    tr.flush()
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
