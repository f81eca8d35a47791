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


def plan_text(file, *, executor=None, overrides=None, root="runs", device=None) -> str:
    from orchestrator.planner import format_costs, plan_costs
    from orchestrator.sweeper import plan_sweep

    plan = plan_sweep(file, executor=executor, root=root, overrides=list(overrides or []), dry_run=True)
    device, costs = plan_costs(plan, device)
    return format_costs(plan.spec.name, device, costs)


def run(args: argparse.Namespace) -> int:
    print(plan_text(args.file, executor=args.executor, overrides=args.overrides, root=args.root, device=args.device))
    return 0
