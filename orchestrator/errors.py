"""The orchestrator's user error: bad input to a command (a sweep file, a profile, a path, an argument).

A `common.errors.InputError`, like every package's own (`common.config.ConfigError`,
`sharding.errors.SourceError`, ...): the CLI catches that one base class, prints the one-line message
and exits 2.
"""

from __future__ import annotations

from common.errors import InputError


class UserError(InputError):
    """Bad user input (config, path, argument): one line, names the file/key and what was expected."""
