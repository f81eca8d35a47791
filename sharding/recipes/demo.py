"""``demo``: a small synthetic corpus built here with no download (seconds on one core).

Speech from espeak-ng when installed (several voices, random pitch/speed, random word sentences),
else procedural speech-like talkers; noises generated (coloured, babble, hum, transient).
Splits use disjoint speakers and disjoint random streams. Deterministic given ``seed``.

Example::

    prepare_demo("data/demo")   # -> data/demo/{train,valid,test}/shard-000000.tar + manifest.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sharding.audio import SAMPLE_RATE, mix_at_level
from sharding.errors import SourceError
from sharding.recipes import RecipeSpec
from sharding.recipes.base import SPLITS, Clip, check_range, clip_key, clip_rng
from sharding.recipes.synth import (
    NOISE_TYPES,
    Voice,
    espeak_available,
    espeak_speech,
    make_noise,
    procedural_speech,
)

NAME = "demo"
# 60 espeak-ng voices = accent x variant, in a fixed shuffled order; the last 8 are held out for
# valid/test (so those mix accents and genders).
_ESPEAK_VOICES = [
    str(v) for v in np.random.default_rng(2020).permutation(sorted(
        f"{lang}+{var}"
        for lang in ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029")
        for var in ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
    ))
]
_PROCEDURAL_SPEAKERS = 40


@dataclass(kw_only=True)
class DemoOptions:
    """Options of the demo corpus (durations in seconds, levels in dBFS)."""

    seed: int = 0
    train_clips: int = 200
    valid_clips: int = 16
    test_clips: int = 16
    min_seconds: float = 2.0
    max_seconds: float = 4.0
    snr_db_min: float = -5.0
    snr_db_max: float = 15.0
    level_dbfs_min: float = -35.0
    level_dbfs_max: float = -15.0
    speech: str = "auto"
    """auto (espeak-ng if installed), espeak or procedural."""
    noise_types: str = ",".join(NOISE_TYPES)
    """Comma-separated subset of white,pink,brown,babble,hum,transient."""

    def __post_init__(self) -> None:
        check_range("seconds", self.min_seconds, self.max_seconds)
        check_range("snr_db", self.snr_db_min, self.snr_db_max)
        check_range("level_dbfs", self.level_dbfs_min, self.level_dbfs_max)
        if not 0 < self.min_seconds <= self.max_seconds <= 600:
            raise SourceError(f"options min_seconds, max_seconds: expected 0 < min <= max <= 600 s, got "
                              f"{self.min_seconds}, {self.max_seconds}")
        if self.speech not in ("auto", "espeak", "procedural"):
            raise SourceError(f"option speech: expected auto|espeak|procedural, got {self.speech!r}")
        bad = [n for n in self.noise_types.split(",") if n not in NOISE_TYPES]
        if bad or not self.noise_types:
            raise SourceError(f"option noise_types: unknown {bad}; known: {','.join(NOISE_TYPES)}")
        for s in SPLITS:
            if getattr(self, f"{s}_clips") < 0:
                raise SourceError(f"option {s}_clips: expected an integer >= 0 (0: no {s} split), "
                                  f"got {getattr(self, f'{s}_clips')}")
        if not any(getattr(self, f"{s}_clips") for s in SPLITS):
            raise SourceError("options train_clips, valid_clips, test_clips: all 0, nothing to build")


def _split_speakers(items: list, held_out: int) -> dict[str, list]:
    return {"train": items[: -2 * held_out], "valid": items[-2 * held_out : -held_out], "test": items[-held_out:]}


class DemoCorpus:
    def __init__(self, opts: DemoOptions):
        self.opts = opts
        engine = opts.speech
        if engine == "auto":
            engine = "espeak" if espeak_available() else "procedural"
        elif engine == "espeak" and not espeak_available():
            raise SourceError("option speech=espeak: espeak-ng is not installed (apt-get install espeak-ng)")
        self.engine = engine
        if engine == "espeak":
            self.speakers = _split_speakers(_ESPEAK_VOICES, 4)
        else:
            self.speakers = _split_speakers([f"spk{i:03d}" for i in range(_PROCEDURAL_SPEAKERS)], 4)
        self.noise_types = opts.noise_types.split(",")

    def split_sizes(self) -> dict[str, int]:
        return {s: getattr(self.opts, f"{s}_clips") for s in SPLITS}

    def bytes_per_clip(self, split: str) -> float:
        return (self.opts.min_seconds + self.opts.max_seconds) / 2 * SAMPLE_RATE * 2 * 2 * 0.7

    def clip(self, split: str, index: int) -> Clip:
        o = self.opts
        rng = clip_rng(o.seed, split, index)
        n = int(round(rng.uniform(o.min_seconds, o.max_seconds) * SAMPLE_RATE))
        speaker = self.speakers[split][int(rng.integers(len(self.speakers[split])))]
        if self.engine == "espeak":
            clean = espeak_speech(rng, speaker, n)
        else:
            clean = procedural_speech(rng, Voice.from_id(int(speaker[3:])), n)
        noise_type = self.noise_types[int(rng.integers(len(self.noise_types)))]
        noise = make_noise(rng, noise_type, n)
        snr = float(rng.uniform(o.snr_db_min, o.snr_db_max))
        level = float(rng.uniform(o.level_dbfs_min, o.level_dbfs_max))
        noisy, clean, applied = mix_at_level(clean, noise, snr, level)
        meta: dict[str, Any] = {
            "snr_db": snr, "level_dbfs": applied, "speaker": speaker, "noise_type": noise_type,
            "speech_engine": self.engine, "source_clean": f"{self.engine}:{speaker}",
            "source_noise": f"synth:{noise_type}", "offset_clean": 0, "offset_noise": 0,
            "num_samples": n,
        }
        return Clip(clip_key(split, index), noisy, clean, meta)


RECIPE = RecipeSpec(NAME, DemoOptions, DemoCorpus, default_shard_samples=25)


def prepare_demo(out_dir: str | Path, *, executor: str = "local", num_workers: int = 1,
                 shard_samples: int | None = None, **options: Any) -> dict:
    """Build the demo corpus under ``out_dir``; ``options`` are DemoOptions fields. Returns build summary."""
    from sharding.writer import build

    return build(NAME, out_dir, options, executor=executor, num_workers=num_workers, shard_samples=shard_samples)
