"""`orchestrate plan`: what a sweep will cost (GPU-hours, wall time, job chains, storage, MLflow load)."""

from __future__ import annotations

import argparse

from orchestrator.cliutil import trailing_positionals

NAME = "plan"
HELP = "a sweep's cost before submitting it: steps, GPU-hours, wall time, job chains, storage, MLflow rate"
DESCRIPTION = """Per cell and in total: steps, steps/s, wall time, GPUs and GPU-hours, the number of
jobs chained through the time limit (requeues), checkpoint storage (size x kept), shard data read per
pass over the training split, and MLflow points written per hour. Throughput is measured where the
project has a measurement for the model and device, else estimated from the model's FLOPs at an
assumed utilisation (the output says which; formulas in orchestrator/planner.py)."""
EPILOG = """examples:
  orchestrate plan sweeps/rwsa_sizes.yaml               # on LUMI (profile lumi): 48-hour chains per cell
  orchestrate plan sweeps/baselines.yaml --device h100  # another GPU
  orchestrate plan sweeps/demo.yaml trainer.max_steps=1000
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from orchestrator.planner import DEVICES

    trailing_positionals(p, "overrides")
    p.add_argument("file", help="sweep file (sweeps/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every cell")
    p.add_argument("--executor", choices=("slurm", "local", "ray"), default=None,
                   help="where it would run (default: the sweep file's `executor`)")
    p.add_argument("--device", choices=sorted(DEVICES), default=None,
                   help="GPU kind (default: from the cluster profile: lumi -> mi250x-gcd, cuda -> a100)")
    p.add_argument("--root", default="runs", help="parent folder of the sweep folder (default: runs)")


def cost_text(plan, device: str | None = None) -> str:
    """The cost of a `SweepPlan` as text; a model the planner cannot size says why (the pre-submit
    checks name the cell and key)."""
    from orchestrator.planner import format_costs, plan_costs

    try:
        device, costs = plan_costs(plan, device)
    except ValueError as e:  # e.g. an unknown model
        return f"cost plan unavailable: {e}"
    return format_costs(plan.spec.name, device, costs, plan.tracking.store if plan.tracking else None)


def run(args: argparse.Namespace) -> int:
    from orchestrator.sweeps.plan import build_plan

    plan = build_plan(args.file, executor=args.executor, root=args.root, overrides=args.overrides)
    plan.raise_cell_errors()
    print(cost_text(plan, args.device))
    return 0
