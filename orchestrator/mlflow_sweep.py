"""The sweep's MLflow parent run (one per sweep; every cell's run is its child)."""

from __future__ import annotations

import os
from pathlib import Path

SQLITE = "sqlite:///"


def absolute_tracking_uri(uri: str | None, default_dir: Path) -> str:
    """``sqlite:///rel.db`` → ``sqlite:////abs/rel.db`` (jobs may run elsewhere); None → the sweep's
    own ``SWEEP_DIR/mlflow.db``; other URIs unchanged."""
    if not uri:
        return SQLITE + str((default_dir / "mlflow.db").resolve())
    if uri.startswith(SQLITE) and not uri[len(SQLITE):].startswith("/"):
        return SQLITE + os.path.abspath(uri[len(SQLITE):])
    return uri


def ensure_parent_run(tracking_uri: str, experiment: str, sweep_name: str, run_id: str | None = None) -> str:
    """The parent run's id: ``run_id`` when it still exists, else a new run in ``experiment``
    (created if needed) tagged ``se.kind=sweep``, ``se.sweep=<name>``."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith(SQLITE):
        Path(tracking_uri[len(SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    if run_id:
        try:
            client.get_run(run_id)
            return run_id
        except MlflowException:
            pass
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        exp_id = exp.experiment_id
    else:  # a local SQLite store keeps its artifacts beside the database, not in the current folder
        location = None
        if tracking_uri.startswith(SQLITE):
            location = (Path(tracking_uri[len(SQLITE):]).parent / "mlartifacts").resolve().as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=location)
    run = client.create_run(
        exp_id,
        run_name=sweep_name,
        tags={"se.kind": "sweep", "se.sweep": sweep_name},
    )
    return run.info.run_id


def finish_parent_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the parent run terminated (when every cell is done)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if client.get_run(run_id).info.status != status:
        client.set_terminated(run_id, status=status)
