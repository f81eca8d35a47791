"""Subcommands of `orchestrate`, one module each (see orchestrator/cli.py)."""
