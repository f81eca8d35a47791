"""``dns2020``: DNS Challenge 2020 training mixtures from the user's clean/ and noise/ folders.

Re-implements the 2020 synthesizer's behaviour: clean files concatenated with 0.2 s silence up to
the clip length (a file longer than what is missing contributes a random segment), only files
passing the clean activity threshold (0.6 of active 50 ms frames) and not clipped; noise built the
same way; the whole-signal SNR mixer with -25 dBFS normalisation, a random integer output level in
[-35, -15) dBFS and clipping re-normalisation (``sharding.mixing.dns_snr_mixer``).
Paper defaults (MambAttention): 10 s clips, integer SNRs -5..15 dB, 3000 h (1.08 M clips) of train,
315 valid clips from the held-out readers 01326, 06709, 08788 (F) and 01105, 05375, 11980 (M) and
a stable ~2 % of noise files. Clip ``i`` depends only on (seed, split, i) and the sorted file lists.
The official DNS test sets are already mixed: shard them with the ``pairs`` recipe (match=fileid).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharding.audio import SAMPLE_RATE, list_audio, read_audio
from sharding.errors import SourceError
from sharding.mixing import activity, concat_to_length, dns_snr_mixer
from sharding.recipes import RecipeSpec
from sharding.recipes.base import SPLITS, Clip, check_range, clip_key, clip_rng

log = logging.getLogger(__name__)
NAME = "dns2020"
_READER = re.compile(r"reader_\d+")
VALID_READERS = "reader_01326,reader_06709,reader_08788,reader_01105,reader_05375,reader_11980"


@dataclass(kw_only=True)
class DNS2020Options:
    """DNS 2020 synthesis (seconds, dB, dBFS)."""

    clean_dir: str = ""
    noise_dir: str = ""
    seed: int = 0
    total_hours: float = 3000.0
    """Train hours (1.08 M clips of 10 s at 3000 h); ignored when train_clips > 0."""
    train_clips: int = 0
    valid_clips: int = 315
    clip_seconds: float = 10.0
    snr_db_min: int = -5
    snr_db_max: int = 15
    level_dbfs_min: int = -35
    level_dbfs_max: int = -15
    target_dbfs: float = -25.0
    silence_s: float = 0.2
    clean_activity_threshold: float = 0.6
    noise_activity_threshold: float = 0.0
    valid_readers: str = VALID_READERS
    valid_noise_percent: float = 2.0
    max_tries: int = 50

    def __post_init__(self) -> None:
        if not self.clean_dir or not self.noise_dir:
            raise SourceError("recipe dns2020: clean_dir= and noise_dir= are required")
        check_range("snr_db", self.snr_db_min, self.snr_db_max)
        if self.level_dbfs_min >= self.level_dbfs_max:
            raise SourceError(f"option level_dbfs: min {self.level_dbfs_min} must be below max {self.level_dbfs_max}")
        if self.clip_seconds <= 0 or self.total_hours < 0:
            raise SourceError("options clip_seconds must be > 0 and total_hours >= 0")


def _stable_percent(name: str) -> float:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) % 10000 / 100


class DNS2020Corpus:
    def __init__(self, opts: DNS2020Options):
        self.opts = opts
        self.clean_dir, self.noise_dir = Path(opts.clean_dir), Path(opts.noise_dir)
        clean = list_audio(self.clean_dir, what="clean")
        noise = list_audio(self.noise_dir, what="noise")
        held = {r.strip() for r in opts.valid_readers.split(",") if r.strip()}
        self.clean = {"train": [], "valid": []}
        for p in clean:
            m = _READER.search(p.name)
            self.clean["valid" if m and m.group(0) in held else "train"].append(p)
        self.noise = {"train": [], "valid": []}
        for p in noise:
            rel = str(p.relative_to(self.noise_dir))
            self.noise["valid" if _stable_percent(rel) < opts.valid_noise_percent else "train"].append(p)
        n = int(round(opts.total_hours * 3600 / opts.clip_seconds))
        self.sizes = {"train": opts.train_clips or n, "valid": opts.valid_clips, "test": 0}
        for split in ("train", "valid"):
            if self.sizes[split] and not self.clean[split]:
                raise SourceError(f"{self.clean_dir}: no clean files for {split} (valid_readers={opts.valid_readers})")
            if self.sizes[split] and not self.noise[split]:
                raise SourceError(f"{self.noise_dir}: no noise files for {split} (valid_noise_percent="
                                  f"{opts.valid_noise_percent})")

    def split_sizes(self) -> dict[str, int]:
        return {s: self.sizes.get(s, 0) for s in SPLITS}

    def bytes_per_clip(self, split: str) -> float:
        return self.opts.clip_seconds * SAMPLE_RATE * 2 * 2 * 0.65

    def _build(self, rng: np.random.Generator, files: list[Path], base: Path, n: int, threshold: float,
               what: str) -> tuple[np.ndarray, list] | None:
        pieces, sources, total, tries = [], [], 0, 0
        gap = int(self.opts.silence_s * SAMPLE_RATE)
        while total < n:
            path = files[int(rng.integers(len(files)))]
            x = read_audio(path)
            remaining = n - total
            offset = 0
            if len(x) > remaining:
                offset = int(rng.integers(0, len(x) - remaining))
                x = x[offset : offset + remaining]
            bad = len(x) == 0 or np.max(np.abs(x)) >= 0.99 or (threshold > 0 and activity(x) < threshold)
            if bad:
                tries += 1
                if tries > self.opts.max_tries:
                    log.warning("dns2020: no %s file passed the activity/clipping checks in %d tries", what, tries)
                    return None
                continue
            pieces.append(x)
            sources.append([str(path.relative_to(base)), offset, len(x)])
            total += len(x) + gap
        return concat_to_length(pieces, n, self.opts.silence_s), sources

    def clip(self, split: str, index: int) -> Clip | None:
        o = self.opts
        rng = clip_rng(o.seed, split, index)
        n = int(round(o.clip_seconds * SAMPLE_RATE))
        built = self._build(rng, self.clean[split], self.clean_dir, n, o.clean_activity_threshold, "clean")
        if built is None:
            return None
        clean, clean_src = built
        built = self._build(rng, self.noise[split], self.noise_dir, n, o.noise_activity_threshold, "noise")
        if built is None:
            return None
        noise, noise_src = built
        snr = int(rng.integers(o.snr_db_min, o.snr_db_max + 1))
        level = int(rng.integers(o.level_dbfs_min, o.level_dbfs_max))
        noisy, clean, applied = dns_snr_mixer(clean, noise, snr, level, target_dbfs=o.target_dbfs)
        reader = _READER.search(Path(clean_src[0][0]).name)
        meta = {
            "snr_db": snr, "level_dbfs": applied, "target_level_dbfs": level,
            "speaker": reader.group(0) if reader else Path(clean_src[0][0]).stem,
            "noise_type": re.sub(r"[_-]?\d+$", "", Path(noise_src[0][0]).stem) or Path(noise_src[0][0]).stem,
            "clean_sources": clean_src, "noise_sources": noise_src, "num_samples": n,
        }
        return Clip(clip_key(split, index), noisy, clean, meta)


RECIPE = RecipeSpec(NAME, DNS2020Options, DNS2020Corpus)
