"""Tar I/O for WebDataset shards, through the ``webdataset`` library where it does the job.

Writing: ``write_tar(path, samples)`` writes ``{"__key__": str, ext: bytes, ...}`` dicts with
``webdataset.TarWriter`` (members ``<key>.<ext>``, extensions sorted) with fixed headers (mtime 0,
uid/gid 0, no user names, mode 0644), to a temporary name, fsync, rename -- so a rebuilt shard
has the same bytes and a killed job never leaves a cut-off shard under the final name.

Reading in order: ``iter_samples(path)`` is webdataset's tar expansion and key grouping
(``tariterators.tarfile_samples``). Random access, which the exact-resume sampler needs (a sample
by index, after a restart, without reading what precedes it) and webdataset does not offer:
``index_tar(path)`` walks the 512-byte headers itself (no data read), tolerates truncation and
returns the samples it could fully locate; ``read_members`` fetches one sample's bytes by seeking.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import atomic_write, atomic_write_bytes  # noqa: F401  (re-exported)
from sharding.errors import SourceError

BLOCK = 512


def check_sample(sample: dict) -> str:
    """Validate a sample dict for writing; returns its key."""
    key = sample.get("__key__")
    if not isinstance(key, str) or not key or "." in key or "/" in key:
        raise ValueError(f"sample key must be a non-empty str without '.' or '/', got {key!r}")
    for ext, value in sample.items():
        if ext != "__key__" and not isinstance(value, bytes | bytearray):
            raise ValueError(f"sample {key}: field {ext!r} must be bytes, got {type(value).__name__}")
    return key


def write_tar(path: str | Path, samples: Iterable[dict]) -> int:
    """Write samples to ``path`` atomically; returns the number of samples."""
    n = 0

    def write(f) -> None:
        nonlocal n
        import webdataset as wds

        with wds.TarWriter(f, user="", group="", mode=0o644, mtime=0, encoder=False) as tar:
            for sample in samples:
                check_sample(sample)
                tar.write({k: bytes(v) if k != "__key__" else v for k, v in sample.items()})
                n += 1

    atomic_write(path, write)
    return n


def iter_samples(path: str | Path) -> Iterator[dict]:
    """The samples of one shard in file order, ``{"__key__": key, ext: bytes, ...}`` (webdataset)."""
    from webdataset import tariterators

    for sample in tariterators.tarfile_samples([{"url": str(path)}]):
        yield {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}


@dataclass
class TarIndex:
    """Samples located in a shard: key -> {ext: (offset, size)}, in file order; ``truncated`` if cut off."""

    path: Path
    samples: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    truncated: bool = False
    error: str = ""


def split_name(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first '.' of the basename, ext = the rest."""
    d, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext


def index_tar(path: str | Path) -> TarIndex:
    """Index a tar shard by reading headers only; a truncated or corrupt tail is reported, not raised."""
    path = Path(path)
    idx = TarIndex(path)
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except OSError as e:
        idx.truncated, idx.error = True, str(e)
        return idx
    with f:
        pos = 0
        while True:
            f.seek(pos)
            buf = f.read(BLOCK)
            if len(buf) < BLOCK:
                idx.truncated, idx.error = True, f"header cut off at byte {pos}"
                break
            if buf == b"\0" * BLOCK:
                break
            try:
                info = tarfile.TarInfo.frombuf(buf, tarfile.ENCODING, "surrogateescape")
            except tarfile.HeaderError as e:
                idx.truncated, idx.error = True, f"bad header at byte {pos}: {e}"
                break
            data_off = pos + BLOCK
            if data_off + info.size > size:
                idx.truncated, idx.error = True, f"member {info.name} cut off"
                break
            if info.isreg():
                key, ext = split_name(info.name)
                idx.samples.setdefault(key, {})[ext] = (data_off, info.size)
            pos = data_off + (info.size + BLOCK - 1) // BLOCK * BLOCK
    return idx


def read_members(source, members: dict[str, tuple[int, int]]) -> dict[str, bytes]:
    """Read the given {ext: (offset, size)} of one sample from a path or an open binary file."""
    if isinstance(source, str | Path):
        with open(source, "rb") as f:
            return read_members(f, members)
    out = {}
    for ext, (off, size) in members.items():
        source.seek(off)
        data = source.read(size)
        if len(data) != size:
            raise SourceError(f"{getattr(source, 'name', source)}: member .{ext} at {off} is cut off")
        out[ext] = data
    return out
