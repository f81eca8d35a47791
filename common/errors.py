"""The one base class of user errors: bad input, told in one line, exit code 2.

Every package raises its own subclass (`common.config.ConfigError`, `orchestrator.errors.UserError`,
`sharding.errors.SourceError`, `common.audio.AudioFileError`, the test-set, metric and model-name
errors of `training`); the CLI (`orchestrator.cli`) and the training entry point (`training.run`)
catch this class alone, print ``error: <message>`` and exit 2 (`common.rundir.EXIT_BAD_INPUT`).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (a config key, a path, an argument, a data file): the message is one line that
    names the file/key and what was expected. Control characters in it (a name taken from data, e.g.
    a tar member or manifest entry holding a newline) are shown escaped, so it stays one line."""

    def __str__(self) -> str:
        return printable(super().__str__())


def printable(text: str) -> str:
    """``text`` with its control characters (newline, NUL, an undecodable byte's surrogate) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
