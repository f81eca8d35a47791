"""Errors the CLI turns into a one-line message and exit code 2 (bad input, before any work).

`training` and `sharding` never import `orchestrator`, so each raises its own ValueError subclass
(`training.config.ConfigError`, `sharding.errors.SourceError`); the CLI treats all of them alike.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad user input (config, path, argument): one line, names the file/key and what was expected."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception type that means 'the user's input is wrong' (exit code 2)."""
    import importlib

    types: list[type[BaseException]] = [UserError]
    for module, name in (
        ("training.configtools", "ConfigError"),
        ("common.audio", "AudioFileError"),
        ("training.evaluation.testsets", "TestSetError"),
        ("training.evaluation.metrics", "MetricError"),
        ("sharding.errors", "SourceError"),
    ):
        try:
            types.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)
