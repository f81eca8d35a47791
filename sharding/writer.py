"""Corpus recipe -> WebDataset shards + ``manifest.json`` per split.

Layout (``DIR/<split>/``)::

    shard-000000.tar      samples <key>.noisy.flac, <key>.clean.flac, <key>.json
    .parts/shard-000000.json   sidecar written after the shard: samples, seconds, bytes, sha256
    manifest.json         shards (+ counts, seconds, sha256), totals, recipe name and options

A byte target (``shard_bytes``) is turned into a sample count with the recipe's size estimate, so
shards come out near, not exactly at, that size. Shard ``i`` of a split holds the fixed clip range ``[i*k, (i+1)*k)`` (``k`` = samples per shard), and
clip ``j`` depends only on (options, split, j), so any executor (local processes, Ray, a SLURM array)
writes the same bytes, and a rebuild skips shards that are already complete (tar renamed into
place and sidecar present).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sharding.audio import SAMPLE_RATE, encode_flac
from sharding.errors import SourceError
from sharding.recipes import get_recipe
from sharding.recipes.base import SPLITS, Clip, options_to_dict
from sharding.tario import atomic_write_bytes, index_tar, write_tar

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 512 * 2**20
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardTask:
    """One shard to build: clips ``[start, stop)`` of ``split`` into ``shard-<index>.tar``."""

    split: str
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def encode_clip(clip: Clip) -> dict[str, Any]:
    """Clip -> sample dict (FLAC PCM_16 noisy/clean + sorted-key JSON metadata)."""
    for name, x in (("noisy", clip.noisy), ("clean", clip.clean)):
        if x.ndim != 1 or not np.all(np.isfinite(x)):
            raise SourceError(f"clip {clip.key}: {name} audio is not finite mono")
    if not np.any(clip.clean):
        raise SourceError(f"clip {clip.key}: clean audio is all zeros")
    meta = dict(clip.meta, key=clip.key, seconds=len(clip.clean) / SAMPLE_RATE, sample_rate=SAMPLE_RATE)
    return {
        "__key__": clip.key,
        "noisy.flac": encode_flac(clip.noisy),
        "clean.flac": encode_flac(clip.clean),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }


MAX_SHARDS = 1_000_000  # a build of more shards is a typo (train_clips=1e20), not a corpus


def plan_tasks(sizes: dict[str, int], shard_samples: int) -> list[ShardTask]:
    """One task per shard of ``shard_samples`` clips; SourceError for more than `MAX_SHARDS` shards."""
    count = sum(math.ceil(sizes.get(split, 0) / shard_samples) for split in SPLITS)
    if count > MAX_SHARDS:
        raise SourceError(f"the build would write {count:,} shards of {shard_samples:,} clips (at most {MAX_SHARDS:,}): "
                          f"ask for fewer clips ({', '.join(f'{s} {n:,}' for s, n in sizes.items() if n)}) or larger "
                          "shards (--shard-samples / --shard-mb)")
    tasks = []
    for split in SPLITS:
        n = sizes.get(split, 0)
        for i in range(math.ceil(n / shard_samples)):
            tasks.append(ShardTask(split, i, i * shard_samples, min(n, (i + 1) * shard_samples)))
    return tasks


@functools.lru_cache(maxsize=4)
def _open_corpus(recipe_name: str, options_json: str):
    spec = get_recipe(recipe_name)
    return spec.open(spec.parse_options(json.loads(options_json)))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _part_path(out_dir: Path, task: ShardTask) -> Path:
    return out_dir / task.split / ".parts" / f"shard-{task.index:06d}.json"


def _describe(path: Path, task: ShardTask) -> dict[str, Any]:
    """Sidecar facts of a finished shard, read back from the tar."""
    idx = index_tar(path)
    seconds = 0.0
    with open(path, "rb") as f:
        for members in idx.samples.values():
            off, size = members["json"]
            f.seek(off)
            seconds += json.loads(f.read(size))["seconds"]
    return {"name": task.name, "index": task.index, "start": task.start, "stop": task.stop,
            "samples": len(idx.samples), "seconds": round(seconds, 6),
            "bytes": path.stat().st_size, "sha256": _sha256(path)}


def _encoded(corpus, task: ShardTask):
    for j in range(task.start, task.stop):
        clip = corpus.clip(task.split, j)
        if clip is None:  # the recipe skipped a bad source (and logged why)
            log.warning("%s/%s: clip %d skipped by the recipe", task.split, task.name, j)
            continue
        yield encode_clip(clip)


def build_id(recipe_name: str, options: dict[str, Any]) -> str:
    """Identity of a corpus build (recipe + normalised options), stored in every shard sidecar."""
    blob = json.dumps({"recipe": recipe_name, "options": options}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_shard(recipe_name: str, options: dict[str, Any], out_dir: str | Path, task: ShardTask) -> dict[str, Any]:
    """Build one shard unless complete; returns its sidecar facts. Safe to call in any process.

    Complete = tar and sidecar present with this build's id and clip range. A sidecar of another
    build is refused (SourceError); a tar without sidecar (killed between the two renames) is rebuilt.
    """
    out_dir = Path(out_dir)
    path, part = out_dir / task.split / task.name, _part_path(out_dir, task)
    bid = build_id(recipe_name, options)
    if part.exists():
        info = json.loads(part.read_text())
        if info.get("build_id") != bid or (info["start"], info["stop"]) != (task.start, task.stop):
            raise SourceError(f"{path}: built with other recipe options or shard size (sidecar {part}); "
                              "use a new output folder or delete this one")
        if path.exists():
            return info
    corpus = _open_corpus(recipe_name, json.dumps(options, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tar(path, _encoded(corpus, task))
    info = {**_describe(path, task), "build_id": bid}
    part.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(part, json.dumps(info, sort_keys=True).encode())
    return info


def finalize(out_dir: str | Path, recipe_name: str, options: dict[str, Any], tasks: list[ShardTask]) -> dict:
    """Write ``manifest.json`` for each split from the shard sidecars; returns {split: manifest}."""
    out_dir = Path(out_dir)
    manifests = {}
    for split in SPLITS:
        split_tasks = [t for t in tasks if t.split == split]
        if not split_tasks:
            continue
        shards = []
        for t in split_tasks:
            part = _part_path(out_dir, t)
            if not part.exists():
                raise SourceError(f"{out_dir / split / t.name}: shard not built yet (no {part.name} sidecar)")
            shards.append(json.loads(part.read_text()))
        for stale in (out_dir / split).glob(".shard-*.tar.tmp*"):  # left by killed writers
            stale.unlink(missing_ok=True)
        manifests[split] = _write_manifest(out_dir / split, recipe_name, options, shards)
    return manifests


def _write_manifest(split_dir: Path, recipe_name: str, options: dict[str, Any], shards: list[dict],
                    sample_rate: int = SAMPLE_RATE, fields: tuple[str, ...] = ("noisy.flac", "clean.flac", "json")) -> dict:
    manifest = {
        "format": "se-shards/1", "split": split_dir.name, "recipe": recipe_name, "options": options,
        "sample_rate": sample_rate, "fields": list(fields),
        "shards": shards, "num_samples": sum(s["samples"] for s in shards),
        "seconds": round(sum(s["seconds"] for s in shards), 6),
    }
    atomic_write_bytes(split_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def index_shards(root: str | Path) -> dict[str, dict]:
    """Write ``manifest.json`` for shards another pipeline wrote (e.g. ``webdataset.ShardWriter``):
    ``root/<split>/*.tar`` (or ``root/*.tar``, one split named after the folder). Every sample is
    read through webdataset (`tario.iter_samples`) and must hold ``noisy`` and ``clean`` audio
    (``.flac`` or ``.wav``); durations come from its ``json`` ``seconds`` or the audio header.
    Returns {split: manifest}; SourceError (file, key, what was expected) before anything is written."""
    import io

    import soundfile as sf

    from sharding.tario import iter_samples

    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}; expected a folder of "
                          "*.tar shards (or of split folders holding them)")
    split_dirs = [root] if any(root.glob("*.tar")) else sorted(d for d in root.iterdir() if any(d.glob("*.tar")))
    if not split_dirs:
        raise SourceError(f"{root}: no *.tar here or in a split folder below it")
    plans: dict[Path, tuple[list[dict], int, list[str]]] = {}
    for split_dir in split_dirs:
        shards, start, rate, exts = [], 0, None, {}
        for i, path in enumerate(sorted(split_dir.glob("*.tar"))):
            n, seconds = 0, 0.0
            for sample in iter_samples(path):
                for name in ("noisy", "clean"):
                    ext = next((e for e in ("flac", "wav") if f"{name}.{e}" in sample), None)
                    if ext is None:
                        raise SourceError(f"{path}: sample {sample['__key__']!r} has no {name}.flac or {name}.wav "
                                          f"(members: {', '.join(k for k in sample if k != '__key__')})")
                    exts[name] = f"{name}.{ext}"
                info = sf.info(io.BytesIO(sample[exts["noisy"]]))
                rate = rate or int(info.samplerate)
                meta = json.loads(sample["json"]) if "json" in sample else {}
                seconds += float(meta.get("seconds", info.duration))
                n += 1
            shards.append({"name": path.name, "index": i, "start": start, "stop": start + n, "samples": n,
                           "seconds": round(seconds, 6), "bytes": path.stat().st_size, "sha256": _sha256(path)})
            start += n
        plans[split_dir] = (shards, rate or SAMPLE_RATE, [exts.get("noisy", "noisy.flac"), exts.get("clean", "clean.flac")])
    return {d.name: _write_manifest(d, "external", {}, shards, rate, tuple(fields))
            for d, (shards, rate, fields) in plans.items()}


def resolve_plan(recipe_name: str, options: dict[str, Any] | None, shard_samples: int | None = None,
                 shard_bytes: int | None = None) -> tuple[dict[str, Any], list[ShardTask]]:
    """Validate options and sources (SourceError before any work); returns (normalised options, tasks)."""
    if shard_bytes is not None and not shard_bytes > 0:
        raise SourceError(f"shard size: expected a number of bytes > 0, got {shard_bytes}")
    spec = get_recipe(recipe_name)
    opts = spec.parse_options(options)
    corpus = spec.open(opts)
    norm = options_to_dict(opts)
    sizes = corpus.split_sizes()
    if shard_samples is None:
        if shard_bytes is None and spec.default_shard_samples:
            shard_samples = spec.default_shard_samples
        else:
            per = max(corpus.bytes_per_clip(s) for s in SPLITS)
            shard_samples = max(1, int((shard_bytes or DEFAULT_SHARD_BYTES) // per))
    if shard_samples < 1:
        raise SourceError(f"shard_samples: must be >= 1, got {shard_samples}")
    return norm, plan_tasks(sizes, shard_samples)


def build(recipe_name: str, out_dir: str | Path, options: dict[str, Any] | None = None, *,
          executor: str = "local", num_workers: int = 1, shard_samples: int | None = None,
          shard_bytes: int | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Build (or resume building) a corpus here. Returns {"manifests": {split: manifest}, "tasks": n, ...}.

    ``executor``: ``local`` (``num_workers`` processes) or ``ray`` (local ``ray.init`` unless
    connected); ``dry_run`` returns the plan only. SLURM builds are submitted by the orchestrator
    (``orchestrate shard build --executor slurm``, `executors.write_plan` + `build_job`).
    """
    from sharding import executors

    norm, tasks = resolve_plan(recipe_name, options, shard_samples, shard_bytes)
    out_dir = Path(out_dir)
    if dry_run:
        return {"recipe": recipe_name, "options": norm, "tasks": [t.__dict__ for t in tasks]}
    runners = {"local": executors.run_local, "ray": executors.run_ray}
    if executor not in runners:
        raise SourceError(f"executor: expected local or ray here (slurm: orchestrate shard build --executor slurm), "
                          f"got {executor!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    from sharding.progress import ShardProgress

    with ShardProgress([(_part_path(out_dir, t), t.stop - t.start) for t in tasks]):
        runners[executor](build_shard, [(recipe_name, norm, str(out_dir), t) for t in tasks], num_workers)
    manifests = finalize(out_dir, recipe_name, norm, tasks)
    log.info("built %s: %s", out_dir, {s: m["num_samples"] for s, m in manifests.items()})
    return {"manifests": manifests, "tasks": len(tasks), "out_dir": str(out_dir)}
