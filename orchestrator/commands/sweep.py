"""`orchestrate sweep`: expand a sweep file into cells and run them on SLURM, locally or on Ray."""

from __future__ import annotations

import argparse

from orchestrator.cliutil import trailing_positionals

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
    """``--grid KEY=a,b`` -> the override ``grid.KEY=[a,b]`` (orchestrator.sweeps.spec.grid_overrides)."""
    from orchestrator.errors import UserError

    out = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UserError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. trainer.seed=0,1,2)")
        out.append(f"grid.{key.strip()}=[{values}]")
    return out


def run(args: argparse.Namespace) -> int:
    from orchestrator.preflight import check_plan, raise_if
    from orchestrator.sweeps.plan import build_plan
    from orchestrator.sweeps.run import describe, run_sweep

    plan = build_plan(args.file, executor=args.executor, root=args.root,
                      overrides=[*args.overrides, *grid_args(args.grid)])
    # every check before any side effect; a dry run shows its plan, then the problems (exit 2 too)
    problems = check_plan(plan)
    if args.dry_run:
        from orchestrator.commands.plan import cost_text  # the cost first (orchestrate plan)

        print("\n".join("# " + line for line in cost_text(plan).splitlines()))
        print("\n".join(describe(plan)))
        raise_if(problems)
        return 0
    raise_if(problems)
    return run_sweep(plan)
