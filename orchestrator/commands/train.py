"""`orchestrate train`: train one model in a run directory, locally (optionally N DDP processes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.cliutil import config_value, trailing_positionals
from training.config import RunConfig

NAME = "train"
HELP = "train (or resume) one model in a run directory; --nproc N for local DDP"
EPILOG = """examples:
  orchestrate train rwsa-xs --workdir runs/xs                          # the papers' settings
  orchestrate train semamba trainer.max_steps=2000 data.batch_size=4 --workdir runs/sm
  orchestrate train rwsa-xs --workdir runs/xs --nproc 2                # 2 local DDP processes (gloo on CPU)
  orchestrate train rwsa-xs --config run.yaml --print-config           # show the resolved config only
Running the same command again resumes from the newest complete checkpoint in --workdir.
exit codes: 0 done, 2 bad config, 75 preempted (checkpointed; run the same command again)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    trailing_positionals(p, "overrides")  # overrides may follow options too
    p.add_argument("model", help="registered model name (see `orchestrate models`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run config overrides")
    p.add_argument("--workdir", type=Path, help="run directory (required unless --print-config)")
    p.add_argument("--nproc", type=config_value(RunConfig, "launcher.nproc"), default=1, help="local DDP processes (default 1)")
    p.add_argument("--config", help="run config YAML (defaults <- FILE <- overrides)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from orchestrator.errors import UserError
    from training.config import load_run_config, to_yaml
    from training.run import spawn, train

    cfg = load_run_config(args.config, [f"model.name={args.model}", *args.overrides])
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if args.workdir is None:
        raise UserError("--workdir: required to train (the run directory)")
    if args.nproc < 1:
        raise UserError(f"--nproc: expected >= 1, got {args.nproc}")
    from orchestrator.preflight import preflight_run

    preflight_run(cfg, args.config or "run config")
    if args.nproc == 1:
        return train(cfg, args.workdir)
    return spawn(cfg, args.workdir, args.nproc)
