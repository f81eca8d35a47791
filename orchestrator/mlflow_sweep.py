"""The orchestrator's one way to MLflow: clients, the sweep's store, tracking server and parent run
(one per sweep; every cell's run is its child), finding a sweep's runs, logging artifacts.

A SLURM sweep's jobs log through one ``mlflow server`` (``orchestrator.mlflow_server``) over the
sweep's store instead of writing the SQLite file themselves: :func:`ensure_sweep_server` starts it
(or finds it running) in ``<db folder>/<db name>-server/``, by default ``SWEEP_DIR/mlflow-server/``
over ``SWEEP_DIR/mlflow.db``. A store shared by several sweeps thus gets one server.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError

SQLITE = "sqlite:///"
HTTP = ("http://", "https://")
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # the stores `mlflow server` may front

log = logging.getLogger(__name__)


@dataclass
class SweepRef:
    """Where a sweep's runs are: its name, tracking URI, parent run (if known), experiment."""

    name: str
    tracking_uri: str
    parent_run_id: str | None = None
    experiment: str | None = None
    server_dir: str | None = None  # the sweep's own tracking server's folder (ledger), for "start it with ..."


def client(uri: str, *, must_exist: bool = False, server_dir: str | os.PathLike | None = None):
    """An ``MlflowClient`` for ``uri`` whose calls give up within seconds (``training.tracking``'s rule).
    ``must_exist`` (readers): a SQLite file that is not there, or a tracking server that does not answer,
    is a UserError at once (one line; with ``server_dir``, the command that starts the server)."""
    from orchestrator.mlflow_server import require_server
    from training.tracking import mlflow_client

    if must_exist and uri.startswith(SQLITE):
        db = Path(uri[len(SQLITE) :])
        if not db.is_file():
            raise UserError(f"tracking URI {uri}: no such database file")
    if must_exist:
        require_server(uri, server_dir)
    return mlflow_client(uri)


def search_all(mc, experiment_ids: list[str], filter_string: str) -> list:
    """Every run of ``experiment_ids`` that matches ``filter_string`` (all result pages)."""
    runs, token = [], None
    while True:
        page = mc.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_ids(mc, ref: SweepRef) -> list[str]:
    if ref.experiment:
        exp = mc.get_experiment_by_name(ref.experiment)
        if exp is None:
            raise UserError(f"--experiment {ref.experiment}: no such MLflow experiment at {ref.tracking_uri}")
        return [exp.experiment_id]
    return [e.experiment_id for e in mc.search_experiments()]


def find_sweep_runs(mc, ref: SweepRef) -> tuple[str | None, list]:
    """``(parent_run_id, child runs)`` of the sweep. The parent: the ledger's, else the newest run
    tagged ``se.kind=sweep, se.sweep=<name>``."""
    from mlflow.exceptions import MlflowException

    parent_id = ref.parent_run_id
    name = ref.name.replace("'", "\\'")  # quoted in the filter strings
    exp_ids: list[str]
    if parent_id:
        try:
            exp_ids = [mc.get_run(parent_id).info.experiment_id]
        except MlflowException:
            log.warning("parent run %s (from the ledger) not found at %s", parent_id, ref.tracking_uri)
            parent_id = None
    if not parent_id:
        exp_ids = _experiment_ids(mc, ref)
        if not exp_ids:
            return None, []
        parents = search_all(mc, exp_ids, f"tags.`se.kind` = 'sweep' and tags.`se.sweep` = '{name}'")
        if parents:
            parents.sort(key=lambda r: r.info.start_time or 0, reverse=True)
            parent_id = parents[0].info.run_id
            exp_ids = [parents[0].info.experiment_id]
    if parent_id:
        runs = search_all(mc, exp_ids, f"tags.mlflow.parentRunId = '{parent_id}'")
    else:
        runs = [r for r in search_all(mc, exp_ids, f"tags.`se.sweep` = '{name}'")
                if r.data.tags.get("se.kind") != "sweep"]  # fmt: skip
    return parent_id, runs


def log_artifacts(tracking_uri: str, run_id: str, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
    """Upload files as artifacts of ``run_id`` (under ``artifact_path``)."""
    c = client(tracking_uri)
    for p in paths:
        c.log_artifact(run_id, str(p), artifact_path=artifact_path)


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
    from mlflow.exceptions import MlflowException

    from training.sqlite_store import ensure_sqlite_file

    ensure_sqlite_file(tracking_uri)  # created under the umask, not SQLite's fixed 0644
    with store_lock(tracking_uri, sweep_dir):
        mc = client(tracking_uri)
        if run_id:
            try:
                mc.get_run(run_id)
                return run_id
            except MlflowException:
                pass
        exp = mc.get_experiment_by_name(experiment)
        if exp is not None:
            exp_id = exp.experiment_id
        else:  # a local SQLite store keeps its artifacts beside the database, not in the current folder
            location = None
            if tracking_uri.startswith(SQLITE):
                location = (Path(tracking_uri[len(SQLITE):]).parent / "mlartifacts").resolve().as_uri()
            exp_id = mc.create_experiment(experiment, artifact_location=location)
        tags = {"se.kind": "sweep", "se.sweep": sweep_name}
        if sweep_dir is not None:
            tags["se.sweep_dir"] = str(Path(sweep_dir).resolve())
            found = mc.search_runs(
                [exp_id], filter_string=f"tags.`se.kind` = 'sweep' and tags.`se.sweep_dir` = '{tags['se.sweep_dir']}' "
                                        f"and attributes.status = 'RUNNING'",
                max_results=1, order_by=["attributes.start_time DESC"])
            if found:
                return found[0].info.run_id
        run = mc.create_run(exp_id, run_name=sweep_name, tags=tags)
        return run.info.run_id


def finish_parent_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the parent run terminated (when every cell is done)."""
    mc = client(tracking_uri)
    if mc.get_run(run_id).info.status != status:
        mc.set_terminated(run_id, status=status)


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


def sweep_server_problem(ml: dict) -> str | None:
    """One line when the tracking server a ledger's ``mlflow`` record names does not answer (which
    server, how to start it), else None (it answers, or the sweep writes a store directly)."""
    from orchestrator.mlflow_server import start_advice
    from training.tracking import server_problem, unavailable_message

    uri = ml.get("tracking_uri")
    problem = server_problem(uri) if isinstance(uri, str) else None
    return unavailable_message(uri, problem, start_advice(ml.get("server_dir"))) if problem else None


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
