"""Ray executor: each cell is one Ray task that runs the cell's module command as a child
process (torchrun with ``launcher.nproc`` processes when > 1), so the run is byte-for-byte the same
as under SLURM or locally (same checkpoints, exit codes, MLflow). Ray only places and schedules it:
the task asks for ``nproc × cpus_per_task`` CPUs and ``gpus_per_node`` GPUs; cells spanning several
nodes are refused (use SLURM for those).

``RAY_ADDRESS`` (or ``ray start --head`` beforehand) selects a cluster; otherwise a local Ray is
started. Inside a SLURM allocation, see ``sweeps/README.md`` ("Ray inside SLURM").
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.launchers import base
from orchestrator.launchers.local import record_end, record_start


def _run_cell_process(cmd: list[str], cell_dir: str, env: dict, cwd: str) -> int:
    """Inside the Ray worker: run the cell's module command from the submitter's folder."""
    with open(os.path.join(cell_dir, "launcher.log"), "ab") as logf:
        return subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **env},
                              cwd=cwd).returncode


def run_ray(sweep_dir: Path, cells: list, *, out: Callable[[str], None] = print, address: str | None = None) -> int:
    """Run ``[(Cell, cell_dir), ...]`` as Ray tasks; returns 0 when every cell ended done."""
    for cell, _ in cells:
        if cell.config["launcher"]["nodes"] > 1:
            raise UserError(f"cell {cell.id}: launcher.nodes > 1 is not supported by the Ray executor")
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
    while pending or inflight:
        while pending and len(inflight) < max_parallel:
            cell, cdir = pending.pop(0)
            lc = cell.config["launcher"]
            cmd = base.cell_command(cdir, nproc=lc["nproc"])
            ref = remote.options(num_cpus=lc["nproc"] * lc["cpus_per_task"], num_gpus=lc["gpus_per_node"]).remote(
                cmd, str(cdir), env, os.getcwd())
            record_start(sweep_dir, cell.id, cdir, f"ray:{ref.task_id().hex()[:12]}")
            inflight[ref] = (cell, cdir)
            out(f"started {cell.id} on Ray")
        done, _ = ray.wait(list(inflight), num_returns=1, timeout=10.0)
        for ref in done:
            cell, cdir = inflight.pop(ref)
            try:
                rc = int(ray.get(ref))
            except ray.exceptions.RayError as e:
                out(f"{cell.id}: Ray task failed: {e}")
                rc = 1
            states[cell.id] = record_end(sweep_dir, cell.id, cdir, rc)
            out(f"{cell.id}: {states[cell.id]} (exit {rc})")
    return 0 if all(s == "done" for s in states.values()) else 1
