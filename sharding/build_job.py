"""One task of a shard build planned by ``executors.write_plan``, wherever it runs.

``run_task(plan, i)`` builds the shard range ``plan["ranges"][i]``; ``run_finalize(plan)`` writes
the manifests once every shard exists. The orchestrator's SLURM launcher submits these functions
(submitit) as an array and a dependent job; by hand::

    python -m sharding.build_job --plan PLAN --task I     # I defaults to $SLURM_ARRAY_TASK_ID
    python -m sharding.build_job --plan PLAN --finalize
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from sharding.writer import ShardTask, build_shard, finalize


def run_task(plan_path: str | Path, task_id: int) -> list[dict]:
    plan = json.loads(Path(plan_path).read_text())
    tasks = [ShardTask(**t) for t in plan["tasks"]]
    lo, hi = plan["ranges"][task_id]
    return [build_shard(plan["recipe"], plan["options"], plan["out_dir"], t) for t in tasks[lo:hi]]


def run_finalize(plan_path: str | Path) -> dict:
    plan = json.loads(Path(plan_path).read_text())
    return finalize(plan["out_dir"], plan["recipe"], plan["options"], [ShardTask(**t) for t in plan["tasks"]])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--task", type=int, default=None)
    ap.add_argument("--finalize", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.finalize:
        run_finalize(args.plan)
        return 0
    task = args.task if args.task is not None else int(os.environ["SLURM_ARRAY_TASK_ID"])
    run_task(args.plan, task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
