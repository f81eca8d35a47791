"""Ray executor: every cell is a Ray Train run (`ray_train`), fitted by a Ray task of its own
(`ray_train.fit_cell_task`, no CPUs): ``launcher.nodes × launcher.nproc`` workers (one for a
one-process cell), each asking for ``cpus_per_task`` CPUs (and GPUs: a one-process cell
``gpus_per_node``, a DDP rank one), each running the cell's module command as that rank's child
process, so the run is the same as under SLURM or locally (same checkpoints, exit codes, MLflow).
A worker whose training process fails makes Ray Train restart the group, which resumes from the
newest complete checkpoint. Placement is Ray's: up to ``max_parallel`` cells are handed to Ray at
once, in the sweep's order, and each starts as soon as the cluster has the resources it asks for,
so a DDP group and one-process cells run side by side when they fit. While a cell runs, its
workers report its step, losses and validation metrics to Ray (``ray.train.report``: the
dashboard, ``Result.metrics``).

The cells go through the same loop as local ones (`cell_loop.run_cells`): Ctrl-C (or SIGTERM to
this command) starts no further cell and sends SIGTERM to every rank's training process of the
running cells, on whichever node (`ray_train.signal_cell`): they checkpoint at a step boundary and
exit 75 (``preempted``; rerun to resume); a second Ctrl-C abandons them.

``RAY_ADDRESS`` (or ``ray start --head`` beforehand) selects a cluster; otherwise a local Ray is
started. Inside a SLURM allocation, see ``sweeps/README.md`` ("Ray inside SLURM").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from orchestrator.launchers import ray_train
from orchestrator.launchers.cell_loop import Backend, Running, run_cells
from orchestrator.launchers.local import LocalLauncher

ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}


def is_ddp(cell) -> bool:
    return cell.config.launcher.nodes * cell.config.launcher.nproc > 1


class RayBackend(Backend):
    """Every cell is a Ray task fitting a Ray Train group (`ray_train.fit_cell_task`), ``max_parallel``
    at a time; Ray places the groups by their resources."""

    def __init__(self, cells: list, address: str | None = None):
        super().__init__(cells)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                     log_to_driver=False)
        self.ray = ray
        self.fit_task = ray.remote(ray_train.fit_cell_task).options(num_cpus=0, max_retries=0)
        self.signalled: dict[int, set] = {}  # signal -> (node, pid) of the training processes it reached

    def start(self, cell, cell_dir: Path) -> Running:
        ray_train.clear_pids(cell_dir)
        ref = self.fit_task.remote(str(cell_dir), cell.config.launcher, os.getcwd(), ENV)
        return Running(cell, cell_dir, ref, f"ray:{ref.task_id().hex()[:12]}")

    def describe(self, r: Running) -> str:
        lc = r.cell.config.launcher
        where = f"Ray Train ({lc.nodes} x {lc.nproc} workers)" if is_ddp(r.cell) else "Ray Train (1 worker)"
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
