"""A split's shard list from its manifest (or by indexing the tars): torch-free, so the login-node checks
(`orchestrator.preflight`) can read it; `sharding.stream` builds on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sharding.errors import SourceError
from sharding.tario import index_tar


@dataclass(frozen=True)
class ShardRef:
    path: str
    samples: int


def resolve_split_dir(path: str | Path, split: str = "train") -> Path:
    """``path`` may be a split folder (manifest or shards) or a corpus folder holding ``split``."""
    path = Path(path)
    if not path.is_dir():
        raise SourceError(f"{path}: shard folder does not exist")
    if (path / "manifest.json").exists() or any(path.glob("*.tar")):
        return path
    if (path / split).is_dir():
        return resolve_split_dir(path / split, split)
    raise SourceError(f"{path}: no manifest.json, no *.tar and no {split}/ folder")


def list_shards(split_dir: str | Path, *, check_sizes: bool = False) -> list[ShardRef]:
    """Shards of a split with their sample counts (from manifest.json, else by indexing the tars).

    SourceError (one line) before any reading when: the folder is a build that has not finished (shard
    sidecars in ``.parts/`` or temp files, but no manifest.json yet), the manifest is not valid, a shard
    it lists is missing, or (``check_sizes``) a shard's size differs from the manifest's ``bytes``
    (truncated or replaced). A folder of tars with neither manifest nor build leftovers (written by
    another tool) is indexed.
    """
    split_dir = Path(split_dir)
    manifest = split_dir / "manifest.json"
    if manifest.exists():
        try:
            m = json.loads(manifest.read_text())
            entries = [(str(split_dir / s["name"]), int(s["samples"]), s.get("bytes")) for s in m["shards"]]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SourceError(f"{manifest}: not a shard manifest ({type(e).__name__}: {e})") from None
        for path, _, size in entries:
            if not Path(path).is_file():
                raise SourceError(f"{manifest}: lists {Path(path).name}, which is missing; rebuild the corpus "
                                  f"(orchestrate shard build) or restore the shard")
            actual = Path(path).stat().st_size
            if check_sizes and isinstance(size, int) and actual != size:
                raise SourceError(f"{path}: {actual} bytes but {manifest.name} says {size} (truncated or "
                                  f"replaced); rebuild it or run `orchestrate shard verify {split_dir}`")
        refs = [ShardRef(path, samples) for path, samples, _ in entries]
    else:
        leftovers = (split_dir / ".parts").is_dir() or any(split_dir.glob(".*.tmp*"))
        if leftovers:
            raise SourceError(f"{split_dir}: no manifest.json but build leftovers (.parts/ or temp files): "
                              f"the shard build did not finish; rerun `orchestrate shard build` to complete it")
        refs = [ShardRef(str(p), len(index_tar(p).samples)) for p in sorted(split_dir.glob("*.tar"))]
    refs = [r for r in refs if r.samples > 0]
    if not refs:
        raise SourceError(f"{split_dir}: holds no shard with samples")
    return refs
