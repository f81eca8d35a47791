"""`orchestrate resume`: resubmit a sweep's unfinished cells (same as rerunning its sweep command)."""

from __future__ import annotations

import argparse

from orchestrator.sweeps.run import resume_sweep

NAME = "resume"
HELP = "resume a sweep: resubmit its failed, cancelled and preempted cells"
EPILOG = """examples:
  orchestrate resume rwsa_sizes
  orchestrate resume /scratch/me/runs/baselines
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep folder or sweep name under --root")
    p.add_argument("--root", default="runs", help="where sweep names are looked up (default: runs)")


def run(args: argparse.Namespace) -> int:
    return resume_sweep(args.sweep, root=args.root)
