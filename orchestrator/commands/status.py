"""`orchestrate status`: the state of every cell of a sweep."""

from __future__ import annotations

import argparse
import json

from orchestrator.sweeper import format_status, sweep_status

NAME = "status"
HELP = "show a sweep's cells: state, step/total, best val PESQ, job id, attempts, MLflow run"
EPILOG = """examples:
  orchestrate status rwsa_sizes              # a sweep name under runs/
  orchestrate status runs/rwsa_sizes --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep folder or sweep name under --root")
    p.add_argument("--root", default="runs", help="where sweep names are looked up (default: runs)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")


def run(args: argparse.Namespace) -> int:
    rows = sweep_status(args.sweep, root=args.root)
    print(json.dumps(rows, indent=1) if args.json else format_status(rows))
    return 0
