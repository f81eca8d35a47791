"""training.sqlite_store: a new SQLite MLflow store starts as a copy of a cached empty store and then
holds what a store MLflow built itself holds (real MLflow, real SQLite files)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from training import sqlite_store


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture
def use_cache(cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def _contents(db: Path) -> dict:
    """Schema and rows, without what differs between any two stores (times, run ids and names)."""
    con = sqlite3.connect(db)
    try:
        # a table's clauses in any order: MLflow's own migrations emit a table's CHECK constraints in an
        # order that varies between two stores it builds in one process
        out = {"schema": sorted((kind, name, sorted(x.strip().rstrip(",") for x in (sql or "").splitlines()))
                                for kind, name, sql in con.execute("SELECT type, name, sql FROM sqlite_master")
                                if name != "sqlite_sequence")}
        out["alembic"] = con.execute("SELECT version_num FROM alembic_version").fetchall()
        out["experiments"] = con.execute(
            "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments ORDER BY 1").fetchall()
        out["metrics"] = con.execute("SELECT key, value, step FROM metrics").fetchall()
        out["runs"] = con.execute("SELECT status, lifecycle_stage, experiment_id FROM runs").fetchall()
        return out
    finally:
        con.close()


def _use(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("sweep"))
    client.log_metric(run.info.run_id, "val/pesq", 2.5, step=4)
    client.set_terminated(run.info.run_id)


def test_a_seeded_store_holds_what_a_store_mlflow_built_holds(use_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Default experiment's artifact location is the opener's ./mlruns
    seeded, built = tmp_path / "seeded.db", tmp_path / "built.db"
    sqlite_store.ensure_sqlite_file(f"sqlite:///{seeded}")
    assert seeded.stat().st_size > 100_000  # the schema is there before MLflow opens it
    assert _contents(seeded)["experiments"] == []  # the Default experiment comes with the first open
    _use(f"sqlite:///{seeded}")
    _use(f"sqlite:///{built}")  # no file: MLflow runs its migrations
    a, b = _contents(seeded), _contents(built)
    assert a == b
    assert a["experiments"][0][:3] == (0, "Default", str(tmp_path / "mlruns" / "0"))
    assert list(use_cache.glob("se-orchestrator/mlflow-store-*.db"))


def test_an_existing_store_is_never_replaced_and_the_mode_follows_the_umask(use_cache, tmp_path):
    db = tmp_path / "sub" / "mlflow.db"
    old = os.umask(0o002)
    try:
        sqlite_store.ensure_sqlite_file(f"sqlite:///{db}")
    finally:
        os.umask(old)
    assert db.stat().st_mode & 0o777 == 0o664
    _use(f"sqlite:///{db}")
    before = db.read_bytes()
    sqlite_store.ensure_sqlite_file(f"sqlite:///{db}")
    assert db.read_bytes() == before
    assert [p.name for p in db.parent.iterdir()] == ["mlflow.db"]  # no temp file left beside it


def test_without_a_usable_cache_the_store_is_built_by_mlflow(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be made
    db = tmp_path / "mlflow.db"
    sqlite_store.ensure_sqlite_file(f"sqlite:///{db}")
    assert db.exists() and db.stat().st_size == 0
    _use(f"sqlite:///{db}")
    assert _contents(db)["metrics"] == [("val/pesq", 2.5, 4)]


def test_other_uris_are_left_alone(tmp_path, use_cache):
    for uri in ("http://127.0.0.1:5000", "sqlite:///:memory:", "postgresql://u@h/db"):
        sqlite_store.ensure_sqlite_file(uri)
    assert list(tmp_path.iterdir()) == []


def test_a_store_made_meanwhile_by_another_process_stands(use_cache, tmp_path):
    """The copy goes into place by a hard link (`atomic_write(..., exclusive=True)`): a store that
    appeared after the existence check is kept byte for byte, and no temp file is left beside it."""
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"another process's store")
    assert sqlite_store._link_copy(sqlite_store.empty_store_template(), db)
    assert db.read_bytes() == b"another process's store"
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"]
