"""Ray executor: a one-process cell is one Ray task that runs the cell's module command as a child
process, so the run is byte-for-byte the same as under SLURM or locally (same checkpoints, exit
codes, MLflow); the task asks for ``cpus_per_task`` CPUs and ``gpus_per_node`` GPUs. A cell with
``launcher.nodes × launcher.nproc`` > 1 is a Ray Train DDP group (`ray_train`: one worker per
rank, on as many nodes as Ray places them, restarted from the newest checkpoint when a worker
fails), fitted by a Ray task of its own (`ray_train.fit_cell_task`, no CPUs). Placement is Ray's:
up to ``max_parallel`` cells are handed to Ray at once, in the sweep's order, and each starts as soon
as the cluster has the CPUs/GPUs it asks for, so a DDP group and one-process cells run side by side
when they fit. While a DDP cell runs, its workers report its step, losses and validation metrics to
Ray (``ray.train.report``: the dashboard, ``Result.metrics``).

The cells go through the same loop as local ones (`cell_loop.run_cells`): Ctrl-C (or SIGTERM to
this command) starts no further cell and sends SIGTERM to the training processes of the running cells, on whichever node
(`ray_train.signal_cell`): they checkpoint at a step boundary and exit 75 (``preempted``; rerun to
resume); a second Ctrl-C abandons them.

``RAY_ADDRESS`` (or ``ray start --head`` beforehand) selects a cluster; otherwise a local Ray is
started. Inside a SLURM allocation, see ``sweeps/README.md`` ("Ray inside SLURM").
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from orchestrator.launchers import base, ray_train
from orchestrator.launchers.cell_loop import Backend, Running, run_cells
from orchestrator.launchers.local import LocalLauncher

ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}


def _run_cell_process(cmd: list[str], cell_dir: str, env: dict, cwd: str) -> int:
    """Inside the Ray worker: run the cell's module command from the submitter's folder."""
    with open(os.path.join(cell_dir, "launcher.log"), "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=cwd,
                                preexec_fn=ray_train.die_with_parent)
    ray_train.write_pid(Path(cell_dir), 0, proc.pid)
    return proc.wait()


def is_ddp(cell) -> bool:
    return cell.config.launcher.nodes * cell.config.launcher.nproc > 1


class RayBackend(Backend):
    """Every cell is a Ray task, ``max_parallel`` at a time: a one-process cell runs its command, a DDP
    cell fits a Ray Train group (`ray_train.fit_cell_task`); Ray places them by their resources."""

    def __init__(self, cells: list, address: str | None = None):
        super().__init__(cells)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                     log_to_driver=False)
        self.ray = ray
        self.task = ray.remote(_run_cell_process)
        self.fit_task = ray.remote(ray_train.fit_cell_task).options(num_cpus=0, max_retries=0)
        self.signalled: dict[int, set] = {}  # signal -> (node, pid) of the training processes it reached

    def start(self, cell, cell_dir: Path) -> Running:
        ray_train.clear_pids(cell_dir)
        lc = cell.config.launcher
        if is_ddp(cell):
            ref = self.fit_task.remote(str(cell_dir), lc, os.getcwd(), ENV)
        else:
            ref = self.task.options(num_cpus=lc.cpus_per_task, num_gpus=lc.gpus_per_node).remote(
                base.cell_command(cell_dir), str(cell_dir), ENV, os.getcwd())
        return Running(cell, cell_dir, ref, f"ray:{'train-' if is_ddp(cell) else ''}{ref.task_id().hex()[:12]}")

    def describe(self, r: Running) -> str:
        lc = r.cell.config.launcher
        where = f"Ray Train ({lc.nodes} x {lc.nproc} workers)" if is_ddp(r.cell) else "Ray"
        return f"started {r.cell.id} on {where}"

    def ended(self, running: list[Running], timeout_s: float) -> list[tuple[Running, int]]:
        refs = {r.handle: r for r in running}
        done, _ = self.ray.wait(list(refs), num_returns=1, timeout=timeout_s)
        out = []
        for ref in done:
            try:
                rc = int(self.ray.get(ref))
            except self.ray.exceptions.RayError as e:
                with open(refs[ref].cell_dir / "launcher.log", "a") as f:
                    f.write(f"Ray task failed: {e}\n")
                rc = 1
            out.append((refs[ref], rc))
        return out

    def signal(self, running: list[Running], sig: int) -> None:
        done = self.signalled.setdefault(int(sig), set())
        for r in running:
            done |= ray_train.signal_cell(r.cell_dir, sig, skip=done)


class RayLauncher(LocalLauncher):
    """Cells as Ray tasks driven by this command (blocking); ``job_id`` is ``ray:<task id>``.
    Interrupted and cancelled cells behave as local ones (the driver owns the tasks)."""

    name = "ray"

    def submit(self, cells: list, out: Callable[[str], None] = print) -> int:
        return run_cells(self.sweep_dir, cells, RayBackend(cells), out=out)
