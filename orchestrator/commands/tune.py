"""`orchestrate tune`: Ray Tune search (ASHA on val/pesq) over a YAML search space."""

from __future__ import annotations

import argparse

from orchestrator import tune as tn
from orchestrator.cliutil import positive_int, trailing_positionals

NAME = "tune"
HELP = "hyper-parameter search with Ray Tune + ASHA on val/pesq; trials are MLflow child runs"
DESCRIPTION = """Sample run configs from the search space of FILE, train each as a trial, report
val/pesq to Tune after every validation and let ASHA stop the worst trials early. Every trial is an
ordinary run directory (ROOT/NAME/trials/<trial_id>) and an MLflow child run of the search's parent
run. Locally Ray starts with --num-cpus; on a Ray cluster (e.g. inside a SLURM allocation, see
docs/ray_on_slurm.md) pass --address auto."""
EPILOG = """examples:
  orchestrate tune sweeps/tune_demo.yaml                         # local Ray, 2 CPUs
  orchestrate tune sweeps/tune_demo.yaml trainer.max_steps=400   # overrides apply to every trial
  orchestrate tune sweeps/tune_demo.yaml --address auto          # on a running Ray cluster
files: ROOT/NAME/trials/<trial>/ (run dirs), ROOT/NAME/ray/ (Tune state), ROOT/NAME/tune_results.json
exit codes: 0 when at least one trial reported val/pesq, 1 when none did, 2 for a bad tune file
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    trailing_positionals(p, "overrides")  # overrides may follow options too
    p.add_argument("file", help="tune file (YAML: name, base, space, scheduler, num_samples, resources, mlflow)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every trial")
    p.add_argument("--address", help="Ray cluster address ('auto' inside a cluster); default: start a local Ray")
    p.add_argument("--num-cpus", type=positive_int, default=2, help="CPUs of the local Ray (default 2)")
    p.add_argument("--quiet", action="store_true", help="no Tune progress table")


def run(args: argparse.Namespace) -> int:
    from orchestrator.preflight import preflight_tune

    spec = tn.load_tune_spec(args.file, args.overrides)
    preflight_tune(spec)
    outcome = tn.run_tune(spec, address=args.address, num_cpus=args.num_cpus, verbose=0 if args.quiet else 1)
    print(tn.format_outcome(outcome, spec.metric))
    return 0 if outcome.best is not None else 1
