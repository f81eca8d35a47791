"""`orchestrate status`: the state of every cell of a sweep, its rate and ETA, and a sweep total."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "status"
HELP = "show a sweep's cells: state, step/total, steps/s, ETA, attempts, last/best val PESQ, and a total"
DESCRIPTION = """Per cell: state ("running (evaluating)" while the trained run is evaluated on its
test sets), step/total, steps/s over the recent window (from the cell's progress.json, kept across
requeues), ETA of the remaining compute (remaining steps / rate, through any number of requeues,
queue waits not included), job attempts, last and best validation PESQ, job id, MLflow run. Last
line: the sweep total (steps done, summed rate of the running cells, ETA of the remaining steps at
that rate)."""
EPILOG = """examples:
  orchestrate status rwsa_sizes              # a sweep name under runs/
  orchestrate status runs/rwsa_sizes --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep folder or sweep name under --root")
    p.add_argument("--root", default="runs", help="where sweep names are looked up (default: runs)")
    p.add_argument("--json", action="store_true", help="print JSON rows (with rate, eta_s, last_val_pesq) instead")


def run(args: argparse.Namespace) -> int:
    from orchestrator.ledger import Ledger
    from orchestrator.mlflow_sweep import sweep_server_problem
    from orchestrator.sweeps.status import format_table, resolve_sweep_dir, status_rows

    rows = status_rows(args.sweep, root=args.root)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    problem = sweep_server_problem(Ledger(resolve_sweep_dir(args.sweep, args.root)).read().get("mlflow") or {})
    if problem:  # the jobs cannot log, compare/ui cannot read: say so (exit 2)
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0
