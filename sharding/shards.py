"""A source's shards with their sample counts (torch-free: the login-node checks read it too).

A *source* is what ``data.train`` / ``data.valid`` hold (docs/contracts.md, "Shard sources"):

    DIR                    a split folder (manifest.json + *.tar) or a corpus folder holding SPLIT/
    DIR/shard-{000000..000099}.tar, https://host/c/train/shard-{000000..000099}.tar, s3://b/c/train/...
                           shard files or URLs, brace-expanded (``::`` joins lists; webdataset's syntax)
    https://host/c/train, s3://bucket/c    a folder URL: its manifest.json (or SPLIT/manifest.json) lists the shards
    pipe:CMD               commands writing one tar each to stdout (braces expand)

Sample counts come from the manifest beside the shards (read by `sharding.manifest`, the one reader).
A local folder without one is indexed (tar headers only). Remote shards without one (any ``pipe:``
source) are counted once, by reading them through, into a manifest cached in
``$XDG_CACHE_HOME/se-orchestrator/manifests/`` (a warning says so; put a manifest beside them instead).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sharding.errors import SourceError
from sharding.manifest import MANIFEST, Manifest, find_manifest, parse_manifest, shard_location
from sharding.sources import is_remote, join, local_path, parent, probe, scheme
from sharding.tario import index_tar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardRef:
    """One shard: ``path`` is a local path, a URL or a ``pipe:`` command; ``bytes`` the manifest's size."""

    path: str
    samples: int
    bytes: int | None = None

    @property
    def remote(self) -> bool:
        return is_remote(self.path)


@dataclass
class Source:
    """A resolved source: its shards (with samples) and the manifest they came from (None: indexed/counted)."""

    spec: str
    shards: list[ShardRef]
    manifest: Manifest | None = field(default=None, repr=False)

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def remote(self) -> bool:
        return any(s.remote for s in self.shards)


def is_pattern(spec: str) -> bool:
    """A list of shards (braces, ``::``, a ``.tar`` name or a command) rather than a folder."""
    return "{" in spec or "::" in spec or spec.endswith(".tar") or scheme(spec) == "pipe"


def expand(spec: str) -> list[str]:
    """webdataset's pattern syntax: ``::`` joins lists, braces expand (``{000000..000099}``, ``{a,b}``)."""
    from braceexpand import braceexpand  # webdataset's own expander, without importing webdataset (torch)

    try:
        urls = [u for part in spec.split("::") for u in braceexpand(part) if u]
    except Exception as e:  # noqa: BLE001 -- braceexpand's errors on malformed patterns
        raise SourceError(f"{spec}: not a shard pattern ({e})") from None
    if not urls:
        raise SourceError(f"{spec}: the pattern names no shard")
    return urls


def resolve_split_dir(path: str | Path, split: str = "train") -> Path:
    """``path`` may be a split folder (manifest or shards) or a corpus folder holding ``split``."""
    path = Path(local_path(str(path)))
    if not path.is_dir():
        raise SourceError(f"{path}: shard folder does not exist")
    if (path / MANIFEST).exists() or any(path.glob("*.tar")):
        return path
    if (path / split).is_dir():
        return resolve_split_dir(path / split, split)
    raise SourceError(f"{path}: no manifest.json, no *.tar and no {split}/ folder")


def source_manifest(spec: str | Path, split: str = "train") -> Manifest | None:
    """The manifest a source's counts come from (None: there is none), without listing the shards."""
    spec = str(spec)
    if is_pattern(spec):
        folders = {parent(u) for u in expand(spec)}
        return find_manifest(join(folders.pop(), MANIFEST)) if len(folders) == 1 and None not in folders else None
    if is_remote(spec):
        return _url_folder_manifest(spec, split)[0]
    return find_manifest(resolve_split_dir(spec, split) / MANIFEST)


def open_source(spec: str | Path, split: str = "train", *, check_sizes: bool = False,
                count: bool = True) -> Source:
    """Resolve ``spec`` into its shards with counts; SourceError (one line) before any shard is read when
    the folder is an unfinished build (``.parts/`` but no manifest), the manifest is invalid, a listed
    local shard is missing, or (``check_sizes``, training with ``data.skip_bad=false``) a local shard's size
    differs from the manifest's ``bytes``. Shards with no samples are left out. ``count=False``: remote
    shards without a manifest get ``samples=-1`` instead of being read through (pre-submit checks)."""
    spec = str(spec)
    if is_pattern(spec):
        src = _pattern_source(spec, check_sizes, count)
    elif is_remote(spec):
        src = _url_folder_source(spec, split)
    else:
        src = _folder_source(resolve_split_dir(spec, split), check_sizes)
    src.shards = [r for r in src.shards if r.samples != 0]
    if not src.shards:
        raise SourceError(f"{spec}: holds no shard with samples")
    return src


def list_shards(spec: str | Path, *, split: str = "train", check_sizes: bool = False) -> list[ShardRef]:
    """The shards of a source (see `open_source`)."""
    return open_source(spec, split, check_sizes=check_sizes).shards


def check_source(spec: str, split: str) -> Source:
    """Pre-submit check: the source resolves (manifest read, local shards present) and, for remote
    shards, the first one answers (`sources.probe`: one tar header read). Nothing is counted."""
    src = open_source(spec, split, count=False)
    if src.remote:
        probe(src.shards[0].path)
    return src


