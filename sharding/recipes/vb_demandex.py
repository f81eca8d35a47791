"""``vb-demandex``: VoiceBank + DEMAND + LibriSpeech babble/SSN as the MambAttention paper describes.

* Clean: VoiceBank (28 speakers, both original train and test folders); p232/p257 test,
  p282/p287 valid, the other 26 train. Paths containing "noisy" are ignored.
* Noise, 8 types: 6 DEMAND categories (domestic D*, office O*, public P*, transportation T*,
  street S*, nature N*: the 3 subsets of a category together), with the 16 channel recordings of
  every subset split 1-12 train / 13-14 valid / 15-16 test; babble = mean of 6 energy-standardised
  LibriSpeech utterances with silent frames removed (energy VAD here; the paper used rVAD);
  speech-shaped noise = white Gaussian noise through the all-pole filter of a 12th-order LPC fit
  of one LibriSpeech speaker. LibriSpeech speakers are split 80/10/10 in a stable hash order.
* Clip ``i`` of a split = clean file ``i`` (sorted), noise type ``i mod 8``, SNR ``SNRS[i mod 7]``
  (uniform joint distribution of type x SNR), mixed with the DNS 2020 mixer (-25 dBFS
  normalisation, random level, clipping re-normalisation). A DEMAND segment is a random offset
  in a random channel file of the type's split (the paper concatenates them; same distribution
  except segments that would straddle two files).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import solve_toeplitz
from scipy.signal import lfilter

from sharding.audio import SAMPLE_RATE, fit_length, list_audio, read_audio
from sharding.errors import SourceError
from sharding.mixing import dns_snr_mixer
from sharding.recipes import RecipeSpec
from sharding.recipes.base import SPLITS, Clip, clip_key, clip_rng

NAME = "vb-demandex"
NOISE_TYPES = ("domestic", "office", "public", "transportation", "street", "nature", "babble", "ssn")
_CATEGORY = {"D": "domestic", "O": "office", "P": "public", "T": "transportation", "S": "street", "N": "nature"}
_VB = re.compile(r"^(p\d{3})_\d{3}$")
_CHANNEL = re.compile(r"ch(\d+)", re.IGNORECASE)


@dataclass(kw_only=True)
class VBDemandExOptions:
    """VB-DemandEx mixing (dB, dBFS)."""

    voicebank_dir: str = ""
    demand_dir: str = ""
    """Folder of the 16 kHz DEMAND subsets (DKITCHEN/ch01.wav ...)."""
    librispeech_dir: str = ""
    """LibriSpeech folder(s) <speaker>/<chapter>/<utt>.flac for babble and SSN."""
    seed: int = 0
    snrs_db: str = "-10,-5,0,5,10,15,20"
    valid_speakers: str = "p282,p287"
    test_speakers: str = "p232,p257"
    level_dbfs_min: int = -35
    level_dbfs_max: int = -15
    babble_talkers: int = 6
    lpc_order: int = 12
    librispeech_valid_percent: float = 10.0
    librispeech_test_percent: float = 10.0

    def __post_init__(self) -> None:
        if not (self.voicebank_dir and self.demand_dir and self.librispeech_dir):
            raise SourceError("recipe vb-demandex: voicebank_dir=, demand_dir= and librispeech_dir= are required")
        try:
            snrs = [float(s) for s in self.snrs_db.split(",")]
        except ValueError:
            snrs = [math.nan]
        if not all(math.isfinite(s) for s in snrs):
            raise SourceError(f"option snrs_db: expected comma-separated finite numbers, got {self.snrs_db!r}")


def _demand_split(channel: int) -> str:
    return "train" if channel <= 12 else "valid" if channel <= 14 else "test"


def vad_trim(x: np.ndarray, *, frame: int = 320, floor_db: float = 40.0) -> np.ndarray:
    """Drop 20 ms frames more than ``floor_db`` below the loudest frame (silence removal)."""
    m = len(x) // frame
    if m == 0:
        return x
    frames = x[: m * frame].reshape(m, frame)
    e = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    return frames[e > e.max() - floor_db].reshape(-1)


def lpc(x: np.ndarray, order: int) -> np.ndarray:
    """All-pole coefficients [1, a1..ap] of an autocorrelation-method LPC fit."""
    x = x.astype(np.float64) * np.hanning(len(x))
    r = np.correlate(x, x, "full")[len(x) - 1 : len(x) + order]
    r[0] *= 1 + 1e-9
    a = solve_toeplitz(r[:order], -r[1 : order + 1])
    return np.concatenate([[1.0], a])


class VBDemandExCorpus:
    def __init__(self, opts: VBDemandExOptions):
        self.opts = opts
        self.snrs = [float(s) for s in opts.snrs_db.split(",")]
        valid, test = set(opts.valid_speakers.split(",")), set(opts.test_speakers.split(","))
        self.clean: dict[str, list[Path]] = {s: [] for s in SPLITS}
        vb_dir = Path(opts.voicebank_dir)
        for p in list_audio(vb_dir, what="VoiceBank"):
            m = _VB.match(p.stem)
            if not m or any("noisy" in part.lower() for part in p.relative_to(vb_dir).parts):
                continue
            spk = m.group(1)
            self.clean["valid" if spk in valid else "test" if spk in test else "train"].append(p)
        if not any(self.clean.values()):
            raise SourceError(f"{vb_dir}: no VoiceBank clean files (pNNN_NNN.wav)")
        self.demand: dict[tuple[str, str], list[Path]] = {}
        for p in list_audio(opts.demand_dir, what="DEMAND"):
            m = _CHANNEL.search(p.stem)
            cat = _CATEGORY.get(p.parent.name[:1].upper())
            if m and cat:
                self.demand.setdefault((cat, _demand_split(int(m.group(1)))), []).append(p)
        self.libri: dict[str, dict[str, list[Path]]] = {s: {} for s in SPLITS}
        libri_dir = Path(opts.librispeech_dir)
        by_speaker: dict[str, list[Path]] = {}
        for p in list_audio(libri_dir, what="LibriSpeech"):
            rel = p.relative_to(libri_dir).parts
            by_speaker.setdefault(rel[0] if len(rel) > 1 else p.stem, []).append(p)
        # speakers ordered by a stable hash; the first ceil(valid %) go to valid, the next to test
        order = sorted(by_speaker, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
        n_valid = math.ceil(len(order) * opts.librispeech_valid_percent / 100)
        n_test = math.ceil(len(order) * opts.librispeech_test_percent / 100)
        for k, spk in enumerate(order):
            split = "valid" if k < n_valid else "test" if k < n_valid + n_test else "train"
            self.libri[split][spk] = by_speaker[spk]
        for split in SPLITS:
            if not self.clean[split]:
                continue
            missing = [c for c in _CATEGORY.values() if (c, split) not in self.demand]
            if missing:
                raise SourceError(f"{opts.demand_dir}: no {split} channels (ch01-12/13-14/15-16) for {', '.join(missing)}")
            if not self.libri[split]:
                raise SourceError(f"{libri_dir}: no LibriSpeech speakers fall in the {split} split")

    def split_sizes(self) -> dict[str, int]:
        return {s: len(self.clean[s]) for s in SPLITS}

    def bytes_per_clip(self, split: str) -> float:
        return 3.0 * SAMPLE_RATE * 2 * 2 * 0.7

    def _babble(self, rng: np.random.Generator, split: str, n: int) -> tuple[np.ndarray, list[str]]:
        files = sorted(p for ps in self.libri[split].values() for p in ps)
        y, used = np.zeros(n), []
        for _ in range(self.opts.babble_talkers):
            p = files[int(rng.integers(len(files)))]
            x = vad_trim(read_audio(p))
            x = x / (np.std(x) + 1e-9)
            y += fit_length(x, n, rng)
            used.append(str(p))
        return (y / self.opts.babble_talkers).astype(np.float32), used

    def _ssn(self, rng: np.random.Generator, split: str, n: int) -> tuple[np.ndarray, list[str]]:
        speakers = sorted(self.libri[split])
        spk = speakers[int(rng.integers(len(speakers)))]
        files = sorted(self.libri[split][spk])[:5]
        speech = np.concatenate([vad_trim(read_audio(p)) for p in files])
        a = lpc(speech, self.opts.lpc_order)
        y = lfilter([1.0], a, rng.standard_normal(n + 1000))[1000:]
        return (y / (np.std(y) + 1e-9)).astype(np.float32), [str(p) for p in files]

    def clip(self, split: str, index: int) -> Clip | None:
        o = self.opts
        rng = clip_rng(o.seed, split, index)
        path = self.clean[split][index]
        clean = read_audio(path)
        n = len(clean)
        kind = NOISE_TYPES[index % len(NOISE_TYPES)]
        snr = self.snrs[index % len(self.snrs)]
        offset = 0
        if kind == "babble":
            noise, sources = self._babble(rng, split, n)
        elif kind == "ssn":
            noise, sources = self._ssn(rng, split, n)
        else:
            files = self.demand[(kind, split)]
            src = files[int(rng.integers(len(files)))]
            x = read_audio(src)
            offset = int(rng.integers(0, max(1, len(x) - n + 1)))
            noise = x[offset : offset + n] if len(x) >= n else np.resize(x, n)
            sources = [str(src)]
        level = int(rng.integers(o.level_dbfs_min, o.level_dbfs_max))
        noisy, clean, applied = dns_snr_mixer(clean, noise, snr, level)
        meta = {"snr_db": snr, "level_dbfs": applied, "target_level_dbfs": level, "speaker": path.stem.split("_")[0],
                "noise_type": kind, "source_clean": path.name, "offset_clean": 0,
                "noise_sources": sources, "offset_noise": offset, "num_samples": n}
        return Clip(clip_key(split, index), noisy, clean, meta)


RECIPE = RecipeSpec(NAME, VBDemandExOptions, VBDemandExCorpus)
