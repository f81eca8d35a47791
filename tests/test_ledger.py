"""The sweep ledger: locked read-modify-write, atomic writes, state validation, refresh from files."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from orchestrator.errors import UserError
from orchestrator.launchers import base
from orchestrator.ledger import Ledger, new_cell_record, set_state
from orchestrator.sweeps.status import refresh


def _bump(sweep_dir: str, n: int) -> None:
    for _ in range(n):
        with Ledger(sweep_dir).locked() as data:
            data["cells"]["a"]["attempts"] += 1


def test_concurrent_writers_lose_no_update(tmp_path):
    with Ledger(tmp_path).locked(create={"cells": {"a": new_cell_record(0, "c.yaml", "cells/a", {})}}):
        pass
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_bump, args=(str(tmp_path), 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert Ledger(tmp_path).read()["cells"]["a"]["attempts"] == 100
    assert not list(tmp_path.glob(".ledger.json.*.tmp"))  # no temp files left behind


def test_failed_block_leaves_the_ledger_unchanged(tmp_path):
    led = Ledger(tmp_path)
    with led.locked(create={"cells": {"a": new_cell_record(0, "c.yaml", "cells/a", {})}}):
        pass
    before = led.path.read_text()
    with pytest.raises(RuntimeError):
        with led.locked() as data:
            set_state(data["cells"]["a"], "running")
            raise RuntimeError("boom")
    assert led.path.read_text() == before


def test_invalid_state_and_bad_files_are_refused(tmp_path):
    rec = new_cell_record(0, "c.yaml", "cells/a", {})
    with pytest.raises(ValueError, match="invalid cell state 'finished'"):
        set_state(rec, "finished")
    with pytest.raises(UserError, match="no sweep ledger here"):
        Ledger(tmp_path).read()
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Ledger(tmp_path).read()


def test_refresh_reads_the_cells_own_files(tmp_path):
    cells = {}
    for i, (cid, rc) in enumerate([("ok", 0), ("pre", 75), ("bad", 2), ("run", None)]):
        cdir = tmp_path / "cells" / cid
        cdir.mkdir(parents=True)
        rec = new_cell_record(i, f"cells/{cid}/config.yaml", f"cells/{cid}", {})
        set_state(rec, "running", job_id=f"local:{i}")
        if rc is not None:
            base.write_exit_code(cdir, rc)
        (cdir / base.ATTEMPTS_FILE).write_text("t start x\nt end rc=75\nt start y\n")
        (cdir / base.RUN_ID_FILE).write_text(f"run{i}\n")
        cells[cid] = rec
    data = {"cells": cells}
    refresh(tmp_path, data)
    assert {k: v["state"] for k, v in cells.items()} == {"ok": "done", "pre": "preempted", "bad": "failed",
                                                          "run": "running"}
    assert cells["ok"]["attempts"] == 2 and cells["pre"]["mlflow_run_id"] == "run1"
    json.dumps(data)  # still JSON-serialisable


def test_progress_is_read_defensively(tmp_path):
    from common.progress import read_progress
    from common.rundir import PROGRESS_FILE

    assert read_progress(tmp_path) == {}
    (tmp_path / PROGRESS_FILE).write_text('{"step": 3, "max_st')  # torn write
    assert read_progress(tmp_path) == {}
    (tmp_path / PROGRESS_FILE).write_text("[1, 2]")
    assert read_progress(tmp_path) == {}
    (tmp_path / PROGRESS_FILE).write_text('{"step": 3, "max_steps": 10, "best_pesq": 1.5}')
    assert read_progress(tmp_path)["step"] == 3 == read_progress(tmp_path / PROGRESS_FILE)["step"]
