"""Test sets for evaluation and enhancement: paired folders, noisy-only folders, or shard sets.

Layouts ``open_testset`` accepts::

    DIR/clean/*.wav|flac + DIR/noisy/*.wav|flac   paired by file name (stem), or else by the DNS
                                                   ``fileid_<n>`` part when every name has one
    DIR/noisy/*.wav|flac                           no reference: reference-free metrics only
    DIR/manifest.json + shard-*.tar                a shard split (``sharding``), or DIR/<split>/...

Any sample rate and channel count is converted to float32 mono 16 kHz when a file is read.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.audio import AUDIO_EXTENSIONS, AudioFileError, read_audio
from common.errors import InputError

# Paired files converted to 16 kHz may differ by resampling rounding; more than this is a data error.
MAX_PAIR_MISMATCH = 160
SHARD_SPLITS = ("train", "valid", "test")
_FILEID = re.compile(r"fileid_(\d+)")


class TestSetError(InputError):
    """A test-set folder with a bad layout, unmatched names or an unreadable file (one line)."""

    __test__ = False  # not a pytest test class


Utterance = tuple[str, np.ndarray, "np.ndarray | None"]


@dataclass
class TestSet:
    """An iterable of ``(key, noisy float32 [N], clean float32 [N] | None)`` at 16 kHz, in key order."""

    __test__ = False

    name: str
    path: Path
    kind: str  # "paired" | "noisy-only" | "shards"
    has_reference: bool
    _pairs: list[tuple[str, Path, Path | None]] = field(default_factory=list, repr=False)
    _num_shard_samples: int = 0
    stats: Counter = field(default_factory=Counter, repr=False)

    def __len__(self) -> int:
        """Number of utterances (for shards: the manifest count; corrupt samples are skipped when read)."""
        return len(self._pairs) if self.kind != "shards" else self._num_shard_samples

    def keys(self) -> list[str]:
        return [k for k, _, _ in self._pairs]

    def __iter__(self) -> Iterator[Utterance]:
        if self.kind == "shards":
            from sharding.stream import iter_utterances

            for key, noisy, clean in iter_utterances(self.path, stats=self.stats):
                yield key, noisy, clean
            return
        for key, noisy_path, clean_path in self._pairs:
            noisy = _read(noisy_path)
            if clean_path is None:
                yield key, noisy, None
                continue
            clean = _read(clean_path)
            if abs(len(noisy) - len(clean)) > MAX_PAIR_MISMATCH:
                raise TestSetError(f"{noisy_path}: {len(noisy)} samples at 16 kHz but {clean_path} has "
                                   f"{len(clean)}; a pair must have the same duration")
            n = min(len(noisy), len(clean))
            yield key, noisy[:n], clean[:n]


    def entries(self) -> Iterator[tuple[str, np.ndarray | None, np.ndarray | None, str | None]]:
        """Like iteration, but a bad utterance does not stop it: ``(key, noisy, clean, None)`` for a good
        one, ``(key, None, None, reason)`` for one that cannot be read or paired (for shards: a bad
        sample, or ``(shard name, reason)`` for the samples a truncated shard lost)."""
        if self.kind == "shards":
            from sharding.stream import iter_utterances

            failures: list[tuple[str, str]] = []
            for key, noisy, clean in iter_utterances(self.path, stats=self.stats, failures=failures):
                while failures:
                    fkey, reason = failures.pop(0)
                    yield fkey, None, None, reason
                yield key, noisy, clean, None
            for fkey, reason in failures:
                yield fkey, None, None, reason
            return
        for key, noisy_path, clean_path in self._pairs:
            try:
                noisy = _read(noisy_path)
                clean = None if clean_path is None else _read(clean_path)
                if clean is not None:
                    if abs(len(noisy) - len(clean)) > MAX_PAIR_MISMATCH:
                        raise TestSetError(f"{noisy_path}: {len(noisy)} samples at 16 kHz but {clean_path} has "
                                           f"{len(clean)}; a pair must have the same duration")
                    n = min(len(noisy), len(clean))
                    noisy, clean = noisy[:n], clean[:n]
            except TestSetError as e:
                yield key, None, None, str(e)
                continue
            yield key, noisy, clean, None


def _read(path: Path) -> np.ndarray:
    try:
        return read_audio(path)
    except AudioFileError as e:
        raise TestSetError(str(e)) from None


def _audio_files(folder: Path) -> dict[str, Path]:
    """{stem: path} of the wav/flac files directly in ``folder`` (other files are ignored)."""
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not (p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS):
            continue
        if p.stem in files:
            raise TestSetError(f"{folder}: two files named {p.stem!r} ({files[p.stem].name}, {p.name})")
        files[p.stem] = p
    if not files:
        raise TestSetError(f"{folder}: no {'/'.join(AUDIO_EXTENSIONS)} files")
    return files


def _few(names: list[str], n: int = 5) -> str:
    shown = ", ".join(sorted(names)[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _open_folder(path: Path, name: str) -> TestSet:
    noisy_dir, clean_dir = path / "noisy", path / "clean"
    if not noisy_dir.is_dir():
        raise TestSetError(f"{path}: has clean/ but no noisy/ folder")
    noisy = _audio_files(noisy_dir)
    if not clean_dir.is_dir():
        pairs = [(k, noisy[k], None) for k in sorted(noisy)]
        return TestSet(name, path, "noisy-only", False, pairs)
    clean = _audio_files(clean_dir)
    if set(noisy) != set(clean):
        noisy_ids, clean_ids = _by_fileid(noisy), _by_fileid(clean)
        if noisy_ids is not None and clean_ids is not None:
            noisy, clean = noisy_ids, clean_ids  # DNS test sets: book_..._fileid_7.wav <-> clean_fileid_7.wav
    no_clean = sorted(set(noisy) - set(clean))
    no_noisy = sorted(set(clean) - set(noisy))
    if no_clean or no_noisy:
        parts = []
        if no_clean:
            parts.append(f"no clean file for noisy {_few(no_clean)}")
        if no_noisy:
            parts.append(f"no noisy file for clean {_few(no_noisy)}")
        raise TestSetError(f"{path}: clean/ and noisy/ names do not match: {'; '.join(parts)}")
    pairs = [(k, noisy[k], clean[k]) for k in sorted(noisy)]
    return TestSet(name, path, "paired", True, pairs)


def _by_fileid(files: dict[str, Path]) -> dict[str, Path] | None:
    """{"fileid_<n>": path} when every name holds exactly one distinct ``fileid_<n>``, else None."""
    out: dict[str, Path] = {}
    for stem, path in files.items():
        ids = _FILEID.findall(stem)
        if len(ids) != 1 or f"fileid_{int(ids[0])}" in out:
            return None
        out[f"fileid_{int(ids[0])}"] = path
    return out


def _shard_split_dir(path: Path, split: str) -> Path | None:
    def is_split(p: Path) -> bool:
        return p.is_dir() and ((p / "manifest.json").exists() or any(p.glob("*.tar")))

    if is_split(path):
        return path
    if is_split(path / split):
        return path / split
    return None


def _open_shards(split_dir: Path, name: str | None) -> TestSet:
    from sharding.stream import list_shards

    try:
        total = sum(ref.samples for ref in list_shards(split_dir))
    except ValueError as e:  # sharding.errors.SourceError
        raise TestSetError(str(e)) from None
    if name is None:
        name = f"{split_dir.parent.name}/{split_dir.name}" if split_dir.name in SHARD_SPLITS else split_dir.name
    return TestSet(name, split_dir, "shards", True, _num_shard_samples=total)


def open_testset(path: str | Path, split: str = "test", name: str | None = None) -> TestSet:
    """Open a test set folder (see the module docstring); ``split`` picks the split of a shard corpus.

    The layout and the names are checked here, so a bad folder fails before any enhancement; a file
    that cannot be decoded (or holds no samples, or NaN/Inf) fails alone when read (``entries``).
    """
    path = Path(path)
    if not path.is_dir():
        raise TestSetError(f"{path}: test set folder does not exist")
    if (path / "noisy").is_dir() or (path / "clean").is_dir():
        return _open_folder(path, name or path.name)
    split_dir = _shard_split_dir(path, split)
    if split_dir is not None:
        return _open_shards(split_dir, name)
    raise TestSetError(f"{path}: not a test set: expected clean/ + noisy/ folders, a noisy/ folder, "
                       f"or shards (manifest.json / *.tar, here or in {split}/)")
