"""`orchestrate compare`: the papers' table (mean ± std over seeds) of a sweep, from MLflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator import compare as cmp

NAME = "compare"
HELP = "a sweep's results table from MLflow: models x (test set, metric), mean ± std over seeds"
DESCRIPTION = """One row per model (params count from param model.params) plus the noisy input's row;
columns test set x metric (PESQ, SSNR, ESTOI, SI-SDR) from eval/<testset>/enhanced/<metric>; cells
'mean ± std' over seeds (sample std, ddof=1; '-' for one seed, JSON null). The table is also logged
as artifacts of the sweep's parent run (compare.md, .csv, .json, .tex). --plot also draws
compare.png (bars: mean ± std per model and test set) and curves_<metric>.png (every cell's training
and validation curves, seeds of a model in one colour) beside the table (the -o file's folder, else
the sweep folder, else the current one; --plot-dir to choose), logged under figures/ of the parent run."""
EPILOG = """examples:
  orchestrate compare runs/rwsa_sizes                      # a sweep folder (reads ledger.json)
  orchestrate compare rwsa_sizes --tracking-uri http://login1:5055 --format latex
  orchestrate compare demo --format json > demo.json       # [{model, testset, metric, mean, std, n}]
  orchestrate compare demo --experiment demo --format csv -o demo.csv
  orchestrate compare runs/rwsa_sizes --plot                # + compare.png, curves_*.png in runs/rwsa_sizes
  orchestrate compare runs/mambattention_table2             # Table II as the paper lays it out
  orchestrate compare runs/mambattention_table5 --layout generic
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep folder (with ledger.json), or sweep name (tag se.sweep)")
    p.add_argument("--format", choices=cmp.FORMATS, default="md", help="output format (default md)")
    p.add_argument("--layout", choices=cmp.LAYOUTS, default="auto",
                   help="md only: auto = the paper's layout for a paper sweep that has one (Tables II and V: "
                        "its column groups, row names and order), else generic (the flat table)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the ledger's, $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", help="look only in this MLflow experiment")
    p.add_argument("--metrics", help="comma-separated metric keys (default: pesq,ssnr,estoi,si_sdr + any other)")
    p.add_argument("--include-unfinished", action="store_true", help="count runs that are not FINISHED")
    p.add_argument("--no-log", action="store_true", help="do not log the table to the sweep's parent run")
    p.add_argument("-o", "--output", help="write the table to this file instead of stdout")
    p.add_argument("--root", default="runs", help="folder holding sweep folders (default runs/)")
    p.add_argument("--plot", action="store_true", help="also write compare.png and curves_*.png (see above)")
    p.add_argument("--plot-dir", help="folder for the --plot PNGs (default: beside the table)")


def plot_dir(args: argparse.Namespace) -> Path:
    """Where --plot writes: --plot-dir, else the -o file's folder, else the sweep folder, else '.'."""
    if args.plot_dir:
        return Path(args.plot_dir)
    if args.output:
        return Path(args.output).resolve().parent
    for cand in (Path(args.sweep), Path(args.root) / str(args.sweep)):
        if (cand / "ledger.json").is_file():
            return cand
    return Path(".")


def run(args: argparse.Namespace) -> int:
    table = cmp.compare_sweep(
        args.sweep,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        metrics=[m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None,
        include_unfinished=args.include_unfinished,
        root=args.root,
    )
    text = cmp.render(table, args.format, args.layout)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if not args.no_log:
        logged = cmp.log_to_parent(table)
        if logged:
            print(f"logged {', '.join(logged)} to parent run {table.parent_run_id}", file=sys.stderr)
    if args.plot:
        from orchestrator.figures import sweep_figures

        paths = sweep_figures(args.sweep, table, plot_dir(args), tracking_uri=args.tracking_uri,
                              experiment=args.experiment, root=args.root, log_mlflow=not args.no_log)
        print(f"wrote {len(paths)} figures: {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0
