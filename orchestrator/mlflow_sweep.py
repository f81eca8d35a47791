"""The sweep's MLflow store, tracking server and parent run (one per sweep; every cell's run is
its child).

A SLURM sweep's jobs log through one ``mlflow server`` (``orchestrator.mlflow_server``) over the
sweep's store instead of writing the SQLite file themselves: :func:`ensure_sweep_server` starts it
(or finds it running) in ``<db folder>/<db name>-server/``, by default ``SWEEP_DIR/mlflow-server/``
over ``SWEEP_DIR/mlflow.db``. A store shared by several sweeps thus gets one server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import UserError

SQLITE = "sqlite:///"
HTTP = ("http://", "https://")
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # the stores `mlflow server` may front


def absolute_tracking_uri(uri: str | None, default_dir: Path) -> str:
    """``sqlite:///rel.db`` → ``sqlite:////abs/rel.db`` (jobs may run elsewhere); None → the sweep's
    own ``SWEEP_DIR/mlflow.db``; other URIs unchanged."""
    if not uri:
        return SQLITE + str((default_dir / "mlflow.db").resolve())
    if uri.startswith(SQLITE) and not uri[len(SQLITE):].startswith("/"):
        return SQLITE + os.path.abspath(uri[len(SQLITE):])
    return uri


@contextlib.contextmanager
def store_lock(tracking_uri: str, sweep_dir: Path | None) -> Iterator[None]:
    """Exclusive lock around a store's first use and a parent run's creation: beside a SQLite file
    (``<db>.lock``, shared by every sweep writing that store), else in ``sweep_dir``. Two sweep commands
    started at once thus never create the SQLite schema concurrently, nor two parent runs."""
    if tracking_uri.startswith(SQLITE):
        lock_path = Path(tracking_uri[len(SQLITE):] + ".lock")
    elif sweep_dir is not None:
        lock_path = Path(sweep_dir) / "mlflow-parent.lock"
    else:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_parent_run(tracking_uri: str, experiment: str, sweep_name: str, run_id: str | None = None,
                      *, sweep_dir: Path | None = None) -> str:
    """The parent run's id: ``run_id`` when it still exists, else the unfinished parent run another
    command created for the same sweep folder (tag ``se.sweep_dir``), else a new run in ``experiment``
    (created if needed) tagged ``se.kind=sweep``, ``se.sweep=<name>``, ``se.sweep_dir``. All of it under
    :func:`store_lock`, so concurrent first-time sweeps share one store schema and one parent run."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith(SQLITE):
        Path(tracking_uri[len(SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
    with store_lock(tracking_uri, sweep_dir):
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
        tags = {"se.kind": "sweep", "se.sweep": sweep_name}
        if sweep_dir is not None:
            tags["se.sweep_dir"] = str(Path(sweep_dir).resolve())
            found = client.search_runs(
                [exp_id], filter_string=f"tags.`se.kind` = 'sweep' and tags.`se.sweep_dir` = '{tags['se.sweep_dir']}' "
                                        f"and attributes.status = 'RUNNING'",
                max_results=1, order_by=["attributes.start_time DESC"])
            if found:
                return found[0].info.run_id
        run = client.create_run(exp_id, run_name=sweep_name, tags=tags)
        return run.info.run_id


def finish_parent_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the parent run terminated (when every cell is done)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if client.get_run(run_id).info.status != status:
        client.set_terminated(run_id, status=status)


def wants_server(store: str, setting: bool | None, executor: str) -> bool:
    """Whether a sweep logs through a tracking server of its own: ``mlflow.server`` (``setting``),
    by default for SLURM only; never when ``store`` already is a server (http/https). A store a
    server cannot front (e.g. ``file:``) keeps being written directly unless the server was asked
    for (UserError then)."""
    if store.startswith(HTTP) or setting is False or (setting is None and executor != "slurm"):
        return False
    if store.split(":", 1)[0].split("+", 1)[0] not in DB_SCHEMES:
        if setting:
            raise UserError(f"mlflow.server: a tracking server needs a database store (sqlite:///PATH, "
                            f"postgresql://...), got mlflow.tracking_uri {store!r}")
        return False
    return True


def server_dir(store: str, sweep_dir: Path) -> Path:
    """Where the server over ``store`` lives: beside a SQLite file (``<folder>/<name>-server``),
    else in the sweep folder (``SWEEP_DIR/mlflow-server``)."""
    if store.startswith(SQLITE):
        db = Path(store[len(SQLITE):])
        return db.parent / f"{db.stem}-server"
    return Path(sweep_dir) / "mlflow-server"


def ensure_sweep_server(store: str, sweep_dir: Path, *, host: str) -> tuple[str, Path]:
    """``(uri, server folder)`` of the tracking server over ``store``, started on ``host`` unless
    one already answers (a second sweep command, or ``orchestrate resume``, reuses it)."""
    from orchestrator.mlflow_server import ensure_server, read_server

    folder = server_dir(store, sweep_dir)
    if store.startswith(SQLITE):
        Path(store[len(SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
    uri = ensure_server(folder, backend_store_uri=store, host=host)
    info = read_server(folder)
    if info is not None and info.backend_store_uri != store:
        raise UserError(f"mlflow server in {folder} serves {info.backend_store_uri}, not this sweep's store "
                        f"{store}; stop it (orchestrate mlflow-server {folder} --stop) or set mlflow.tracking_uri")
    return uri, folder


def live_tracking_uri(ml: dict) -> str:
    """A ledger's ``mlflow`` record → the URI to use now: its tracking URI, or the store behind it
    when that is a server of the sweep's own that does not answer (e.g. after a reboot)."""
    uri = ml["tracking_uri"]
    store = ml.get("store")
    if store and store != uri and uri.startswith(HTTP):
        from orchestrator.mlflow_server import is_healthy

        if not is_healthy(uri):
            return store
    return uri
