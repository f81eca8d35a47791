"""The project's per-user cache folder (compiled kernels, the empty MLflow store template)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/se-orchestrator``, else ``~/.cache/se-orchestrator`` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "se-orchestrator"
