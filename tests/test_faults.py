"""Fault points (`common/faults.py`): the SE_FAULTS syntax, each action in a real process, the
conditions, and that the code's points and the documented table are the same list."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import faults

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def rules():
    """Set rules in this process for one test; all off afterwards."""
    yield faults.configure
    faults.configure(None)


def run_point(spec: str, *calls: str) -> subprocess.CompletedProcess:
    """A fresh process with SE_FAULTS=spec that runs `faults.point(...)` calls, then prints 'after'."""
    code = "from common import faults\n" + "\n".join(f"faults.point({c})" for c in calls) + "\nprint('after')"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"SE_FAULTS": spec, "PATH": "/usr/bin:/bin"})


def test_off_by_default_and_every_point_is_a_no_op():
    assert faults.active() == {}
    for name in faults.POINTS:
        faults.point(name, step=1, rank=0)  # nothing happens


@pytest.mark.parametrize("spec,code", [
    ("best.written=kill", -signal.SIGKILL),
    ("best.written=exit:137", 137),
    ("best.written=signal:USR2", -signal.SIGUSR2),  # the default handler ends the process: it was sent
    ("best.written=raise", 1),
])
def test_each_action_in_a_real_process(spec, code):
    r = run_point(spec, '"best.written", step=3')
    assert r.returncode == code, r.stderr
    assert "after" not in r.stdout
    assert "fault injected at best.written (hit 1, step=3)" in r.stderr
    if code == 1:
        assert "FaultInjected: fault injected at best.written (hit 1)" in r.stderr


def test_signal_action_reaches_the_handler_and_the_process_carries_on():
    r = run_point("train.step=signal:USR1@step=2",
                  '"train.step", step=1, rank=0); import signal, sys; signal.signal(signal.SIGUSR1, '
                  'lambda *a: print("got", a[0])); faults.point("train.step", step=2, rank=0',
                  '"train.step", step=3, rank=0')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["got", str(int(signal.SIGUSR1)), "after"]


def test_pause_sleeps_then_carries_on(rules):
    rules("eval.utterance=pause:0.3")
    t0 = time.monotonic()
    faults.point("eval.utterance")
    assert 0.3 <= time.monotonic() - t0 < 2.0


def test_conditions_step_rank_and_hit(rules):
    rules("train.step=raise@step=4@rank=1;checkpoint.saved=raise@hit=3")
    for step in range(8):
        faults.point("train.step", step=step, rank=0)  # rank 0: never
    faults.point("train.step", step=3, rank=1)
    with pytest.raises(faults.FaultInjected, match="train.step"):
        faults.point("train.step", step=4, rank=1)
    faults.point("checkpoint.saved", step=1, rank=0)
    faults.point("checkpoint.saved", step=2, rank=0)
    with pytest.raises(faults.FaultInjected, match=r"checkpoint.saved \(hit 3\)"):
        faults.point("checkpoint.saved", step=3, rank=0)
    faults.point("checkpoint.saved", step=4, rank=0)  # the third hit only


def test_cell_condition_fires_only_in_the_named_cell(rules, monkeypatch):
    rules("train.step=raise@step=2@cell=m_s1;checkpoint.saved=raise@cell=m_s0")
    monkeypatch.delenv(faults.CELL_ENV, raising=False)
    faults.point("train.step", step=2, rank=0)  # no cell: a cell= rule never fires
    monkeypatch.setenv(faults.ENV_VAR, "x")  # set_cell exports only under SE_FAULTS
    faults.set_cell("m_s0")
    faults.point("train.step", step=2, rank=0)
    with pytest.raises(faults.FaultInjected, match="checkpoint.saved"):
        faults.point("checkpoint.saved", step=2, rank=0)
    faults.set_cell("m_s1")
    faults.point("checkpoint.saved", step=2, rank=0)
    faults.point("train.step", step=1, rank=0)
    with pytest.raises(faults.FaultInjected, match="train.step"):
        faults.point("train.step", step=2, rank=0)
    assert faults.parse("best.written=kill@cell=a-b_c.1") == {
        "best.written": [faults.Rule("best.written", "kill", "", (("cell", "a-b_c.1"),))]}


def test_cell_condition_in_a_child_process_through_the_environment():
    spec = "best.written=exit:7@cell=rwsa-xs_s1"
    code = "from common import faults\nfaults.point('best.written', step=1)\nprint('after')"
    for cell, rc in (("rwsa-xs_s0", 0), ("rwsa-xs_s1", 7)):
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={"SE_FAULTS": spec, "SE_FAULTS_CELL": cell, "PATH": "/usr/bin:/bin"})
        assert r.returncode == rc, r.stderr


@pytest.mark.parametrize("spec,words", [
    ("nowhere=kill", "unknown point 'nowhere'"),
    ("train.step=explode", "unknown action 'explode'"),
    ("train.step=pause:soon", "bad argument 'soon' for pause"),
    ("train.step=signal:NOPE", "bad argument 'NOPE' for signal"),
    ("train.step=kill:3", "bad argument '3' for kill"),
    ("eval.utterance=kill@step=3", "eval.utterance passes no 'step' (it passes hit, cell)"),
    ("train.step=kill@cell=", "cell needs a run directory name, got ''"),
    ("train.step=kill@step=x", "step needs an integer, got 'x'"),
])
def test_a_bad_rule_is_one_line_naming_it(spec, words):
    with pytest.raises(faults.FaultSpecError) as e:
        faults.parse(spec)
    assert words in str(e.value) and "\n" not in str(e.value) and spec.split("@")[0] in str(e.value)


def test_several_rules_and_their_parsed_form():
    parsed = faults.parse(" train.step=signal:usr2@step=40@rank=1 ; best.written=kill;train.step=exit:3@hit=2")
    assert parsed == {
        "train.step": [faults.Rule("train.step", "signal", "SIGUSR2", (("step", 40), ("rank", 1))),
                       faults.Rule("train.step", "exit", "3", (("hit", 2),))],
        "best.written": [faults.Rule("best.written", "kill", "", ())],
    }


def test_the_points_in_the_code_are_the_documented_ones():
    """Every `faults.point("NAME", ...)` in the packages names a point of `POINTS` with keys it declares;
    every point is placed somewhere (the stream's, once its owner wires it) and listed in docs/contracts.md."""
    calls: dict[str, set[str]] = {}
    for path in [*ROOT.glob("training/**/*.py"), *ROOT.glob("sharding/**/*.py"), *ROOT.glob("orchestrator/**/*.py")]:
        for name, args in re.findall(r'faults\.point\("([\w.]+)"(.*)\)', path.read_text()):
            calls.setdefault(name, set()).update(re.findall(r"(\w+)=", args))
    for name, keys in calls.items():
        assert name in faults.POINTS, name
        assert keys <= set(faults.POINTS[name][1]), (name, keys)
    assert set(faults.POINTS) - set(calls) <= {"stream.shard_open"}
    contracts = (ROOT / "docs" / "contracts.md").read_text()
    assert all(f"`{name}`" in contracts for name in faults.POINTS)


def test_a_usr2_aimed_at_a_step_preempts_a_real_run_exactly_there(demo_corpus, tmp_path):
    """What the scale rehearsal does: `train.step=signal:USR2@step=3` in a real training process stops
    it at step 3 (checkpoint step-3, exit 75, progress `preempted`); the rerun without the fault ends."""
    import json

    import yaml

    from training.preempt import EXIT_PREEMPTED

    cfg = {"name": "fault", "model": {"name": "rwsa-xs", "options": {"hidden": 4, "num_blocks": 1, "level_heads": 2,
                                                                    "middle_heads": 4}},
           "data": {"train": str(demo_corpus / "train"), "valid": None, "segment_samples": 1800, "batch_size": 2},
           "loss": {"discriminator": False},
           "trainer": {"max_steps": 5, "ckpt_every": 100, "log_every": 100, "num_threads": 1},
           "mlflow": {"enabled": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "training.run", "--config", str(path), "--workdir", str(tmp_path / "run")]
    env = {**{k: v for k, v in os.environ.items() if k != faults.ENV_VAR},
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, cwd=ROOT, env={**env, "SE_FAULTS": "train.step=signal:USR2@step=3"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_PREEMPTED, r.stderr[-3000:]
    assert "fault injected at train.step (hit 4, step=3, rank=0): signal:SIGUSR2" in r.stderr
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000003"]
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["state"] == "preempted"
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["step"] == 5
