"""What a recipe provides: options dataclass, an opened corpus that makes clip ``i`` of a split on demand.

A corpus is a pure function of (options, split, index): ``clip(split, i)`` must not depend on the
order files were listed in (paths are sorted) nor on how the build is split across processes/nodes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from common.config import ConfigError, build_config
from sharding.errors import SourceError

SPLITS = ("train", "valid", "test")
SPLIT_SEED = {"train": 0, "valid": 1, "test": 2}


@dataclass
class Clip:
    """One mixture: ``noisy``/``clean`` float32 [N] at 16 kHz plus JSON-able metadata."""

    key: str
    noisy: np.ndarray
    clean: np.ndarray
    meta: dict[str, Any]


class Corpus(Protocol):
    """An opened recipe (sources validated and listed)."""

    def split_sizes(self) -> dict[str, int]:
        """Number of clips per split."""

    def clip(self, split: str, index: int) -> Clip | None:
        """Clip ``index`` of ``split``; deterministic given the options (None: source unusable, skipped)."""

    def bytes_per_clip(self, split: str) -> float:
        """Rough encoded size of one sample (noisy+clean FLAC), to turn a byte target into a count."""


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one clip: depends only on (seed, split, index)."""
    return np.random.default_rng([int(seed), SPLIT_SEED[split], int(index)])


def clip_key(split: str, index: int) -> str:
    return f"{split}-{index:09d}"


def options_to_dict(opts: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(opts)))


def parse_options(options_cls: type, options: dict[str, Any] | None, recipe: str) -> Any:
    """Build ``options_cls`` from a dict (``key=value`` text converted) with the run configs' validator
    (`common.config.build_config`); an unknown key, a wrong type or a rejected value -> SourceError
    naming the recipe and the option."""
    try:
        return build_config(options_cls, [(f"recipe {recipe}", dict(options or {}))])
    except ConfigError as e:
        raise SourceError(str(e)) from None


def check_range(name: str, lo: float, hi: float) -> None:
    if lo > hi:
        raise SourceError(f"option {name}: min {lo} is above max {hi}")
