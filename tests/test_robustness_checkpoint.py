"""Checkpoints and run folders under faults (issue 14, cases 9, 10, 12): best/ survives a kill at every
point of its replacement, files follow the umask, and a garbage state.pt, a different model, a --workdir
that is a file or a full disk end in one line and exit 2 -- real training runs (`python -m training.run`)."""

from __future__ import annotations

import shutil
import signal
import stat
import subprocess
import sys

import pytest
import torch
from robustness_helpers import (  # noqa: F401 (fixtures)
    ROOT,
    corpus,
    env,
    error_lines,
    full_disk,
    run,
    tiny_config,
    train_cmd,
    trained_run,
    write_config,
)

from training.checkpoint import MARKER, STATE, CheckpointManager, best_dir, load_file

SAVE_BEST = """
import sys, torch
import training.checkpoint as ck
if sys.argv[2] == "rename":
    ck.exchange_paths = lambda a, b: False   # a file system without RENAME_EXCHANGE: the fallback path
ck.CheckpointManager(sys.argv[1]).save_best({"step": 2, "generator": {"w": torch.full((4,), 2.0)}})
"""


def _best_step(root) -> int:
    folder = best_dir(root)
    assert folder is not None, "no complete best checkpoint"
    return int(load_file(folder / STATE)["step"])


@pytest.mark.parametrize("mode,point", [("exchange", "written"), ("exchange", "swapped"), ("rename", "written"),
                                        ("rename", "moved_old"), ("rename", "moved_new")])
def test_best_survives_a_kill_at_every_point(tmp_path, mode, point):
    root = tmp_path / "ck"
    CheckpointManager(root).save_best({"step": 1, "generator": {"w": torch.full((4,), 1.0)}})
    r = subprocess.run([sys.executable, "-c", SAVE_BEST, str(root), mode], env=env(SE_FAULTS=f"best.{point}=kill"),
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr  # SIGKILLed at that point (no cleanup ran)
    # a reader (enhance/evaluate) finds a complete best at once, even before any repair
    assert _best_step(root) in (1, 2)
    # the next start repairs: best/ itself complete, leftovers gone
    CheckpointManager(root).clean_incomplete()
    assert (root / "best" / MARKER).is_file()
    assert sorted(p.name for p in root.iterdir()) == ["best"]
    expected = 1 if point == "written" else 2  # once the new copy is in place, it is the one kept
    if mode == "rename" and point == "moved_old":
        expected = 2  # the complete new copy (.tmp-best) is preferred over the old one
    assert _best_step(root) == expected


def test_checkpoint_and_run_files_honour_the_umask(corpus, tmp_path):  # noqa: F811
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus))
    r = subprocess.run(["bash", "-c", f"umask 002 && exec {' '.join(train_cmd(cfg, tmp_path / 'run'))}"],
                       cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = tmp_path / "run"
    files = [run_dir / "config.yaml", run_dir / "progress.json", run_dir / "checkpoints/step-000002" / STATE,
             run_dir / "checkpoints/step-000002" / MARKER, run_dir / "checkpoints/best" / STATE]
    assert {str(f.relative_to(run_dir)): oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == \
        {str(f.relative_to(run_dir)): "0o664" for f in files}  # before: 0o600


def test_garbage_state_pt_is_one_line(trained_run, tmp_path):  # noqa: F811
    wd = tmp_path / "run"
    shutil.copytree(trained_run, wd)
    (wd / "checkpoints/step-000002" / STATE).write_bytes(b"\x80\x04garbage" * 50)
    r = run(train_cmd(wd / "config.yaml", wd, "trainer.max_steps=4"))
    assert r.returncode == 2
    (line,) = error_lines(r.stderr)
    assert "step-000002/state.pt: not a readable checkpoint file" in line


def test_resuming_with_a_different_model_is_one_line(trained_run, tmp_path):  # noqa: F811
    wd = tmp_path / "run"
    shutil.copytree(trained_run, wd)
    r = run(train_cmd(wd / "config.yaml", wd, "trainer.max_steps=4", "model.options.hidden=8"))
    assert r.returncode == 2
    (line,) = error_lines(r.stderr)
    assert "holds a checkpoint of model 'rwsa-xs'" in line and "use another --workdir" in line


def test_workdir_that_is_a_file(corpus, tmp_path):  # noqa: F811
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus))
    (tmp_path / "f").write_text("x")
    r = run(train_cmd(cfg, tmp_path / "f"))
    assert r.returncode == 2
    assert error_lines(r.stderr) == [f"error: --workdir {tmp_path / 'f'}: {tmp_path / 'f'} is a file, expected a folder"]
    r = run([sys.executable, "-m", "orchestrator.cli", "train", "rwsa-xs", "--config", str(cfg),
             "--workdir", str(tmp_path / "f" / "sub")])
    assert r.returncode == 2 and len(error_lines(r.stderr)) == 1


def test_full_disk_during_a_checkpoint(trained_run, tmp_path):  # noqa: F811
    size_kb = sum(f.stat().st_size for f in trained_run.rglob("*") if f.is_file()) // 1024 + 1000
    wd = tmp_path / "full"
    with full_disk(wd, size_kb) as (preexec, errname):
        shutil.copytree(trained_run, wd, dirs_exist_ok=True)
        r = subprocess.run(train_cmd(wd / "config.yaml", wd, "trainer.max_steps=4"), cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=600, preexec_fn=preexec)
        assert r.returncode == 2, r.stderr[-3000:]
        (line,) = error_lines(r.stderr)
        assert "newest complete checkpoint is intact" in line
        # the earlier checkpoint still loads, nothing half-written is taken for a checkpoint
        assert CheckpointManager(wd / "checkpoints").complete_steps() == [2]
        assert load_file(wd / "checkpoints/step-000002" / STATE)["step"] == 2
        assert _best_step(wd / "checkpoints") == 2
    print("simulated with", errname)
