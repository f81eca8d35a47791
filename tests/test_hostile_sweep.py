"""Hostile sweeps and ledgers (issue 26, items 2 and 7): grid values that would name the sweep folder itself
as a cell folder, and `orchestrate cancel` on a ledger whose ``local:<pid>`` now names a stranger (real
processes, a real ledger written by the planner)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import procid
from orchestrator.cli import main
from orchestrator.sweeps.plan import build_plan
from orchestrator.sweeps.run import write_cells


@pytest.mark.parametrize("value", [".", ".."])
def test_grid_values_dot_and_dotdot_are_refused_at_plan_time(tmp_path, capsys, value):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: dots\ngrid:\n  model.name: ['{value}', rwsa-xs]\nexecutor: local\n")
    code = main(["plan", str(sweep), "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2  # before: cell ids '.' / '..': a cell ran in runs/dots/cells/ itself (or in runs/dots/)
    why = ("expected a folder name, got '.' (the containing folder itself)" if value == "." else
           "expected a relative name inside the folder, got one with a '..' component")
    assert err == f"error: {sweep}: grid.model.name: value '{value}' would name the cell folder '{value}': {why}"
    assert not (tmp_path / "runs").exists()
    sweep.write_text("name: dots\ngrid:\n  model.name: [rwsa-xs]\nexecutor: local\n")
    assert main(["plan", str(sweep), "--root", str(tmp_path / "runs"), f"model.name=['{value}']"]) == 2
    assert f"model.name: value '{value}' would name the cell folder" in capsys.readouterr().err


def _sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: cx\ngrid: {trainer.seed: [0, 1, 2, 3]}\nexecutor: local\n")
    write_cells(build_plan(sweep, root=tmp_path / "runs", overrides=["mlflow.enabled=false"]))
    return tmp_path / "runs" / "cx"


def _set_running(sweep_dir: Path, cells: dict[str, tuple[int, dict | None]]) -> None:
    path = sweep_dir / "ledger.json"
    data = json.loads(path.read_text())
    for cid, (pid, ident) in cells.items():
        rec = data["cells"][cid]
        rec.update(state="running", job_id=f"local:{pid}", job_ids=[f"local:{pid}"])
        if ident is not None:
            rec["process"] = ident
    path.write_text(json.dumps(data))


def _gone(proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_cancel_signals_only_the_cells_own_processes(tmp_path, capsys):
    sweep_dir = _sweep(tmp_path)
    cells = sweep_dir / "cells"
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)  # an unrelated process with a reused pid
    old_stranger = subprocess.Popen(["sleep", "61"], start_new_session=True)
    trainer_like = [sys.executable, "-c", "import time; time.sleep(60)", "-m", "training.run", "--config",
                    str(cells / "s2" / "config.yaml"), "--workdir", str(cells / "s2")]
    own_old = subprocess.Popen(trainer_like, start_new_session=True)  # the cell's command, ledger of an old version
    own = subprocess.Popen(["sleep", "62"], start_new_session=True)  # the cell's process as recorded at its start
    try:
        time.sleep(0.2)
        me = procid.identify(stranger.pid)
        was = {**me, "start_ticks": me["start_ticks"] - 500, "cmdline": "python -m training.run --workdir x"}
        _set_running(sweep_dir, {"s0": (stranger.pid, was), "s1": (old_stranger.pid, None),
                                 "s2": (own_old.pid, None), "s3": (own.pid, procid.identify(own.pid))})
        assert main(["cancel", str(sweep_dir)]) == 0
        out = capsys.readouterr().out.splitlines()
        # before: "cancelled 4 job(s)" and both sleeps killed
        assert stranger.poll() is None and old_stranger.poll() is None
        assert _gone(own_old) and _gone(own) and own.returncode == -signal.SIGTERM
        assert out == [
            f"local:{stranger.pid}: pid {stranger.pid} is not this cell's training process any more (it runs "
            "`sleep 60`): not signalled",
            f"local:{old_stranger.pid}: pid {old_stranger.pid} is not this cell's training process any more (it "
            "runs `sleep 61`): not signalled",
            f"cancelled 2 job(s): local:{own_old.pid} local:{own.pid}"]
        states = {c: r["state"] for c, r in json.loads((sweep_dir / "ledger.json").read_text())["cells"].items()}
        assert states == dict.fromkeys(("s0", "s1", "s2", "s3"), "cancelled")
    finally:
        for p in (stranger, old_stranger, own_old, own):
            p.kill()
            p.wait()


def test_ray_rank_signals_check_the_recorded_identity(tmp_path):
    from orchestrator.launchers import ray_train

    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    own = subprocess.Popen(["sleep", "62"], start_new_session=True)
    try:
        time.sleep(0.2)
        pids = tmp_path / ray_train.PID_DIR
        pids.mkdir()
        me = procid.identify(stranger.pid)
        was = {**me, "start_ticks": me["start_ticks"] - 500}  # the rank that had this pid before
        (pids / "0.pid").write_text(f"node-a {stranger.pid}\n{json.dumps(was)}\n")
        (pids / "1.pid").write_text(f"node-a {own.pid}\n{json.dumps(procid.identify(own.pid))}\n")
        (pids / "2.pid").write_text("node-b 12345\n")  # a pid file of an older version: no identity
        recs = ray_train.read_pid_records(tmp_path)
        assert recs == {0: ("node-a", stranger.pid, was), 1: ("node-a", own.pid, procid.identify(own.pid)),
                        2: ("node-b", 12345, None)}
        assert ray_train.read_pid_files(tmp_path) == {0: ("node-a", stranger.pid), 1: ("node-a", own.pid),
                                                      2: ("node-b", 12345)}
        for _node, pid, ident in recs.values():
            if ident is not None:
                ray_train._kill(pid, signal.SIGTERM, ident)
        assert stranger.poll() is None  # before: os.kill(pid) whoever had it
        assert _gone(own) and own.returncode == -signal.SIGTERM
    finally:
        for p in (stranger, own):
            p.kill()
            p.wait()


def test_a_ledger_cell_folder_outside_the_sweep_is_one_line(tmp_path, capsys):
    sweep_dir = _sweep(tmp_path)
    path = sweep_dir / "ledger.json"
    data = json.loads(path.read_text())
    data["cells"]["s1"]["workdir"] = "../../elsewhere"
    path.write_text(json.dumps(data))
    assert main(["status", str(sweep_dir)]) == 2  # before: the cell's files were read from tmp/elsewhere
    assert capsys.readouterr().err.strip() == (
        f"error: {path}: cell 's1': workdir '../../elsewhere': expected a relative name inside the folder, got one "
        "with a '..' component")
