"""Ray executor: a one-process cell is one Ray task that runs the cell's module command as a child
process, so the run is byte-for-byte the same as under SLURM or locally (same checkpoints, exit
codes, MLflow); the task asks for ``cpus_per_task`` CPUs and ``gpus_per_node`` GPUs. A cell with
``launcher.nodes × launcher.nproc`` > 1 is a Ray Train DDP group (`ray_train`: one worker per
rank, on as many nodes as Ray places them, restarted from the newest checkpoint when a worker
fails); DDP cells run one after another, after the one-process cells were started.

Ctrl-C in the sweep command starts no further cell and sends SIGTERM to the training processes of the
running cells, on whichever node (`ray_train.signal_cell`): they checkpoint at a step boundary and exit
75 (``preempted``, as locally; rerun to resume); a second Ctrl-C abandons them.

``RAY_ADDRESS`` (or ``ray start --head`` beforehand) selects a cluster; otherwise a local Ray is
started. Inside a SLURM allocation, see ``sweeps/README.md`` ("Ray inside SLURM").
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from orchestrator.launchers import base, ray_train
from orchestrator.launchers.local import LocalLauncher, record_end, record_start


def _run_cell_process(cmd: list[str], cell_dir: str, env: dict, cwd: str) -> int:
    """Inside the Ray worker: run the cell's module command from the submitter's folder."""
    with open(os.path.join(cell_dir, "launcher.log"), "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=cwd,
                                preexec_fn=ray_train.die_with_parent)
    ray_train.write_pid(Path(cell_dir), 0, proc.pid)
    return proc.wait()


class _Interrupt:
    """Ctrl-C while cells run on Ray: the first SIGINT sets ``stop`` (start no more cells) and sends
    SIGTERM to the training processes of the cells ``running()`` names; ``relay()`` (called by the
    polling loop) also reaches processes that started after it; a second SIGINT raises
    KeyboardInterrupt."""

    def __init__(self, running: Callable[[], list[Path]], out: Callable[[str], None]):
        self.running, self.out = running, out
        self.stop = False
        self.signalled: set = set()

    def relay(self) -> None:
        if self.stop:
            for cdir in self.running():
                self.signalled |= ray_train.signal_cell(cdir, signal.SIGTERM, skip=self.signalled)

    def on_sigint(self, signum, frame) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        self.out("interrupted: asking the running cells to checkpoint (SIGTERM); Ctrl-C again to abandon them")
        self.relay()


@contextlib.contextmanager
def _relay_interrupt(running: Callable[[], list[Path]], out: Callable[[str], None]) -> Iterator[_Interrupt]:
    """An ``_Interrupt`` that handles SIGINT while the block runs (only in the main thread)."""
    state = _Interrupt(running, out)
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = signal.signal(signal.SIGINT, state.on_sigint)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def run_ray(sweep_dir: Path, cells: list, *, out: Callable[[str], None] = print, address: str | None = None) -> int:
    """Run ``[(Cell, cell_dir), ...]`` as Ray tasks; returns 0 when every cell ended done."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=False)
    remote = ray.remote(_run_cell_process)
    env = {"MLFLOW_DISABLE_TELEMETRY": "true"}
    pending = list(cells)
    max_parallel = max(1, min(c.config["launcher"]["max_parallel"] for c, _ in cells)) if cells else 1
    inflight: dict = {}
    states: dict[str, str] = {}
    ddp = [(c, d) for c, d in pending if c.config["launcher"]["nodes"] * c.config["launcher"]["nproc"] > 1]
    pending = [x for x in pending if x not in ddp]
    current: list[Path] = []  # the DDP cell being fitted
    with _relay_interrupt(lambda: [d for _c, d in inflight.values()] + current, out) as interrupt:
        while (pending and not interrupt.stop) or inflight:  # the one-process cells as Ray tasks
            while pending and len(inflight) < max_parallel and not interrupt.stop:
                cell, cdir = pending.pop(0)
                lc = cell.config["launcher"]
                ray_train.clear_pids(cdir)
                ref = remote.options(num_cpus=lc["cpus_per_task"], num_gpus=lc["gpus_per_node"]).remote(
                    base.cell_command(cdir), str(cdir), env, os.getcwd())
                record_start(sweep_dir, cell.id, cdir, f"ray:{ref.task_id().hex()[:12]}")
                inflight[ref] = (cell, cdir)
                out(f"started {cell.id} on Ray")
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=2.0)
            interrupt.relay()
            for ref in done:
                cell, cdir = inflight.pop(ref)
                try:
                    rc = int(ray.get(ref))
                except ray.exceptions.RayError as e:
                    out(f"{cell.id}: Ray task failed: {e}")
                    rc = 1
                states[cell.id] = record_end(sweep_dir, cell.id, cdir, rc)
                out(f"{cell.id}: {states[cell.id]} (exit {rc})")
        for cell, cdir in ddp:  # then the DDP cells, one at a time, as Ray Train groups
            if interrupt.stop:
                break
            lc = cell.config["launcher"]
            record_start(sweep_dir, cell.id, cdir, f"ray:train-{cell.id}")
            out(f"started {cell.id} on Ray Train ({lc['nodes']} x {lc['nproc']} workers)")
            current[:] = [cdir]
            rc = ray_train.fit_cell(cdir, lc, cwd=os.getcwd(), env=env)
            current.clear()
            states[cell.id] = record_end(sweep_dir, cell.id, cdir, rc)
            out(f"{cell.id}: {states[cell.id]} (exit {rc})")
    if interrupt.stop:
        raise KeyboardInterrupt
    return 0 if all(s == "done" for s in states.values()) else 1


class RayLauncher(LocalLauncher):
    """Cells as Ray tasks driven by this command (blocking); ``job_id`` is ``ray:<task id>``.
    Interrupted and cancelled cells behave as local ones (the driver owns the tasks)."""

    name = "ray"

    def submit(self, cells: list, out: Callable[[str], None] = print) -> int:
        return run_ray(self.sweep_dir, cells, out=out)
