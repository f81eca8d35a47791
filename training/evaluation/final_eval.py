"""Evaluation after training, inside the job, and the MLflow logging of any evaluation summary.

``evaluate_after_training`` is called by ``training.run.train`` on rank 0 once a fit finished (exit 0)
when ``eval.testsets`` is not empty: the run's ``checkpoints/best`` (else its newest complete step)
is evaluated on every test set, on the job's own device. Outputs, per test set (``training.evaluation.evaluate``):
``WORKDIR/eval/<name>.csv`` and ``<name>.json``; on the run's MLflow run the metrics
``eval/<name>/{noisy,enhanced}/<metric>`` (+ ``eval/<name>/n``, ``eval/<name>/failed/<metric>``) at the
checkpoint's step, and both files as artifacts under ``eval/``.

Completion record, ``WORKDIR/eval/final.json`` (atomic, rewritten after each test set is logged)::

    {"checkpoint": "checkpoints/best", "step": 60, "testsets": {"data/demo/test": {"name": "demo/test", "n": 16}},
     "done": true}

Preemption: SIGUSR1/SIGUSR2/SIGTERM or the SLURM deadline is checked before each utterance; the
evaluation stops, the MLflow run is marked KILLED and the run exits 75. The requeued job resumes at
``max_steps`` (no training step is run again) and evaluates only the test sets not in the record, and of a
test set cut short only the files not in its per-file record (``eval/<name>.files.jsonl``,
`training.evaluation.file_record`);
a test set whose ``eval/<name>/n`` is already in MLflow at that step is not logged twice.

Rehearsal (`trainer.rehearse_step_s` > 0, benchmarks/rehearse.py): the model is not run; each utterance's
"enhanced" output is its noisy input, so the files, metric names and points are the real ones at the cost of
the metrics alone.

Fault point (`common.faults`): ``eval.utterance``, before each utterance (before the stop check).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from common import faults
from common.rundir import EVAL_DIR, PROGRESS_FILE

log = logging.getLogger(__name__)

RECORD = "final.json"


class EvaluationStopped(Exception):
    """A stop request (signal, time limit) arrived during the evaluation."""


def log_summary(tracking_uri: str, run_id: str, summary: dict, out_dir: Path, step: int, *,
                once: bool = False) -> bool:
    """Log an evaluation summary (``training.evaluation.evaluate`` format) to MLflow run ``run_id`` at ``step``:
    metrics in one batch, then the CSV/JSON files as artifacts under ``eval/``. With ``once`` the
    metrics are skipped when ``eval/<name>/n`` is already logged at ``step``. Returns True when the
    metrics were logged."""
    from mlflow.entities import Metric

    from training.evaluation.evaluate import _file_name, mlflow_metrics
    from training.tracking import mlflow_client

    client = mlflow_client(tracking_uri)  # every call gives up within training.tracking.TIMEOUT_S
    metrics = mlflow_metrics(summary)
    n_key = f"eval/{summary['testset']}/n"
    logged = False
    if not (once and any(m.step == step for m in client.get_metric_history(run_id, n_key))):
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        logged = True
    stem = _file_name(summary["testset"])
    for suffix in ("csv", "json"):
        client.log_artifact(run_id, str(Path(out_dir) / f"{stem}.{suffix}"), artifact_path="eval")
    return logged


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _update_progress(workdir: Path, state: str) -> None:
    """Set ``state`` in ``WORKDIR/progress.json`` (written by the trainer), keeping its other fields."""
    from common.atomic import atomic_write_text
    from common.progress import read_progress

    path = workdir / PROGRESS_FILE
    data = read_progress(path)
    if data:
        data["state"] = state
        atomic_write_text(path, json.dumps(data) + "\n")


def evaluate_after_training(cfg, workdir: str | Path, device, stop) -> int:
    """Evaluate the finished run in ``workdir`` on ``cfg.eval.testsets`` (see the module docstring).

    ``stop``: a ``training.preempt.Preemption`` (its ``local_request()`` is polled between utterances).
    Returns 0 when every test set is evaluated and logged, 75 when stopped, 2 for a bad test set."""
    from common.atomic import atomic_write_text
    from training.evaluation.evaluate import evaluate_testset
    from training.evaluation.file_record import evaluation_identity
    from training.evaluation.inference import load_generator
    from training.evaluation.protocol import enhancer_for
    from training.evaluation.testsets import TestSetError, open_testset
    from training.preempt import EXIT_PREEMPTED

    workdir = Path(workdir)
    out_dir = workdir / EVAL_DIR
    record_path = out_dir / RECORD
    loaded = load_generator(workdir, device=device)
    ckpt = str(loaded.checkpoint.relative_to(workdir)) if loaded.checkpoint.is_relative_to(workdir) \
        else str(loaded.checkpoint)
    record = _read_record(record_path)
    if record.get("checkpoint") != ckpt or record.get("step") != loaded.step:
        record = {"checkpoint": ckpt, "step": loaded.step, "testsets": {}, "done": False}
    todo = [p for p in cfg.eval.testsets if p not in record["testsets"]]
    if not todo:
        return 0
    try:
        opened = [(p, open_testset(p)) for p in todo]
    except TestSetError as e:
        log.error("error: eval.testsets: %s", e)
        return 2
    run_id = loaded.mlflow_run_id if cfg.mlflow.enabled else None
    enhancer = enhancer_for(loaded.model, cfg, device=device)  # eval.mode: as validation and `orchestrate evaluate`
    rehearse = cfg.trainer.rehearse_step_s > 0

    def enhance(noisy):
        faults.point("eval.utterance")
        reason = stop.local_request()
        if reason:
            raise EvaluationStopped(reason)
        return noisy if rehearse else enhancer.enhance(noisy)

    _update_progress(workdir, "evaluating")
    for path, ts in opened:
        log.info("evaluating %s (step %d) on %s (%d files) on %s, mode %s", ckpt, loaded.step, ts.name, len(ts),
                 device, enhancer.mode)
        try:
            summary = evaluate_testset(enhance, ts, out_dir, metrics=cfg.eval.metrics,
                                       num_workers=cfg.eval.num_workers, progress=False,
                                       identity=evaluation_identity(loaded.checkpoint, loaded.step, enhancer, ts.path))
        except EvaluationStopped as e:
            log.warning("evaluation stopped on %s: %s; exit %d to be requeued", ts.name, e, EXIT_PREEMPTED)
            _update_progress(workdir, "preempted")
            if run_id:
                import mlflow

                mlflow.MlflowClient(cfg.mlflow.tracking_uri).set_terminated(run_id, status="KILLED")
            return EXIT_PREEMPTED
        if run_id:
            log_summary(cfg.mlflow.tracking_uri, run_id, summary, out_dir, loaded.step, once=True)
        record["testsets"][path] = {"name": ts.name, "n": summary["n"]}
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
        enh = ", ".join(f"{k} {v:.3f}" for k, v in summary["enhanced"].items() if v is not None)
        log.info("eval %s: %d files, enhanced %s", ts.name, summary["n"], enh)
    record["done"] = True
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    if run_id:
        import mlflow

        mlflow.MlflowClient(cfg.mlflow.tracking_uri).set_terminated(run_id, status="FINISHED")
    _update_progress(workdir, "done")
    return 0
