"""Input errors of the data side (a source folder that is missing or holds no audio, a bad option)."""

from __future__ import annotations

from common.errors import InputError


class SourceError(InputError):
    """Bad input for a recipe, writer or reader: one line naming the path/key and what was expected."""
