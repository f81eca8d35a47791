"""Evaluation after training inside the job (training.evaluation.final_eval via training.run), on the run a real
2-step `orchestrate train` wrote (conftest `trained_run`, copied with its MLflow store per test)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from common.progress import shown_state
from training.preempt import EXIT_PREEMPTED

ROOT = Path(__file__).resolve().parents[1]


def copy_run(trained_run, tmp_path: Path) -> tuple[Path, str, Path, str]:
    """(run dir, tracking URI, corpus, MLflow run id) of a private copy of the trained run."""
    src, _uri, corpus = trained_run
    shutil.copytree(src.parent, tmp_path / "copy")
    run = tmp_path / "copy" / "run"
    return run, f"sqlite:///{tmp_path / 'copy' / 'mlflow.db'}", corpus, (run / "mlflow_run_id").read_text().strip()


def rerun_cmd(run: Path, uri: str, *testsets: Path) -> list[str]:
    ts = ",".join(str(t) for t in testsets)
    return [sys.executable, "-m", "training.run", "--workdir", str(run), f"mlflow.tracking_uri={uri}",
            f"eval.testsets=[{ts}]", "eval.num_workers=1", "eval.metrics=[pesq,si_sdr]"]


def history(uri: str, run_id: str, key: str) -> list:
    return mlflow.MlflowClient(uri).get_metric_history(run_id, key)


def test_finished_run_evaluates_best_once_without_training(trained_run, tmp_path):
    run, uri, corpus, run_id = copy_run(trained_run, tmp_path)
    train_loss = len(history(uri, run_id, "train/loss_g")) if history(uri, run_id, "train/loss_g") else None
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for _ in range(2):  # the second run finds everything done: no training, no second log
        p = subprocess.run(rerun_cmd(run, uri, corpus / "test"), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
    name = f"{corpus.name}/test"
    record = json.loads((run / "eval" / "final.json").read_text())
    assert record["done"] and record["step"] == 2 and record["checkpoint"] == "checkpoints/best"
    assert record["testsets"][str(corpus / "test")] == {"name": name, "n": 3}
    n = history(uri, run_id, f"eval/{name}/n")
    assert [(m.step, m.value) for m in n] == [(2, 3.0)]
    summary = json.loads((run / "eval" / f"{name.replace('/', '_')}.json").read_text())
    pesq = history(uri, run_id, f"eval/{name}/enhanced/pesq")
    assert len(pesq) == 1 and pesq[0].value == pytest.approx(summary["enhanced"]["pesq"])
    assert 1.0 <= summary["noisy"]["pesq"] <= 4.6
    client = mlflow.MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {f"eval/{corpus.name}_test.csv", f"eval/{corpus.name}_test.json"} <= arts
    assert train_loss is None or len(history(uri, run_id, "train/loss_g")) == train_loss  # nothing retrained
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "step-000001", "step-000002"]


def test_preempted_during_evaluation_finishes_after_requeue(trained_run, tmp_path):
    """SIGUSR1 in the middle of the second test set: exit 75, the MLflow run KILLED, the first test set
    recorded; the requeued run evaluates only the second, each metric logged exactly once."""
    run, uri, corpus, run_id = copy_run(trained_run, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = rerun_cmd(run, uri, corpus / "test", corpus / "valid")
    p = subprocess.Popen(cmd, cwd=ROOT, env={**env, "SE_FAULTS": "eval.utterance=pause:1.5"}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    record = run / "eval" / "final.json"
    deadline = time.time() + 240
    while not (record.is_file() and len(json.loads(record.read_text())["testsets"]) == 1):
        assert p.poll() is None and time.time() < deadline, "evaluation did not reach the second test set"
        time.sleep(0.2)
    # in the middle of the evaluation: what `orchestrate status` shows for a running cell at this point
    prog = json.loads((run / "progress.json").read_text())
    assert prog["state"] == "evaluating" and prog["step"] == prog["max_steps"] == 2
    assert shown_state("running", prog["state"]) == "running (evaluating)"
    os.killpg(p.pid, signal.SIGUSR1)  # the whole process group, as SLURM signals every process of a step
    _, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "evaluation stopped" in err
    assert json.loads((run / "progress.json").read_text())["state"] == "preempted"
    client = mlflow.MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"  # compare ignores it until evaluation is complete
    assert not history(uri, run_id, f"eval/{corpus.name}/valid/n")
    q = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-3000:]
    done = json.loads(record.read_text())
    assert done["done"] and len(done["testsets"]) == 2
    # the cut-short test set: its per-file record holds each file once (none redone), and the log says
    # how far it was (the progress line of a job whose stderr is a file)
    lines = (run / "eval" / f"{corpus.name}_valid.files.jsonl").read_text().splitlines()
    keys = [json.loads(x)["key"] for x in lines[1:]]
    assert len(keys) == len(set(keys)) == 2, lines
    assert re.search(rf"evaluate {corpus.name}/valid: files 2/2  [\d.]+ audio s/s  [\d.]+ files/s  ETA 0m00s",
                     q.stderr), q.stderr[-3000:]
    for split in ("test", "valid"):
        assert [m.step for m in history(uri, run_id, f"eval/{corpus.name}/{split}/n")] == [2]
        assert len(history(uri, run_id, f"eval/{corpus.name}/{split}/enhanced/si_sdr")) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    assert json.loads((run / "progress.json").read_text())["state"] == "done"
