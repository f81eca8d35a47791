"""A new SQLite MLflow store (``sqlite:///PATH``) that does not cost MLflow's schema migrations.

MLflow builds a new database by running every schema migration since its first version: about 3 s of
CPU, paid by the first command that opens a new store (a sweep's first call, `orchestrate train` in a
new folder, a new tracking server). `ensure_sqlite_file(uri)` instead starts a missing store as a copy
of an empty one made once per MLflow version (``mlflow-store-<version>.db`` in the project's cache
folder, `common.cache.cache_dir`) and kept there: a copy of ~0.5 MB. The template is the migrated
schema minus MLflow's "Default" experiment, whose artifact location depends on who opens the store:
MLflow adds that row on the first open, as it does for a store it built itself, so the copy and a store
MLflow made hold the same rows.

The file gets the mode a plain ``open()`` gives under the umask (SQLite alone would make it 0644) and
appears whole or not at all (written beside it, then hard-linked into place, which never replaces a
store another process made meanwhile). Where no template can be made or linked (no cache folder, a
file system without hard links) the file is created empty and MLflow migrates it, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
from importlib import metadata
from pathlib import Path

from common.atomic import atomic_write
from common.cache import cache_dir

log = logging.getLogger(__name__)

SCHEME = "sqlite:///"


def ensure_sqlite_file(uri: str) -> None:
    """Create the store file of ``uri`` when it is a ``sqlite:///PATH`` that does not exist: a copy of the
    empty-store template, else an empty file (MLflow builds the schema). Other URIs: nothing."""
    if not str(uri).startswith(SCHEME):
        return
    db = Path(uri[len(SCHEME) :])
    if str(db) in ("", ":memory:") or db.exists():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    template = empty_store_template()
    if template is not None and _link_copy(template, db):
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(db, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))


def empty_store_template() -> Path | None:
    """The cached empty store of the installed MLflow version, made on first use; None where it cannot
    be made (the reason is logged at debug level)."""
    try:
        path = cache_dir() / f"mlflow-store-{metadata.version('mlflow')}.db"
        if not path.is_file():
            _make_template(path)
        return path
    except Exception as e:  # a cache that cannot be written costs the migrations, nothing else
        log.debug("no MLflow store template: %s", e)
        return None


def _make_template(path: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".mlflow-store.") as tmp:
        db = Path(tmp) / "store.db"
        store = SqlAlchemyStore(f"{SCHEME}{db}", str(Path(tmp) / "artifacts"))
        store.engine.dispose()
        with contextlib.closing(sqlite3.connect(db)) as con, con:
            con.execute("DELETE FROM experiments WHERE experiment_id = 0")  # MLflow adds it on first open
        os.replace(db, path)  # concurrent makers: the last one's identical file wins


def _link_copy(template: Path, db: Path) -> bool:
    """Copy ``template`` to ``db`` whole or not at all; True when ``db`` exists afterwards."""
    data = template.read_bytes()
    try:
        atomic_write(db, lambda f: f.write(data), exclusive=True)
    except FileExistsError:
        return True  # another process made the store meanwhile: theirs stands
    except OSError as e:
        log.debug("MLflow store template not linked into %s: %s", db.parent, e)
        return False
    return True
