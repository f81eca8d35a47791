"""The one reader of a split's ``manifest.json`` (torch-free): local path or URL, validated into a `Manifest`.

Format ``se-shards/1`` (producer: `sharding.writer`): ``{"format", "split", "recipe", "options",
"sample_rate", "fields", "shards": [{"name", "samples", "bytes", "seconds", "sha256", ...}],
"num_samples", "seconds"}``. One entry per shard, never per clip: a 1.08 M-clip corpus in 10,000
shards is a ~2.5 MB file (benchmarks/bench_corpus_index.py). ``name`` is a file name inside the
manifest's folder (``shard-000000.tar``, ``sub/shard.tar``); a name that is absolute, has a ``..``
component, is empty or is a location (``https://...``, ``pipe:...``) is refused with one line (the
path-safety rule, `common.safe_names`: a downloaded manifest cannot make a reader open files elsewhere
or run a command). Only the manifests this system caches for sources without one (`sharding.shards`,
``locations=True``) list absolute locations. ``samples`` must be a count >= 0. Only ``name`` and
``samples`` are required per shard; older manifests read the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.safe_names import check_name
from sharding.errors import SourceError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it (``bytes``/``seconds``/``sha256`` None when not recorded)."""

    name: str
    samples: int
    bytes: int | None = None
    seconds: float | None = None
    sha256: str | None = None


@dataclass
class Manifest:
    """A parsed manifest; ``where`` is the path or URL it was read from, ``data`` the whole JSON object."""

    where: str
    shards: list[ShardEntry]
    data: dict[str, Any] = field(default_factory=dict, repr=False)
    locations: bool = False  # names may be absolute locations (a cached manifest of this system's own)

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def seconds(self) -> float | None:
        secs = [s.seconds for s in self.shards]
        return None if any(s is None for s in secs) else float(sum(secs))

    @property
    def total_bytes(self) -> int | None:
        sizes = [s.bytes for s in self.shards]
        return None if any(b is None for b in sizes) else int(sum(sizes))

    @property
    def recipe(self) -> str | None:
        return self.data.get("recipe")


def _entry(s: Any) -> ShardEntry:
    if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not s["name"]:
        raise TypeError(f"shard entry {str(s)[:80]!r} has no 'name'")
    samples = s.get("samples")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise TypeError(f"shard {s['name']}: 'samples' must be a count, got {samples!r}")
    size = s.get("bytes")
    seconds = s.get("seconds")
    return ShardEntry(s["name"], samples, size if isinstance(size, int) and not isinstance(size, bool) else None,
                      float(seconds) if isinstance(seconds, int | float) and not isinstance(seconds, bool) else None,
                      s.get("sha256") if isinstance(s.get("sha256"), str) else None)


def parse_manifest(raw: bytes | str, where: str, *, locations: bool = False) -> Manifest:
    """Validate ``raw`` JSON; SourceError (one line naming ``where``) when it is not a shard manifest or
    lists a shard outside its folder (``locations``: names may be absolute locations, see the module doc)."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("shards"), list):
            raise TypeError("expected an object with a 'shards' list")
        shards = [_entry(s) for s in data["shards"]]
    except (ValueError, TypeError) as e:
        raise SourceError(f"{where}: not a valid manifest ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if not locations:
        from sharding.sources import is_remote

        for i, s in enumerate(shards):
            check_name(s.name, where, f"shards[{i}].name", error=SourceError)
            if is_remote(s.name):
                raise SourceError(f"{where}: shards[{i}].name {s.name[:100]!r}: expected a shard file name inside "
                                  f"the manifest's folder, got a location")
    return Manifest(where, shards, data, locations)


def read_manifest(location: str | Path) -> Manifest:
    """The manifest at a local path or a URL (``http(s)://``, ``s3://``); SourceError when missing or invalid."""
    found = find_manifest(location)
    if found is None:
        raise SourceError(f"{location}: no such manifest")
    return found


def find_manifest(location: str | Path) -> Manifest | None:
    """Like `read_manifest`, but None when nothing is there (an invalid one still raises)."""
    from sharding.sources import fetch

    where = str(location)
    raw = fetch(where)
    return None if raw is None else parse_manifest(raw, where)


def shard_location(manifest: Manifest, name: str) -> str:
    """Where a listed shard is: ``name`` inside the manifest's folder, or (a manifest read with
    ``locations``) ``name`` itself when it is an absolute location."""
    from sharding.sources import is_remote, join

    if manifest.locations and (is_remote(name) or name.startswith("/")):
        return name
    check_name(name, manifest.where, "shard name", error=SourceError)
    return join(manifest.where.rsplit("/", 1)[0] if is_remote(manifest.where) else str(Path(manifest.where).parent),
                name)
