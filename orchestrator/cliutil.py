"""argparse help for commands whose trailing positionals may follow options.

Plain argparse fills a ``nargs="*"`` positional from the first run of positionals only, so
``orchestrate sweep FILE --root DIR key=value`` would reject ``key=value``. ``trailing_positionals``
lets the subparser collect such leftovers into the list-valued positional instead.
"""

from __future__ import annotations

import argparse


def trailing_positionals(parser: argparse.ArgumentParser, dest: str) -> None:
    """Append non-option leftovers of ``parser`` to ``namespace.<dest>`` (a list positional)."""
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extras = original(args, namespace)
        rest = [e for e in extras if not e.startswith("-")]
        setattr(ns, dest, list(getattr(ns, dest, None) or []) + rest)
        return ns, [e for e in extras if e.startswith("-")]

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]
