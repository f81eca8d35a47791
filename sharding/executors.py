"""Where shard tasks run: local processes, Ray, or a SLURM array (each array task a range of shards).

Every executor calls the same ``writer.build_shard`` per task, so they write identical bytes.
The SLURM path writes ``<out>/.build/plan.json`` plus an sbatch script whose tasks run
``python -m sharding.build_job --plan PLAN`` (the job alone can rerun them), and a dependent
``--finalize`` job that writes the manifests.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shlex
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sharding.errors import SourceError
from sharding.tario import atomic_write_bytes
from sharding.writer import ShardTask, build_shard

log = logging.getLogger(__name__)


def run_local(recipe: str, options: dict, out_dir: Path, tasks: list[ShardTask], num_workers: int) -> list[dict]:
    if num_workers < 1:
        raise SourceError(f"num_workers: must be >= 1, got {num_workers}")
    if num_workers == 1 or len(tasks) <= 1:
        return [build_shard(recipe, options, out_dir, t) for t in tasks]
    ctx = mp.get_context("spawn")  # no inherited threads/locks from the caller
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
        futures = [pool.submit(build_shard, recipe, options, out_dir, t) for t in tasks]
        return [f.result() for f in futures]


def run_ray(recipe: str, options: dict, out_dir: Path, tasks: list[ShardTask], num_workers: int) -> list[dict]:
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=num_workers, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(build_shard)
        return ray.get([remote.remote(recipe, options, str(out_dir), t) for t in tasks])
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------- SLURM
SLURM_DEFAULTS: dict[str, Any] = {
    "array_tasks": 0,  # 0: one array task per shard
    "max_parallel": 64,
    "partition": "",
    "account": "",
    "time_min": 60,
    "cpus_per_task": 1,
    "mem_gb": 4,
    "python": sys.executable,
}


def slurm_params(slurm: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(slurm) - set(SLURM_DEFAULTS))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in SLURM_DEFAULTS.items())
        raise SourceError(f"slurm option(s) {', '.join(unknown)} unknown; valid: {valid}")
    return {**SLURM_DEFAULTS, **slurm}


def task_ranges(num_tasks: int, array_tasks: int) -> list[tuple[int, int]]:
    """Split ``num_tasks`` shard tasks into ``array_tasks`` contiguous ranges (0: one each)."""
    n = num_tasks if array_tasks <= 0 else min(array_tasks, num_tasks)
    return [(i * num_tasks // n, (i + 1) * num_tasks // n) for i in range(n)]


def make_sbatch(plan_path: Path, num_array: int, p: dict[str, Any], *, finalize: bool = False) -> str:
    """The sbatch script of the array (or of the finalize job): a pure function of its arguments."""
    log_dir = plan_path.parent / "logs"
    lines = ["#!/bin/bash", f"#SBATCH --job-name={'shard-finalize' if finalize else 'shard-build'}"]
    if not finalize:
        lines.append(f"#SBATCH --array=0-{num_array - 1}%{p['max_parallel']}")
    lines += [
        f"#SBATCH --time={int(p['time_min'])}",
        f"#SBATCH --cpus-per-task={int(p['cpus_per_task'])}",
        f"#SBATCH --mem={int(p['mem_gb'])}G",
        f"#SBATCH --output={shlex.quote(str(log_dir / ('finalize-%j.log' if finalize else 'build-%A_%a.log')))}",
    ]
    if p["partition"]:
        lines.append(f"#SBATCH --partition={shlex.quote(p['partition'])}")
    if p["account"]:
        lines.append(f"#SBATCH --account={shlex.quote(p['account'])}")
    cmd = [p["python"], "-m", "sharding.build_job", "--plan", str(plan_path)]
    if finalize:
        cmd.append("--finalize")
    code_dir = str(Path(__file__).resolve().parent.parent)  # so the job imports this very checkout
    lines += ["set -euo pipefail", f"export PYTHONPATH={shlex.quote(code_dir)}${{PYTHONPATH:+:$PYTHONPATH}}",
              "exec " + " ".join(shlex.quote(c) for c in cmd), ""]
    return "\n".join(lines)


def write_plan(recipe: str, options: dict, out_dir: Path, tasks: list[ShardTask], array_tasks: int) -> Path:
    build_dir = out_dir / ".build"
    (build_dir / "logs").mkdir(parents=True, exist_ok=True)
    plan = {"recipe": recipe, "options": options, "out_dir": str(out_dir.resolve()),
            "tasks": [t.__dict__ for t in tasks], "ranges": task_ranges(len(tasks), array_tasks)}
    path = build_dir / "plan.json"
    atomic_write_bytes(path, json.dumps(plan, indent=1, sort_keys=True).encode())
    return path


def run_slurm(recipe: str, options: dict, out_dir: Path, tasks: list[ShardTask], slurm: dict[str, Any],
              *, dry_run: bool = False) -> dict[str, Any]:
    """Write plan + scripts; unless ``dry_run``, ``sbatch`` the array and a dependent finalize job."""
    p = slurm_params(slurm)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_path = write_plan(recipe, options, out_dir, tasks, int(p["array_tasks"]))
    num_array = len(task_ranges(len(tasks), int(p["array_tasks"])))
    scripts = {"array": make_sbatch(plan_path, num_array, p), "finalize": make_sbatch(plan_path, 1, p, finalize=True)}
    for name, text in scripts.items():
        atomic_write_bytes(plan_path.parent / f"{name}.sbatch", text.encode())
    result: dict[str, Any] = {"plan": str(plan_path), "array_tasks": num_array, "scripts": scripts}
    if dry_run:
        return result
    array_id = _sbatch([str(plan_path.parent / "array.sbatch")])
    final_id = _sbatch([f"--dependency=afterok:{array_id}", str(plan_path.parent / "finalize.sbatch")])
    log.info("submitted shard build array %s (%d tasks) and finalize job %s", array_id, num_array, final_id)
    return {**result, "array_job_id": array_id, "finalize_job_id": final_id}


def _sbatch(args: list[str]) -> str:
    try:
        out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise SourceError("executor=slurm: sbatch not found on PATH (use dry_run to only write the plan)") from None
    except subprocess.CalledProcessError as e:
        raise SourceError(f"sbatch {' '.join(args)} failed: {e.stderr.strip()}") from None
    return out.stdout.strip().split(";")[0]
