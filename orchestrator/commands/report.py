"""`orchestrate report efficiency`: params, GFLOPs and inference time per model (paper Table VI)."""

from __future__ import annotations

import argparse
import json

from orchestrator.cliutil import positive_int

NAME = "report"
HELP = ("reports: `efficiency` = paper Table VI, measured: inference time and RTF on a test set, of models or "
        "trained checkpoints, and a finished sweep's training GPU-hours (the catalogue of models: `models`)")
EPILOG = """examples:
  orchestrate report efficiency                                   # every registered generator, synthetic 2 s clips
  orchestrate report efficiency --models rwsa-xs,mambattention --testset data/demo/test --limit 20
  orchestrate report efficiency --models runs/demo/cells/rwsa-xs_s0 --json   # a trained checkpoint
  orchestrate report efficiency --sweep runs/demo              # training GPU-hours per model, from MLflow
For the papers' accuracy tables over seeds use `orchestrate compare SWEEP`; for the list of registered
models with their sizes (no test set, no checkpoint) `orchestrate models`.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["efficiency"], help="which report")
    p.add_argument("--models", help="comma-separated model names or checkpoint paths (default: all generators)")
    p.add_argument("--testset", help="time inference on this test set (default: synthetic 2 s clips)")
    p.add_argument("--clips", type=positive_int, default=3, help="synthetic clips timed when no test set is given")
    p.add_argument("--limit", type=positive_int, help="time at most N files of the test set")
    p.add_argument("--sweep", help="a finished sweep (folder or name): its training time in GPU-hours per model "
                                   "from its MLflow runs (Table VI's Training Time); alone, no inference timing")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for --sweep (default: the ledger's)")
    p.add_argument("--root", default="runs", help="folder holding sweep folders (default runs/)")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")


def run(args: argparse.Namespace) -> int:
    if args.sweep:
        from orchestrator.report import format_training_time, training_time_rows

        training = training_time_rows(args.sweep, tracking_uri=args.tracking_uri, root=args.root)
        if not args.models:
            print(json.dumps(training, indent=2) if args.json else format_training_time(args.sweep, training))
            return 0
    from orchestrator.report import efficiency_row, format_table
    from training.models import list_models, model_info

    specs = args.models.split(",") if args.models else [
        n for n in list_models() if model_info(n).kind == "generator"]
    rows = [efficiency_row(s, args.testset, clips=args.clips, limit=args.limit) for s in specs]
    if args.sweep:
        out = {"inference": rows, "training": training} if args.json else \
            format_table(rows) + "\n\n" + format_training_time(args.sweep, training)
    else:
        out = rows if args.json else format_table(rows)
    print(json.dumps(out, indent=2) if args.json else out)
    return 0
