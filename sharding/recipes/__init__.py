"""Recipe registry: ``get_recipe(name)`` -> RecipeSpec (options dataclass + corpus opener)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sharding.errors import SourceError
from sharding.recipes.base import Corpus, parse_options

_MODULES = {
    "demo": "sharding.recipes.demo",
    "pairs": "sharding.recipes.pairs",
    "dns2020": "sharding.recipes.dns2020",
    "vb-demandex": "sharding.recipes.vb_demandex",
    "ears-wham": "sharding.recipes.ears_wham",
}


@dataclass(frozen=True)
class RecipeSpec:
    """A recipe: ``options_cls`` is a keyword-only dataclass; ``open`` validates sources -> Corpus."""

    name: str
    options_cls: type
    open: Callable[[Any], Corpus]
    default_shard_samples: int | None = None

    def parse_options(self, options: dict[str, Any] | None) -> Any:
        return parse_options(self.options_cls, options, self.name)


def list_recipes() -> list[str]:
    return sorted(_MODULES)


def get_recipe(name: str) -> RecipeSpec:
    if name not in _MODULES:
        raise SourceError(f"unknown recipe {name!r}; known: {', '.join(list_recipes())}")
    mod = importlib.import_module(_MODULES[name])
    return mod.RECIPE
