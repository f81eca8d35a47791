"""argparse helpers of the ``orchestrate`` commands.

- ``trailing_positionals``: plain argparse fills a ``nargs="*"`` positional from the first run of
  positionals only, so ``orchestrate sweep FILE --root DIR key=value`` would reject ``key=value``; this
  lets the subparser collect such leftovers into the list-valued positional instead.
- ``number`` / ``config_value`` (and ``positive_int``, ``non_negative_int``, ``positive_float``, ...):
  typed options checked by the config values' rule (`common.config.check_value`: finite numbers,
  ranges), so ``--workers 0`` or ``--chunk-seconds nan`` is refused exactly as the config key is.
- ``OneLineParser``: usage errors in one line, exit 2.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable
from typing import Any

from common.config import ConfigError, check_value, field_rule


def trailing_positionals(parser: argparse.ArgumentParser, dest: str) -> None:
    """Append non-option leftovers of ``parser`` to ``namespace.<dest>`` (a list positional)."""
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extras = original(args, namespace)
        rest = [e for e in extras if not e.startswith("-")]
        setattr(ns, dest, list(getattr(ns, dest, None) or []) + rest)
        return ns, [e for e in extras if e.startswith("-")]

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``orchestrate evaluate: error: argument
    --workers: expected an integer >= 1, got '0' (see --help)``), exit 2, like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def number(tp: type = int, **bounds: float) -> Callable[[str], Any]:
    """An argparse ``type=``: text -> ``tp`` (int or float) within ``bounds`` (``ge``/``gt``/``le``/``lt``),
    finite, checked by the config values' own rule (`common.config.check_value`)."""

    def parse(text: str):
        try:
            return check_value(text, tp, bounds, "value")
        except ConfigError as e:
            msg = str(e).removeprefix("value: ").removeprefix("value ")
            raise argparse.ArgumentTypeError(msg.replace("expects ", "expected ", 1)) from None

    parse.__name__ = tp.__name__
    return parse


def config_value(schema: type, key: str) -> Callable[[str], Any]:
    """An argparse ``type=`` for an option that sets config value ``key`` of ``schema`` (e.g.
    ``--chunk-seconds`` for ``eval.chunk_seconds`` of `training.config.RunConfig`): the same type and range."""
    tp, bounds = field_rule(schema, key)
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]  # Optional[int] -> int
    return number(args[0], **bounds)


positive_int = number(int, ge=1)
non_negative_int = number(int, ge=0)
positive_float = number(float, gt=0)
non_negative_float = number(float, ge=0)
