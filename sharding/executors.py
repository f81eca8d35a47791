"""Where shard tasks run in this process's machine or Ray cluster, and the plan a SLURM array reads.

``run_local`` / ``run_ray`` call one function (``writer.build_shard``) per task in a process pool
or as Ray tasks, so every executor writes identical bytes; they take the function as an argument
and import nothing from the writer (no import cycle). A SLURM build is planned here
(``write_plan``: ``<out>/.build/plan.json``, task ranges) and submitted by the orchestrator's SLURM
launcher with the cluster profile (``orchestrate shard build --executor slurm``); each array task
calls ``build_job.run_task(plan, i)``, a dependent job ``build_job.run_finalize(plan)``. This
package never writes sbatch text and never imports the orchestrator.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sharding.errors import SourceError
from sharding.tario import atomic_write_bytes

PLAN = "plan.json"


def run_local(fn: Callable[..., dict], args: list[tuple], num_workers: int) -> list[dict]:
    """``[fn(*a) for a in args]`` in ``num_workers`` spawned processes (in order)."""
    if num_workers < 1:
        raise SourceError(f"num_workers: must be >= 1, got {num_workers}")
    if num_workers == 1 or len(args) <= 1:
        return [fn(*a) for a in args]
    ctx = mp.get_context("spawn")  # no inherited threads/locks from the caller
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
        futures = [pool.submit(fn, *a) for a in args]
        return [f.result() for f in futures]


def run_ray(fn: Callable[..., dict], args: list[tuple], num_workers: int) -> list[dict]:
    """``fn(*a)`` as one-CPU Ray tasks (a local Ray with ``num_workers`` CPUs unless connected)."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=num_workers, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(fn)
        return ray.get([remote.remote(*a) for a in args])
    finally:
        if started:
            ray.shutdown()


def task_ranges(num_tasks: int, array_tasks: int) -> list[tuple[int, int]]:
    """Split ``num_tasks`` shard tasks into ``array_tasks`` contiguous ranges (0: one each)."""
    n = num_tasks if array_tasks <= 0 else min(array_tasks, num_tasks)
    return [(i * num_tasks // n, (i + 1) * num_tasks // n) for i in range(n)]


def write_plan(recipe: str, options: dict, out_dir: Path, tasks: list, array_tasks: int) -> Path:
    """``<out>/.build/plan.json``: recipe, options, every shard task and the array's task ranges."""
    build_dir = Path(out_dir) / ".build"
    (build_dir / "logs").mkdir(parents=True, exist_ok=True)
    plan: dict[str, Any] = {"recipe": recipe, "options": options, "out_dir": str(Path(out_dir).resolve()),
                            "tasks": [t.__dict__ for t in tasks], "ranges": task_ranges(len(tasks), array_tasks)}
    path = build_dir / PLAN
    atomic_write_bytes(path, json.dumps(plan, indent=1, sort_keys=True).encode())
    return path
