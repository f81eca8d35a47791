"""What runs in each SLURM task of a sweep cell: the callable that submitit pickles (``run_cell``).

submitit starts ``nodes × tasks_per_node`` tasks per array task (``srun ... python -u -m
submitit.core._submit FOLDER``); each loads this callable and calls it. It runs the cell's module
command (``python -m training.run --config CELL/config.yaml --workdir CELL``, `base.cell_command`)
as a child process, so the run is the same as under the local and Ray launchers.

Signals: submitit installs its own SIGUSR2 handler (rank 0 checkpoints the *callable* and requeues
at once, mid-step) and ignores SIGTERM. ``run_cell`` replaces both, first thing, with handlers that
only record the signal and pass it on to the training process, whose own handler
(`training.preempt`) makes every rank agree at a step boundary, checkpoint and exit 75. So the
project's protocol takes precedence and submitit's checkpoint/requeue never runs.

Requeue: each task records its exit code in ``CELL/.ranks/<job>.<restart>/<rank>``; rank 0 waits
until every rank has recorded one (they exit only after the checkpoint's final barrier), writes
``CELL/exit_code`` (+ ``terminated`` when it got SIGTERM: scancel / preemption) and the end line of
``CELL/attempts.log``, and on exit 75 without SIGTERM runs ``scontrol requeue`` for its own (array)
job, which restarts the same array task. The task then exits with the run's code (SystemExit is
not caught by submitit, so exit 75 reaches SLURM as is).

Imports the standard library and the project's own small modules only (`common.atomic`,
`common.rundir`, `common.signals`, `base.cell_command`): no omegaconf, no torch, so the job starts
fast and never imports torch outside the training process (tests/test_launchers.py checks it with
both blocked).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.atomic import atomic_write_text
from common.rundir import ATTEMPTS_FILE, EXIT_CODE_FILE, EXIT_PREEMPTED
from common.signals import STOP_SIGNALS
from orchestrator.launchers.base import cell_command

RANK_WAIT_S = 120.0  # rank 0 waits this long for the other ranks' exit codes


class _Relay:
    """Record signals and forward them to the training process."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.received: list[int] = []

    def install(self) -> _Relay:
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        if self.child is not None and self.child.poll() is None:
            try:
                self.child.send_signal(signum)
            except ProcessLookupError:
                pass

    @property
    def terminated(self) -> bool:
        return signal.SIGTERM in self.received


def task_id(env=os.environ) -> str:
    """``ARRAYJOB_TASK`` for an array task, else the job id (what scontrol/squeue call it)."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "0")


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _append(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def run_cell(cell_dir: str, task_env: dict[str, str] | None = None, requeue: bool = True) -> int:
    """Run the cell's training command on this SLURM task; exits with its code (0 returns)."""
    relay = _Relay().install()
    cdir = Path(cell_dir)
    env = os.environ
    rank, ntasks = int(env.get("SLURM_PROCID", "0")), int(env.get("SLURM_NTASKS", "1"))
    job, restart = task_id(), env.get("SLURM_RESTART_COUNT", "0")
    ranks_dir = cdir / ".ranks" / f"{job}.{restart}"
    if rank == 0:
        (cdir / EXIT_CODE_FILE).unlink(missing_ok=True)
        _append(cdir / ATTEMPTS_FILE,
                f"{_stamp()} start {job} restart={restart} nodes={env.get('SLURM_JOB_NODELIST', '?')}")
    child_env = dict(env)
    for k, v in (task_env or {}).items():  # per task: $SLURM_LOCALID etc. expand here
        child_env[k] = os.path.expandvars(v)
    relay.child = subprocess.Popen(cell_command(cdir, python=sys.executable), env=child_env)
    for s in relay.received:  # a signal that came before the child existed
        relay.child.send_signal(s)
    rc = relay.child.wait()
    rc = 128 - rc if rc < 0 else rc  # killed by signal N: 128+N, as a shell reports it
    ranks_dir.mkdir(parents=True, exist_ok=True)
    (ranks_dir / str(rank)).write_text(f"{rc}\n")
    if rank == 0:
        rc = _gather(ranks_dir, ntasks, rc)
        # the exit code, then 'terminated' when the job was told to stop (scancel / preemption)
        atomic_write_text(cdir / EXIT_CODE_FILE, f"{rc}\n" + ("terminated\n" if relay.terminated else ""))
        _append(cdir / ATTEMPTS_FILE, f"{_stamp()} end {job} rc={rc}")
        shutil.rmtree(ranks_dir, ignore_errors=True)
        if rc == EXIT_PREEMPTED:
            if not requeue:
                print("run checkpointed; requeue disabled: orchestrate resume resubmits it", flush=True)
            elif relay.terminated:
                print(f"run checkpointed after TERM (scancel or preemption): not requeueing {job} myself", flush=True)
            else:
                print(f"run checkpointed (preempted or out of time): requeueing {job}", flush=True)
                r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"requeue of {job} failed ({r.stderr.strip()}): orchestrate sweep/resume resubmits it",
                          file=sys.stderr, flush=True)
    if rc != 0:
        sys.exit(rc)
    return rc


def _gather(ranks_dir: Path, ntasks: int, own: int) -> int:
    """Rank 0: wait (bounded) for every rank's exit code; the first non-zero one wins."""
    deadline = time.monotonic() + RANK_WAIT_S
    while len(list(ranks_dir.iterdir())) < ntasks and time.monotonic() < deadline:
        time.sleep(0.2)
    codes = []
    for f in sorted(ranks_dir.iterdir()):
        try:
            codes.append(int(f.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            codes.append(1)
    if len(codes) < ntasks:
        return own if own != 0 else 1  # a rank vanished without an exit code
    return next((c for c in codes if c != 0), own)
