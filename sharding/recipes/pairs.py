"""``pairs``: an existing folder of ``noisy/`` and ``clean/`` files matched by name -> one split.

Any rate/channel count is resampled to 16 kHz and mono-mixed (``convert=true``) or skipped with a
warning (``convert=false``). ``match=fileid`` pairs DNS-style names by their ``fileid_<n>`` part
(e.g. ``book_..._fileid_7.wav`` with ``clean_fileid_7.wav``); ``match=ears`` pairs the official
EARS-WHAM_v2 names (``noisy/p102/00042_3.5dB.wav`` with ``clean/p102/00042.wav``). Unreadable, non-finite or silent pairs
are skipped by the writer and reported.

Example::

    build("pairs", "data/dns-test", {"root": "datasets/test_set/synthetic/no_reverb", "match": "fileid"})
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from sharding.audio import SAMPLE_RATE, list_audio, read_audio
from sharding.errors import SourceError
from sharding.recipes import RecipeSpec
from sharding.recipes.base import SPLITS, Clip, clip_key

log = logging.getLogger(__name__)
NAME = "pairs"
_FILEID = re.compile(r"fileid_(\d+)")
_EARS_SNR = re.compile(r"_-?\d+(\.\d+)?dB$")  # EARS-WHAM noisy names: <speaker>/<id>_<snr>dB


@dataclass(kw_only=True)
class PairsOptions:
    """Paired corpus: ``root`` holds ``noisy/`` and ``clean/`` (or give both folders)."""

    root: str = ""
    noisy_dir: str = ""
    clean_dir: str = ""
    split: str = "test"
    """Split the pairs are written to (train, valid or test)."""
    match: str = "name"
    """name (same relative path), fileid (DNS ``fileid_<n>``) or ears (EARS-WHAM: noisy
    ``pXXX/<id>_<snr>dB`` with clean ``pXXX/<id>``)."""
    convert: bool = True
    """Resample/mono-mix other formats; false skips them."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise SourceError(f"option split: expected one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.match not in ("name", "fileid", "ears"):
            raise SourceError(f"option match: expected name|fileid|ears, got {self.match!r}")
        if not self.root and not (self.noisy_dir and self.clean_dir):
            raise SourceError("recipe pairs: give root=DIR (with noisy/ and clean/) or noisy_dir= and clean_dir=")


def _match_key(path: Path, base: Path, how: str) -> str | None:
    if how == "fileid":
        m = _FILEID.search(path.name)
        return m.group(1) if m else None
    key = str(path.relative_to(base).with_suffix(""))
    return _EARS_SNR.sub("", key) if how == "ears" else key


class PairsCorpus:
    def __init__(self, opts: PairsOptions):
        self.opts = opts
        root = Path(opts.root) if opts.root else None
        noisy_dir = Path(opts.noisy_dir) if opts.noisy_dir else root / "noisy"
        clean_dir = Path(opts.clean_dir) if opts.clean_dir else root / "clean"
        noisy = {_match_key(p, noisy_dir, opts.match): p for p in list_audio(noisy_dir, what="noisy")}
        clean = {_match_key(p, clean_dir, opts.match): p for p in list_audio(clean_dir, what="clean")}
        names = sorted(k for k in set(noisy) & set(clean) if k is not None)
        unmatched = len(noisy) + len(clean) - 2 * len(names)
        if unmatched:
            log.warning("pairs: %d files in %s / %s have no partner; ignored", unmatched, noisy_dir, clean_dir)
        if not names:
            raise SourceError(f"{noisy_dir} and {clean_dir}: no file names match (match={opts.match})")
        self.pairs = []
        for name in names:
            if not opts.convert and not all(_native(p) for p in (noisy[name], clean[name])):
                log.warning("pairs: %s is not mono %d Hz; skipped (convert=false)", noisy[name], SAMPLE_RATE)
                continue
            self.pairs.append((name, noisy[name], clean[name]))
        if not self.pairs:
            raise SourceError(f"{noisy_dir}: no pair is mono {SAMPLE_RATE} Hz (set convert=true)")

    def split_sizes(self) -> dict[str, int]:
        return {s: (len(self.pairs) if s == self.opts.split else 0) for s in SPLITS}

    def bytes_per_clip(self, split: str) -> float:
        return 10 * SAMPLE_RATE * 2 * 2 * 0.7

    def clip(self, split: str, index: int) -> Clip | None:
        name, noisy_path, clean_path = self.pairs[index]
        try:
            noisy, clean = read_audio(noisy_path), read_audio(clean_path)
        except SourceError as e:
            log.warning("pairs: skipping %s: %s", name, e)
            return None
        n = min(len(noisy), len(clean))
        noisy, clean = noisy[:n], clean[:n]
        if not (np.all(np.isfinite(noisy)) and np.all(np.isfinite(clean))) or not np.any(clean):
            log.warning("pairs: skipping %s: non-finite or all-zero audio", name)
            return None
        meta = {"name": name, "source_noisy": str(noisy_path), "source_clean": str(clean_path),
                "offset_clean": 0, "offset_noise": 0, "num_samples": n}
        return Clip(clip_key(split, index), noisy, clean, meta)


def _native(path: Path) -> bool:
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return True  # decoding errors are reported when the clip is read
    return info.samplerate == SAMPLE_RATE and info.channels == 1


RECIPE = RecipeSpec(NAME, PairsOptions, PairsCorpus)
