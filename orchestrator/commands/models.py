"""`orchestrate models`: list the models with parameters, GFLOPs and CPU forward time."""

from __future__ import annotations

import argparse
import json

from orchestrator.errors import UserError

NAME = "models"
HELP = ("the model catalogue: every registered model with parameters, GFLOPs per 2 s and one CPU forward "
        "(measured inference on a test set or a checkpoint: `report efficiency`)")
EPILOG = """columns:
  params         trainable parameters (shared modules once)
  GFLOPs/2s      full count, G multiply-accumulates for 2 s of 16 kHz audio, batch 1
  GFLOPs(thop)   the papers' convention (thop 0.1.1 rules) on the papers' input:
                 (1, 256, 256) spectra for RWSA-MambaUNet, 2 s (T = 321) for the others
  fwd CPU s      one no-grad forward on 2 s, batch 1 (skip with --no-time)
examples:
  orchestrate models                              # every model (slow on CPU: one or two forwards each)
  orchestrate models --names rwsa-xs,mambattention
  orchestrate models --json --no-time             # machine-readable, without the timing forward
For timed inference (RTF) on a test set, or of a trained checkpoint: `orchestrate report efficiency`.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--names", help="comma-separated model names (default: every registered model)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of objects")
    p.add_argument("--no-time", action="store_true", help="skip the CPU forward timing")


def run(args: argparse.Namespace) -> int:
    from training.models import list_models  # torch: only when the command runs
    from training.models.summary import describe_models, format_table

    names = None
    if args.names:
        names = [n.strip() for n in args.names.split(",") if n.strip()]
        unknown = [n for n in names if n not in list_models()]
        if unknown:
            raise UserError(f"--names: unknown model {unknown[0]!r}; known: {', '.join(list_models())}")
    rows = describe_models(names, time_forward=not args.no_time)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
