"""Preemption with worker processes: USR1/USR2/TERM sent to the whole process group (as SLURM signals
every process of a step without `B:`, and `scancel` sends TERM) must not kill DataLoader workers
(data.num_workers=2), PESQ workers (discriminator on) or multiprocessing's resource tracker and
forkserver; the main process checkpoints and exits 75 (resuming from it: tests/test_training.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.preempt import EXIT_PREEMPTED

ROOT = Path(__file__).resolve().parents[1]
TINY = "model.options={hidden: 4, num_blocks: 1, level_heads: 2, middle_heads: 4}"


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_group_signal_with_workers_checkpoints_and_exits_75(journey_corpus, tmp_path, sig):
    db = tmp_path / "mlflow.db"
    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "training.run", "--workdir", str(work), "model.name=rwsa-xs", TINY,
           f"data.train={journey_corpus / 'train'}", f"data.valid={journey_corpus / 'valid'}",
           "data.segment_samples=1800", "data.batch_size=2", "data.valid_limit=1", "data.num_workers=2",
           "loss.discriminator=true", "trainer.pesq_workers=1", "trainer.max_steps=400", "trainer.val_every=0",
           "trainer.ckpt_every=1000", "trainer.log_every=1", "trainer.num_threads=1",
           f"mlflow.tracking_uri=sqlite:///{db}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    log = work / "logs" / "rank-0.log"
    deadline = time.time() + 300
    while not (log.is_file() and "step 2/" in log.read_text()):  # training, with both worker kinds alive
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.time() < deadline, "no training step logged"
        time.sleep(0.3)
    workers = _children(p.pid)
    assert len(workers) >= 3, workers  # 2 DataLoader workers + >= 1 PESQ worker (+ forkservers)
    os.killpg(p.pid, sig)
    _, err = p.communicate(timeout=300)
    assert p.returncode == EXIT_PREEMPTED, err[-4000:]
    assert "killed by signal" not in err and "Traceback" not in err, err[-4000:]
    progress = json.loads((work / "progress.json").read_text())
    assert progress["state"] == "preempted" and 2 <= progress["step"] < 400
    step = progress["step"]
    assert (work / "checkpoints" / f"step-{step:06d}" / "COMPLETE").is_file()


def test_a_process_left_with_live_data_workers_still_exits(tmp_path):
    """The workers ignore SIGTERM (above), and multiprocessing ends daemonic children at exit with
    SIGTERM and then waits: a process that exits with a stream's workers still running (a crash, a
    caller that never closed it) would wait forever. It exits at once, its workers gone."""
    script = f"""
import os, sys
from sharding.recipes.demo import prepare_demo
from sharding.stream import TrainStream
from training.run import start_mp_helpers
prepare_demo({str(tmp_path / 'c')!r}, speech="procedural", train_clips=6, valid_clips=2, test_clips=2,
             shard_samples=3, min_seconds=0.6, max_seconds=0.8)
start_mp_helpers()
s = TrainStream({str(tmp_path / 'c')!r}, segment_samples=4000, batch_size=2, seed=0, rank=0, world_size=1,
                num_workers=1)
next(iter(s))
import multiprocessing as mp
print("workers", [p.pid for p in mp.active_children()], flush=True)
"""  # noqa: E501
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - t0 < 100
    pids = [int(p) for p in done.stdout.split("[", 1)[1].split("]")[0].split(",") if p.strip()]
    assert pids  # there was a live worker at exit
    assert not any(Path(f"/proc/{p}").exists() for p in pids)
