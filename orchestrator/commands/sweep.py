"""`orchestrate sweep`: expand a sweep file into cells and run them on SLURM, locally or on Ray."""

from __future__ import annotations

import argparse

from orchestrator.cliutil import trailing_positionals
from orchestrator.sweeper import run_sweep

NAME = "sweep"
HELP = "run a grid of training runs (SLURM job array, local processes or Ray); rerun to resume"
DESCRIPTION = """Expand a sweep file (sweeps/*.yaml) into cells, each a fully resolved run config,
write runs/<sweep>/ (ledger.json, cells/<cell>/config.yaml) and submit every cell that is not done.

With --executor slurm it submits a job array (one task per cell) and returns at once. With local or
ray it runs the cells and blocks, printing progress. Running the same command again resumes the
sweep: done cells are skipped, failed/cancelled/preempted ones resubmitted, queued ones left alone."""
EPILOG = """examples:
  orchestrate sweep sweeps/demo.yaml                          # local, a few minutes on a laptop
  orchestrate sweep sweeps/rwsa_sizes.yaml --dry-run          # print the cells and the sbatch script
  orchestrate sweep sweeps/rwsa_sizes.yaml                    # submit 15 cells as one job array
  orchestrate sweep sweeps/baselines.yaml trainer.max_steps=1000 --root /scratch/me/runs
  orchestrate sweep sweeps/demo.yaml --executor ray           # the same cells on Ray
  orchestrate sweep sweeps/demo.yaml --grid trainer.seed=0,1,2 --dry-run   # replace an axis: cells s0 s1 s2
  orchestrate sweep sweeps/demo.yaml trainer.seed=[7,8] --dry-run         # the same, as an override
A grid axis given a single value (trainer.seed=7) is refused: it would collapse the axis.
exit codes: 0 submitted (slurm) or every cell done (local/ray), 1 some cell failed,
            2 bad sweep file or override (the message names the file and key)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    trailing_positionals(p, "overrides")  # `... --root DIR key=value` works too
    p.add_argument("file", help="sweep file (sweeps/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every cell")
    p.add_argument("--executor", choices=("slurm", "local", "ray"), default=None,
                   help="where to run (default: the sweep file's `executor`)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and the sbatch script, submit nothing")
    p.add_argument("--root", default="runs", help="parent folder of the sweep folder (default: runs)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="replace (or add) a grid axis, e.g. --grid trainer.seed=0,1,2 (repeatable)")


def grid_args(items: list[str]) -> list[str]:
    """``--grid KEY=a,b`` -> the override ``grid.KEY=[a,b]`` (orchestrator.sweep.grid_overrides)."""
    from orchestrator.errors import UserError

    out = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UserError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. trainer.seed=0,1,2)")
        out.append(f"grid.{key.strip()}=[{values}]")
    return out


def run(args: argparse.Namespace) -> int:
    args.overrides = [*args.overrides, *grid_args(args.grid)]
    from orchestrator.preflight import preflight_sweep, raise_if

    # every check before any side effect; a dry run shows its plan, then the problems (exit 2 too)
    problems = preflight_sweep(args.file, executor=args.executor, root=args.root, overrides=args.overrides)
    if args.dry_run:
        from orchestrator.commands.plan import plan_text  # the cost first (orchestrate plan)

        try:
            head = plan_text(args.file, executor=args.executor, overrides=args.overrides, root=args.root)
        except ValueError as e:  # e.g. an unknown model: the checks below name it
            head = f"cost plan unavailable: {e}"
        print("\n".join("# " + line for line in head.splitlines()))
        rc = run_sweep(args.file, executor=args.executor, dry_run=True, root=args.root, overrides=args.overrides)
        raise_if(problems)
        return rc
    raise_if(problems)
    return run_sweep(args.file, executor=args.executor, root=args.root, overrides=args.overrides)
