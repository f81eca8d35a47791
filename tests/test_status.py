"""`orchestrate status`: rate over the recent window across requeues, ETA, last PESQ, sweep total."""

from __future__ import annotations

import json
import os

import pytest
from conftest import running_sweep

from common.progress import format_duration, progress_eta, progress_rate, read_progress, shown_state
from orchestrator.cli import main as cli_main
from orchestrator.sweeps.status import total
from training.progress import ProgressFile

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def test_rate_spans_requeues_without_counting_the_queue_wait(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("training.progress.time.time", lambda: clock[0])
    p = ProgressFile(tmp_path, max_steps=100)
    for step in range(0, 11):  # attempt 1: 1 step/s
        p.update(step, "running")
        clock[0] += 1.0
    p.update(10, "preempted")
    clock[0] += 3600.0  # an hour in the queue
    p = ProgressFile(tmp_path, max_steps=100)  # the requeued job
    for step in range(10, 21):  # attempt 2: 2 steps/s
        p.update(step, "running", best_pesq=1.5, val_pesq=1.4 if step == 20 else None)
        clock[0] += 0.5
    prog = read_progress(tmp_path / "progress.json")
    assert {w[2] for w in prog["window"]} == {0, 1} and len(prog["window"]) == 20  # the last 20 samples
    # window: steps 2..10 of session 0 (8 steps in 8 s), 10..20 of session 1 (10 in 5 s); the hour not counted
    assert progress_rate(prog) == pytest.approx(18 / 13)
    assert progress_eta(prog) == pytest.approx(80 / (18 / 13))
    assert prog["last_val_pesq"] == 1.4 and prog["last_val_step"] == 20 and prog["best_pesq"] == 1.5
    assert prog["attempt_start_step"] == 10
    assert progress_eta({**prog, "state": "done", "step": 100}) == 0.0
    assert progress_rate({"window": [[1.0, 5, 0]]}) is None and progress_eta({}) is None


def test_total_and_durations():
    rows = [{"state": "running", "step": 50, "max_steps": 100, "rate": 2.0},
            {"state": "running", "step": 0, "max_steps": 100, "rate": 3.0},
            {"state": "done", "step": 100, "max_steps": 100, "rate": None}]
    assert total(rows) == {"steps": 150, "max_steps": 300, "rate": 5.0, "eta_s": 150 / 5.0}
    assert format_duration(59) == "0m59s" and format_duration(3 * 3600 + 120) == "3h02m"
    assert format_duration(2 * 86400 + 5 * 3600) == "2d05h" and format_duration(None) == "-"
    assert format_duration(float("inf")) == "-" and format_duration(-3) == "0m00s"


def test_status_of_a_real_local_sweep(tmp_path, demo_data, capsys):
    spec = {
        "name": "st",
        "base": {
            "model.name": "rwsa-xs", "model.options": {"hidden": 4, "num_blocks": 1, "level_heads": 2,
                                                       "middle_heads": 4},
            "data.train": str(demo_data / "train"), "data.valid": str(demo_data / "valid"),
            "data.segment_samples": 1800, "data.batch_size": 2, "data.valid_limit": 1,
            "trainer.max_steps": 4, "trainer.val_every": 2, "trainer.ckpt_every": 4, "trainer.log_every": 1,
            "trainer.pesq_workers": 1, "trainer.num_threads": 1, "loss.discriminator": False,
            "mlflow.system_metrics_s": 0,
        },
        "grid": {"trainer.seed": [0]},
        "executor": "local",
    }
    path = tmp_path / "st.yaml"
    path.write_text(json.dumps(spec))
    assert cli_main(["sweep", str(path), "--root", str(tmp_path / "runs")]) == 0
    sweep_dir = tmp_path / "runs" / "st"
    prog = read_progress(sweep_dir / "cells" / "s0" / "progress.json")
    assert [w[1] for w in prog["window"]] == [0, 1, 2, 3, 4]  # a sample at the start and every log window
    assert progress_rate(prog) > 0
    capsys.readouterr()
    assert cli_main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    head, row, last = out.splitlines()
    for col in ("steps/s", "ETA", "attempts", "last PESQ", "best PESQ"):
        assert col in head
    assert row.split()[:6] == ["s0", "done", "4/4", "-", "0m00s", "1"]
    assert f"{prog['last_val_pesq']:.3f}" in row and last.startswith("total: 4/4 steps (100.0%)")
    assert cli_main(["status", str(sweep_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["eta_s"] == 0.0 and rows[0]["last_val_pesq"] == prog["last_val_pesq"]
    assert prog["last_val_step"] == 4


def test_a_running_cell_in_its_end_of_run_evaluation_shows_evaluating(tmp_path, capsys):
    """progress.json written by the trainer's writer, its state set by final_eval's own update (the real run
    reaching that state is in test_final_eval); the ledger says running: status shows `running (evaluating)`."""
    from orchestrator.launchers.cell_loop import progress_line
    from orchestrator.sweeps.status import format_table, status_rows
    from training.evaluation.final_eval import _update_progress

    sweep_dir, workdirs = running_sweep(tmp_path, "ev", seeds=2)
    for cid, wd in workdirs.items():
        ProgressFile(wd, max_steps=4).update(4 if cid == "s0" else 2, "running")
    _update_progress(workdirs["s0"], "evaluating")
    rows = {r["cell"]: r for r in status_rows(sweep_dir)}
    assert rows["s0"]["state"] == "running" and rows["s0"]["progress_state"] == "evaluating"
    assert rows["s1"]["progress_state"] == "running"
    assert cli_main(["status", str(sweep_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("s0") and "  running (evaluating)  4/4  " in lines[1]
    assert lines[2].startswith("s1") and "(evaluating)" not in lines[2] and " running " in lines[2]
    assert lines[-1].endswith("; 2 running")
    assert "  running (evaluating)  4/4  " in format_table(list(rows.values()))
    assert progress_line(workdirs, 0, 2) == "[0/2 finished] s0 4/4 (evaluating); s1 2/4"
    assert shown_state("done", "evaluating") == "done" and shown_state("running", None) == "running"


def test_the_sweep_progress_line_is_printed_when_it_changes_not_every_turn(tmp_path):
    """Two cells (a real plan and ledger) under a backend whose 'processes' are progress files this test
    advances: the loop's progress line appears when a step changes, not again while it stays the same
    (the demo sweep printed the same line every 10 s)."""
    from orchestrator.launchers.cell_loop import Backend, Running, run_cells
    from orchestrator.ledger import Ledger
    from orchestrator.sweeps.plan import build_plan
    from orchestrator.sweeps.run import write_cells

    sweep = tmp_path / "pl.yaml"
    sweep.write_text("name: pl\ngrid: {trainer.seed: [0, 1]}\nexecutor: local\nresources: {max_parallel: 2}\n")
    plan = build_plan(sweep, root=tmp_path / "runs", overrides=["mlflow.enabled=false"])
    write_cells(plan)
    workdirs = {cid: plan.sweep_dir / rec["workdir"] for cid, rec in Ledger(plan.sweep_dir).read()["cells"].items()}
    # (turn, step of s0, step of s1): 3 changes over 12 turns; the cells end at turn 12
    steps = [(0, 0)] * 4 + [(1, 0)] * 4 + [(1, 1)] * 4

    class Scripted(Backend):
        turn = 0

        def start(self, cell, cell_dir):
            return Running(cell, cell_dir, None, f"scripted:{cell.id}")

        def ended(self, running, timeout_s):
            if self.turn >= len(steps):
                return [(r, 0) for r in running]
            for (_cid, wd), step in zip(sorted(workdirs.items()), steps[self.turn]):
                ProgressFile(wd, max_steps=4).update(step, "running")
            self.turn += 1
            return []

        def signal(self, running, sig):
            pass

    lines: list[str] = []
    cells = [(c, workdirs[c.id]) for c in plan.cells]
    assert run_cells(plan.sweep_dir, cells, Scripted(cells), out=lines.append, poll_s=0, report_every_s=0) == 0
    progress = [x for x in lines if x.startswith("[")]
    assert progress == ["[0/2 finished] s0 0/4; s1 0/4", "[0/2 finished] s0 1/4; s1 0/4",
                        "[0/2 finished] s0 1/4; s1 1/4"], lines
