"""Tar I/O for WebDataset shards, through the ``webdataset`` library where it does the job.

Writing: ``write_tar(path, samples)`` writes ``{"__key__": str, ext: bytes, ...}`` dicts with
``webdataset.TarWriter`` (members ``<key>.<ext>``, extensions sorted) with fixed headers (mtime 0,
uid/gid 0, no user names, mode 0644), to a temporary name, fsync, rename -- so a rebuilt shard
has the same bytes and a killed job never leaves a cut-off shard under the final name.

Reading in order (any source: local, http(s), s3, ``pipe:``): ``read_sequential(location)`` is
webdataset's tar reader and key grouping (``tariterators.tar_file_iterator`` + ``group_by_keys``)
over a retrying `sharding.sources.ShardStream`; it numbers samples in file order and skips (reads
past, never copies) the ones the caller does not want -- how a resumed stream gets to its sample
without seeking. ``iter_samples`` / ``count_samples`` build on it. Random access on local files
(faster resume, no read-through): ``index_tar(path)`` walks the 512-byte headers itself (no data
read), tolerates truncation and returns the samples it could fully locate; ``read_members`` fetches
one sample's bytes by seeking.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import atomic_write, atomic_write_bytes  # noqa: F401  (re-exported)
from common.safe_names import check_name
from sharding.errors import SourceError

BLOCK = 512


def check_sample(sample: dict) -> str:
    """Validate a sample dict for writing; returns its key (the path-safety rule, `common.safe_names`,
    and no '.' or '/': a key is one member-name stem)."""
    key = sample.get("__key__")
    check_name(key, "sample", "key", error=SourceError)
    if "." in key or "/" in key:
        raise SourceError(f"sample: key {key!r}: expected no '.' or '/' (one member-name stem)")
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
    """The samples of one shard (path or URL) in file order, ``{"__key__": key, ext: bytes, ...}``
    (webdataset's reader, `read_sequential`); SourceError for a key that fails the path-safety rule
    (`common.safe_names`: absolute, ``..``, empty)."""
    for _, key, blobs in read_sequential(str(path)):
        check_name(key, str(path), "member name", error=SourceError)
        yield {"__key__": key, **blobs}


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


class TarCorrupt(SourceError):
    """A shard's tar stream broke off or is malformed; the samples before the break were delivered."""


class _Selector:
    """webdataset ``select_files`` predicate numbering the samples in file order: members of samples
    ``want(i)`` rejects are skipped by the tar reader (read past, never copied)."""

    def __init__(self, want):
        self.want, self.count, self.index = want, 0, {}
        self._last, self._keep = None, False

    def __call__(self, fname: str) -> bool:
        key, _ = split_name(fname)
        if key != self._last:
            self._last, self.count = key, self.count + 1
            self._keep = bool(self.want(self.count - 1))
            if self._keep:
                self.index[key] = self.count - 1
        return self._keep


def read_sequential(location: str, size: int | None = None, want=lambda i: True, info: dict | None = None
                    ) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """(file index, key, {ext: bytes}) of the samples ``want(i)`` accepts, front to back, through
    webdataset's tar reader (``tar_file_iterator`` + ``group_by_keys``) over a `sources.ShardStream`
    (retried on dropped connections, else `ShardReadError`). A tar that breaks off or is malformed raises
    TarCorrupt after the samples before the break. ``info`` receives ``samples`` (seen) and ``bytes`` (read)."""
    from webdataset import tariterators

    from sharding.sources import ShardReadError, open_shard

    sel = _Selector(want)
    stream = open_shard(location, size)
    try:
        files = ({**f, "__url__": location} for f in tariterators.tar_file_iterator(stream, select_files=sel))
        for sample in tariterators.group_by_keys(files):
            i = sel.index.pop(sample["__key__"], None)
            if i is not None:
                yield i, sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}
    except ShardReadError as e:  # webdataset appends the stream's repr to the message: keep our line
        raise ShardReadError(str(e).split(" @ <")[0]) from None
    except (tarfile.TarError, ValueError, OSError, EOFError) as e:
        why = " ".join(str(e).split(" @ <")[0].split())
        raise TarCorrupt(f"{location}: tar broken after {sel.count} samples ({why})") from None
    finally:
        if info is not None:
            info.update(samples=sel.count, bytes=stream.raw.pos)
        stream.close()


def count_samples(location: str) -> tuple[int, int]:
    """(samples, bytes) of a shard read through once (no member copied); SourceError when it is broken."""
    info: dict = {}
    for _ in read_sequential(location, want=lambda i: False, info=info):
        pass
    return info["samples"], info["bytes"]
