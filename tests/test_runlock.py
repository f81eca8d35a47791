"""One trainer per run folder (issue 14, case 4): a second trainer exits 2 naming the holder, a lock left
by a SIGKILLed process is taken over, and a sweep rerun leaves a cell with a live process alone --
all with real processes (a lock holder, `python -m training.run`, `orchestrate sweep`)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import yaml
from robustness_helpers import ROOT, corpus, env, error_lines, run, tiny_config, train_cmd, write_config  # noqa: F401

from common.runlock import LOCK_FILE, is_locked
from orchestrator.launchers.cell_loop import cell_alive

HOLD = "import sys, time\nfrom common.runlock import RunLock\nRunLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(600)\n"


def _holder(folder) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_trainer_exits_2_and_a_dead_holder_is_taken_over(corpus, tmp_path):  # noqa: F811
    wd = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus))
    holder = _holder(wd)
    try:
        assert is_locked(wd)
        r = run(train_cmd(cfg, wd))
        assert r.returncode == 2
        (line,) = error_lines(r.stderr)
        assert f"run folder is in use by another trainer (host {socket.gethostname()}, pid {holder.pid}" in line
        assert not (wd / "checkpoints").exists()  # nothing written by the second trainer
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not is_locked(wd) and (wd / LOCK_FILE).read_text().split()[1] == str(holder.pid)  # stale line left
    r = run(train_cmd(cfg, wd))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "took over the lock of a process that is gone" in r.stderr
    assert (wd / "checkpoints" / "step-000002" / "COMPLETE").is_file()


def test_sweep_rerun_leaves_a_live_local_cell_alone(corpus, tmp_path):  # noqa: F811
    base = {f"{sec}.{k}": v for sec, d in tiny_config(corpus).items() if isinstance(d, dict) for k, v in d.items()}
    base.pop("mlflow.enabled")
    spec = {"name": "lk", "base": base, "grid": {"trainer.seed": [0]}, "executor": "local"}
    sweep = tmp_path / "lk.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    root = tmp_path / "runs"
    r = run([sys.executable, "-m", "orchestrator.cli", "sweep", str(sweep), "--root", str(root)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    sweep_dir = root / "lk"
    ledger = json.loads((sweep_dir / "ledger.json").read_text())
    (cid,) = ledger["cells"]
    cell_dir = sweep_dir / ledger["cells"][cid]["workdir"]
    # the cell "still running": a live process holds its run folder (as a trainer left by a killed sweep)
    holder = _holder(cell_dir)
    try:
        rec = ledger["cells"][cid]
        rec.update(state="running", job_id=f"local:{holder.pid}", exit_code=None)
        (sweep_dir / "ledger.json").write_text(json.dumps(ledger))
        (cell_dir / "exit_code").unlink()
        assert cell_alive(rec, cell_dir)
        r = run([sys.executable, "-m", "orchestrator.cli", "sweep", str(sweep), "--root", str(root)])
        assert "Traceback" not in r.stderr
        assert "1 queued/running, 0 to submit" in r.stdout  # before: marked preempted, a second trainer started
        after = json.loads((sweep_dir / "ledger.json").read_text())["cells"][cid]
        assert after["state"] == "running" and after["job_id"] == f"local:{holder.pid}"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.2)
    # its process gone: the next rerun calls it preempted and resumes it
    r = run([sys.executable, "-m", "orchestrator.cli", "sweep", str(sweep), "--root", str(root)])
    assert "1 to submit" in r.stdout and r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((sweep_dir / "ledger.json").read_text())["cells"][cid]["state"] == "done"


def test_a_ledger_of_the_wrong_shape_is_one_line(tmp_path, capsys):
    from orchestrator.cli import main

    for cells, expected in (('{"s0": "x"}', "cell 's0': expected a record (mapping), got str"),
                            ('{"s0": {"state": "weird", "workdir": "c"}}', "cell 's0': state 'weird' is not one of"),
                            ('{"s0": {"state": "done"}}', "cell 's0': 'workdir' must be a folder path string")):
        (tmp_path / "ledger.json").write_text('{"cells": ' + cells + '}')
        assert main(["status", str(tmp_path)]) == 2  # before: AttributeError traceback
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {tmp_path / 'ledger.json'}: ") and expected in err and "\n" not in err


def test_claim_leaves_a_cell_another_sweep_finished_meanwhile(tmp_path):
    """The race of two concurrent `sweep` commands: B planned s0 as pending, A finished it before B
    reached it; B must not train it a second time (seen in CI: two `start` lines for one cell)."""
    from orchestrator.launchers.cell_loop import claim
    from orchestrator.ledger import Ledger, new_cell_record, set_state

    cell_dir = tmp_path / "cells" / "s0"
    cell_dir.mkdir(parents=True)
    with Ledger(tmp_path).locked(create={"cells": {"s0": new_cell_record(0, "c.yaml", "cells/s0", {})}}):  # workdir relative
        pass
    assert claim(tmp_path, "s0", cell_dir) is None  # pending: claimed
    assert Ledger(tmp_path).read()["cells"]["s0"]["job_id"].startswith("local-claim:")
    assert claim(tmp_path, "s0", cell_dir) == "already running in another process"  # our own claim, alive
    with Ledger(tmp_path).locked() as data:
        set_state(data["cells"]["s0"], "done", job_id="local:1")
    assert claim(tmp_path, "s0", cell_dir) == "finished meanwhile by another process"
    assert Ledger(tmp_path).read()["cells"]["s0"]["state"] == "done"
    with Ledger(tmp_path).locked() as data:
        set_state(data["cells"]["s0"], "preempted")
    assert claim(tmp_path, "s0", cell_dir) is None  # a preempted cell is resumed


def test_an_ended_cell_is_not_claimable_until_its_end_is_recorded(tmp_path):
    """The other window of that race (seen in CI after the cells got faster): sweep A's cell process
    ended and A has seen it, but its end is not in the ledger yet; sweep B must not claim the cell then.
    `LocalBackend.ended` leaves the process a zombie (which `cell_alive` counts as running) until
    `release`, which the loop calls after `record_end`."""
    from types import SimpleNamespace

    from orchestrator.launchers.cell_loop import Running, claim, record_end, record_start
    from orchestrator.launchers.local import LocalBackend
    from orchestrator.ledger import Ledger, new_cell_record

    cell_dir = tmp_path / "cells" / "s0"
    cell_dir.mkdir(parents=True)
    with Ledger(tmp_path).locked(create={"cells": {"s0": new_cell_record(0, "c.yaml", "cells/s0", {})}}):
        pass
    assert claim(tmp_path, "s0", cell_dir) is None
    proc = subprocess.Popen([sys.executable, "-c", f"import sys; sys.argv.append({str(cell_dir)!r}); sys.exit(3)"],
                            start_new_session=True)
    record_start(tmp_path, "s0", cell_dir, f"local:{proc.pid}")
    backend = LocalBackend([])
    r = Running(SimpleNamespace(id="s0"), cell_dir, proc, f"local:{proc.pid}")
    done = []
    for _ in range(100):
        if done := backend.ended([r], 0.05):
            break
    assert done == [(r, 3)]
    assert claim(tmp_path, "s0", cell_dir) == "already running in another process"  # ended, not recorded
    assert record_end(tmp_path, "s0", cell_dir, 3) == "failed"
    backend.release(r)
    assert proc.returncode == 3
    assert claim(tmp_path, "s0", cell_dir) is None  # recorded as failed: a rerun may take it now
