"""`orchestrate cancel`: cancel a sweep's queued/running cells (scancel)."""

from __future__ import annotations

import argparse

from orchestrator.cliutil import trailing_positionals
from orchestrator.sweeps.run import cancel_sweep

NAME = "cancel"
HELP = "cancel a sweep's queued or running cells (all, or the named ones)"
EPILOG = """examples:
  orchestrate cancel rwsa_sizes                       # every active cell
  orchestrate cancel rwsa_sizes rwsa-m_s3 rwsa-m_s4   # two cells
  orchestrate sweep sweeps/rwsa_sizes.yaml            # later: resubmits the cancelled ones
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    trailing_positionals(p, "cells")  # `... --root DIR key=value` works too
    p.add_argument("sweep", help="sweep folder or sweep name under --root")
    p.add_argument("cells", nargs="*", help="cell ids (default: every active cell)")
    p.add_argument("--root", default="runs", help="where sweep names are looked up (default: runs)")


def run(args: argparse.Namespace) -> int:
    return cancel_sweep(args.sweep, args.cells or None, root=args.root)
