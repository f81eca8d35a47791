"""`orchestrate config`: resolve, validate and print a run configuration."""

from __future__ import annotations

import argparse
import json

from orchestrator.cliutil import trailing_positionals
from training.config import RunConfig, field_help, flatten, load_run_config, to_container, to_yaml

NAME = "config"
HELP = "resolve and validate a run config (defaults <- FILE <- key=value), print it"
EPILOG = """examples:
  orchestrate config                                   # the defaults (the papers' settings)
  orchestrate config run.yaml trainer.max_steps=500    # a file plus overrides, resolved
  orchestrate config model.name=semamba --json         # as JSON
  orchestrate config --keys                            # every key with its help text
exit codes: 0 valid, 2 invalid (the message names the file or override, the key and what was expected)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    trailing_positionals(p, "items")  # overrides may follow options too
    p.add_argument("items", nargs="*", metavar="[FILE] key=value", help="an optional YAML file, then overrides")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.add_argument("--keys", action="store_true", help="list every config key with its default and help")


def split_file_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """``["run.yaml", "a=1"]`` → ``("run.yaml", ["a=1"])``; the file, if any, comes first."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, list(items)


def run(args: argparse.Namespace) -> int:
    if args.keys:
        defaults = flatten(RunConfig())
        for key, text in field_help(RunConfig).items():
            print(f"{key:34s} {defaults.get(key)!s:24s} {text}")
        return 0
    path, overrides = split_file_and_overrides(args.items)
    cfg = load_run_config(path, overrides)
    print(json.dumps(to_container(cfg), indent=2) if args.json else to_yaml(cfg), end="" if not args.json else "\n")
    return 0