# --------------------------------------------------------------------------------------- local folder
def _folder_source(split_dir: Path, check_sizes: bool) -> Source:
    manifest = find_manifest(split_dir / MANIFEST)
    if manifest is None:
        leftovers = (split_dir / ".parts").is_dir() or any(split_dir.glob(".*.tmp*"))
        if leftovers:
            raise SourceError(f"{split_dir}: no manifest.json but build leftovers (.parts/ or temp files): "
                              f"the shard build did not finish; rerun `orchestrate shard build` to complete it")
        return Source(str(split_dir), [ShardRef(str(p), len(index_tar(p).samples), p.stat().st_size)
                                       for p in sorted(split_dir.glob("*.tar"))])
    present = set(os.listdir(split_dir))  # one directory read, not a stat per shard (10,000 on a parallel FS)
    base = str(split_dir)
    refs = []
    for s in manifest.shards:
        beside = "/" not in s.name  # the usual case, kept cheap: 10,000 shards resolve in ~0.1 s
        path = os.path.join(base, s.name) if beside else shard_location(manifest, s.name)
        local = beside or not is_remote(path)
        if local and not (s.name in present if beside else Path(path).is_file()):
            raise SourceError(f"{manifest.where}: lists {s.name}, which is missing; rebuild the corpus "
                              f"(orchestrate shard build) or restore the shard")
        if check_sizes and s.bytes is not None and local:
            actual = Path(path).stat().st_size
            if actual != s.bytes:
                raise SourceError(f"{path}: {actual} bytes but {MANIFEST} says {s.bytes} (truncated or "
                                  f"replaced); rebuild it or run `orchestrate shard verify {split_dir}`")
        refs.append(ShardRef(path, s.samples, s.bytes))
    return Source(str(split_dir), refs, manifest)


# --------------------------------------------------------------------------------------- remote / lists
def _url_folder_manifest(spec: str, split: str) -> tuple[Manifest | None, list[str]]:
    """(the manifest of a folder URL or of its ``split`` folder, the locations tried)."""
    tried = []
    for folder in (spec, join(spec, split)):
        tried.append(join(folder, MANIFEST))
        manifest = find_manifest(tried[-1])
        if manifest is not None:
            return manifest, tried
    return None, tried


def _url_folder_source(spec: str, split: str) -> Source:
    manifest, tried = _url_folder_manifest(spec, split)
    if manifest is not None:
        return Source(spec, [ShardRef(shard_location(manifest, s.name), s.samples, s.bytes)
                             for s in manifest.shards], manifest)
    raise SourceError(f"{spec}: no manifest at {' or '.join(tried)}; a URL folder needs one (name the shards "
                      f"instead, e.g. {join(spec, 'shard-{000000..000009}.tar')}, to have them counted)")


def _norm(location: str) -> str:
    return location if is_remote(location) else os.path.normpath(local_path(location))


def _pattern_source(spec: str, check_sizes: bool, count: bool) -> Source:
    urls = expand(spec)
    manifest = source_manifest(spec)
    listed = {_norm(shard_location(manifest, s.name)): s for s in manifest.shards} if manifest else {}
    urls = [_norm(u) for u in urls]
    unlisted = [u for u in urls if u not in listed and is_remote(u)]
    if manifest is not None and unlisted:
        raise SourceError(f"{unlisted[0]}: not listed in {manifest.where} ({len(unlisted)} of {len(urls)} shards "
                          f"unlisted); fix the pattern or the manifest")
    counted = (_counted(spec, unlisted) if count else dict.fromkeys(unlisted, (-1, None))) if unlisted else {}
    refs = []
    for u in urls:
        if u in listed:
            refs.append(ShardRef(u, listed[u].samples, listed[u].bytes))
        elif u in counted:
            refs.append(ShardRef(u, *counted[u]))
        else:
            p = Path(local_path(u))
            if not p.is_file():
                raise SourceError(f"{u}: shard does not exist")
            refs.append(ShardRef(str(p), len(index_tar(p).samples), p.stat().st_size))
    if check_sizes:
        for r in refs:
            if not r.remote and r.bytes is not None and Path(r.path).stat().st_size != r.bytes:
                raise SourceError(f"{r.path}: {Path(r.path).stat().st_size} bytes but {MANIFEST} says {r.bytes} "
                                  f"(truncated or replaced); rebuild it or run `orchestrate shard verify`")
    return Source(spec, refs, manifest)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "se-orchestrator" / "manifests"


def _counted(spec: str, urls: list[str]) -> dict[str, tuple[int, int | None]]:
    """{url: (samples, bytes)} of remote shards without a manifest: read through once (webdataset), then
    cached as a manifest listing the URLs (one process counts, concurrent ranks wait for its file)."""
    import fcntl

    from common.atomic import atomic_write_bytes
    from sharding.tario import count_samples

    path = cache_dir() / f"{hashlib.sha256(chr(10).join(urls).encode()).hexdigest()[:20]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # a file system without flock (some parallel FS mounts): every process counts
            pass
        if not path.exists():
            t0 = time.monotonic()
            log.warning("%s: no %s beside the shards; counting the samples of %d shards by reading them once "
                        "(cached in %s)", spec, MANIFEST, len(urls), path)
            shards = []
            for u in urls:
                n, size = count_samples(u)
                shards.append({"name": u, "samples": n, "bytes": size})
            blob = {"format": "se-shards/1", "recipe": "counted", "source": spec, "shards": shards,
                    "num_samples": sum(s["samples"] for s in shards)}
            atomic_write_bytes(path, json.dumps(blob, indent=1).encode())
            log.warning("%s: counted %d samples in %.1f s", spec, blob["num_samples"], time.monotonic() - t0)
    m = parse_manifest(path.read_bytes(), str(path), locations=True)
    return {s.name: (s.samples, s.bytes) for s in m.shards}
