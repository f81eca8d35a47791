"""benchmarks/rehearse.py end to end on a one-cell copy of the demo sweep (issue 24): one job-ending
fault of each kind aimed at the cell (a time-limit stop, a USR2 preemption, a SIGKILL right after a
checkpoint) and the sweep's MLflow server SIGKILLed and restarted while the cell logs; the table
must show every expected point stored exactly once, the cell done, its requeues as injected. Then the
check itself: one stored point deleted (`--drop-point`) makes it exit 1 naming that point."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RWSA

ROOT = Path(__file__).resolve().parents[1]


def _row(out: str, label: str) -> str:
    m = re.search(rf"^{re.escape(label)}\s*\| (.*)$", out, re.M)
    assert m, (label, out)
    return m.group(1)


def _logs(runs: Path, cell: Path) -> str:
    """What the cell's processes printed: the local launcher's log, or SLURM's job output files."""
    local = cell / "launcher.log"
    return local.read_text() if local.exists() else "".join(p.read_text() for p in (runs / "rh" / "logs").glob("*.out"))


@pytest.mark.parametrize("executor", ["local", pytest.param("slurm", marks=[pytest.mark.slow, pytest.mark.slurm])])
def test_rehearsal_with_one_fault_of_each_kind_loses_no_point(executor, journey_corpus, tmp_path, capsys):
    """SLURM: the same faults on the real test cluster; the time-limit stop and the preemption requeue
    the job by itself (`scontrol requeue`), the SIGKILLed job is resubmitted by the next sweep run."""
    from training.progress import WINDOW_KEYS
    from training.validation import VAL_METRICS

    c = journey_corpus
    base = {k: v for k, v in (o.split("=", 1) for o in TINY_RWSA)} | {
        "data.train": str(c / "train"), "data.valid": str(c / "valid"), "data.segment_samples": 1800,
        "data.batch_size": 2, "data.valid_limit": 1, "trainer.max_steps": 24, "trainer.val_every": 12,
        "trainer.ckpt_every": 6, "trainer.log_every": 4, "trainer.pesq_workers": 0, "trainer.num_threads": 1,
        "eval.testsets": [str(c / "test")]}
    base["model.options"] = {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}
    sweep = tmp_path / "rh.yaml"
    sweep.write_text(json.dumps({"name": "rh", "base": base, "grid": {"trainer.seed": [0]}, "profile": "local",
                                 "executor": executor, "resources": {"nproc": 1, "cpus_per_task": 1}}))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "rehearse.py"), str(sweep), "--scale", "1", "--step-s", "0.1",
           "--time-limits", "1", "--seed", "3", "--root", str(tmp_path / "runs"), "--server-down-s", "1",
           "--executor", executor, "--timeout-s", "420"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr[-3000:]
    cells = list((tmp_path / "runs" / "rh" / "cells").iterdir())
    assert len(cells) == 1, cells
    cell_log = _logs(tmp_path / "runs", cells[0])
    assert cell_log.count("fault injected at train.step") == 2  # the time limit and the preemption (USR2)
    assert cell_log.count("fault injected at checkpoint.saved") == 1  # the SIGKILL
    exp, stored = map(int, re.match(r"(\d+) / (\d+) \(missing 0, duplicates 0\)",
                                    _row(out, "metric points expected / stored")).groups())
    # train/* at 4, 8, ..., 24; val/* (+ best_pesq) at 12 and 24; val/noisy_* at 0; eval/* once
    assert exp == stored >= 6 * len(WINDOW_KEYS) + 2 * (len(VAL_METRICS) + 1) + len(VAL_METRICS) + 2 * len(VAL_METRICS)
    assert _row(out, "cells done") == "1 / 1"
    assert re.fullmatch(r"\S+ 3/3 \(plan 0\)", _row(out, "requeues per cell: actual / injected (plan chains-1)"))
    assert re.fullmatch(r"[\d.]+ ms / [\d.]+ ms over [1-9]\d* requests", _row(out, "log_batch latency p50 / p99 (at the server)"))
    assert re.fullmatch(r"\d+\.\d{3} %", _row(out, "step time blocked on tracking (goal <= 1 %)"))  # 0.1 s a step
    server = _row(out, "MLflow server restarts")
    assert "SIGKILLed" in server and "restarted as pid" in server
    assert int(re.search(r"points logged while it was down, stored: (\d+)", server).group(1)) > 0

    spec = importlib.util.spec_from_file_location("rehearse", ROOT / "benchmarks" / "rehearse.py")
    rehearse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rehearse)
    capsys.readouterr()
    assert rehearse.main([*cmd[2:], "--report-only", "--drop-point"]) == 1  # the check of the same rehearsal
    out = capsys.readouterr().out
    assert re.search(r"^LOSS: \S+ train/loss_g@4 missing$", out, re.M), out
    assert "(missing 1, duplicates 0)" in _row(out, "metric points expected / stored")
