"""``ears-wham``: EARS clean speech + WHAM! noise at loudness-based SNRs (EARS-WHAM v2 recipe).

Behaviour of the public generation script (mixing at ``mix_rate`` = 48 kHz as it does, loudness with
pyloudnorm as it does; the pieces are then resampled to 16 kHz for the shards): speakers p001-p099 train, p100-p101 valid,
p102-p107 test; styles interjection/melodic/nonverbal/vegetative held out; files shorter than
``min_seconds`` (4 s) dropped; each file mixed whole with a random segment of a random WHAM! file
(re-drawn until long enough, random channel) at an SNR drawn uniformly in [-2.5, 17.5] dB (0.1 dB
steps) measured as ITU-R BS.1770 integrated loudness difference (``sharding.loudness``), +1 dB
until the mixture does not clip; files of >= cut+min seconds cut into 10 s pieces (the last piece
takes the rest). The test split gets 10 ms fade ramps. With ``test_files=`` (the official
``test_files.json``: speaker -> file -> [[start, end], ...] in 48 kHz samples, end -1 as Python's
slice end) the test split is those cuts, each mixed on its own, cuts over ``max_test_seconds``
(29 s) left out, as the official script does; without it the test split is cut like train/valid.
Random draws are this recipe's own (seeded), not the official script's: for the paper's exact test
mixtures shard the released EARS-WHAM_v2 test pairs with ``pairs match=ears`` (sharding/README.md).
``mix_rate=16000 loudness=builtin`` gives the earlier 16 kHz mixing with ``sharding.loudness``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from sharding.audio import SAMPLE_RATE, list_audio, to_mono_16k
from sharding.errors import SourceError
from sharding.loudness import integrated_loudness
from sharding.recipes import RecipeSpec
from sharding.recipes.base import SPLIT_SEED, SPLITS, Clip, check_range, clip_key

log = logging.getLogger(__name__)
NAME = "ears-wham"
_SPEAKER = re.compile(r"^p\d{3}$")


@dataclass(kw_only=True)
class EarsWhamOptions:
    """EARS-WHAM mixing (seconds, dB)."""

    ears_dir: str = ""
    """Folder of EARS speaker folders p001..p107."""
    wham_dir: str = ""
    """Folder holding WHAM! noise files (searched recursively)."""
    seed: int = 0
    snr_db_min: float = -2.5
    snr_db_max: float = 17.5
    min_seconds: float = 4.0
    cut_seconds: float = 10.0
    valid_speakers: str = "p100,p101"
    test_speakers: str = "p102,p103,p104,p105,p106,p107"
    hold_out_styles: str = "interjection,melodic,nonverbal,vegetative"
    ramp_ms: float = 10.0
    mix_rate: int = 48000
    """Rate the speech and noise are mixed at (the official script: 48000)."""
    loudness: str = "pyloudnorm"
    """BS.1770 meter: pyloudnorm (the official script's) or builtin (sharding.loudness)."""
    test_files: str = ""
    """The official test_files.json (cut times of the test split); empty: cut like train/valid."""
    max_test_seconds: float = 29.0

    def __post_init__(self) -> None:
        if self.loudness not in ("pyloudnorm", "builtin"):
            raise SourceError(f"option loudness: expected pyloudnorm|builtin, got {self.loudness!r}")
        if self.mix_rate < SAMPLE_RATE:
            raise SourceError(f"option mix_rate: expected >= {SAMPLE_RATE}, got {self.mix_rate}")
        if self.test_files and not Path(self.test_files).is_file():
            raise SourceError(f"option test_files: {self.test_files} is not a file")
        if not self.ears_dir or not self.wham_dir:
            raise SourceError("recipe ears-wham: ears_dir= and wham_dir= are required")
        check_range("snr_db", self.snr_db_min, self.snr_db_max)
        if self.cut_seconds <= 0 or self.min_seconds < 0:
            raise SourceError("options cut_seconds must be > 0 and min_seconds >= 0")


def _len_at(path: Path, rate: int = SAMPLE_RATE) -> int:
    info = sf.info(str(path))
    return math.ceil(info.frames * rate / info.samplerate)


def _read_at(path: Path, rate: int, channel: int | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """Mono float32 at ``rate``: channel ``channel`` (or a random one with ``rng``, else the mix)."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if rng is not None:
        channel = int(rng.integers(0, x.shape[1]))
    return to_mono_16k(x[:, channel] if channel is not None else x, sr, target_sr=rate)


def _meter(kind: str, rate: int):
    """x -> integrated loudness (LUFS) at ``rate``; -inf for silence or audio shorter than one block."""
    if kind == "builtin":
        return lambda x: integrated_loudness(x, rate)
    import warnings

    import pyloudnorm

    meter = pyloudnorm.Meter(rate)

    def measure(x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return float(meter.integrated_loudness(np.asarray(x, dtype=np.float64)))
            except ValueError:  # shorter than one 400 ms block
                return -math.inf

    return measure


def _official_test_pieces(opts: EarsWhamOptions, ears_dir: Path) -> tuple[list[Path], list[tuple[int, int, int]]]:
    """(files, pieces) of the official test split from ``test_files.json`` (cut times at 48 kHz)."""
    import json

    try:
        table = json.loads(Path(opts.test_files).read_text())
    except ValueError as e:
        raise SourceError(f"{opts.test_files}: not the EARS-WHAM test_files.json ({e})") from None
    files, pieces = [], []
    scale = opts.mix_rate / 48000
    for speaker in opts.test_speakers.split(","):
        for name, cuts in sorted(table.get(speaker, {}).items()):
            path = ears_dir / speaker / f"{name}.wav"
            if not path.is_file():
                raise SourceError(f"{path}: listed in {opts.test_files} but missing")
            n = _len_at(path, opts.mix_rate)
            for start, end in cuts:
                s = round(start * scale)
                e = n - 1 if end == -1 else min(n, round(end * scale))  # Python's slice end -1
                if 0 < e - s <= opts.max_test_seconds * opts.mix_rate:
                    pieces.append((len(files), s, e))
            files.append(path)
    if not pieces:
        raise SourceError(f"{opts.test_files}: no cut of the test speakers found under {ears_dir}")
    return files, pieces


def pieces_of(length: int, min_len: int, cut: int) -> list[tuple[int, int]]:
    """[start, end) pieces of a file of ``length`` samples, as the EARS-WHAM script cuts them."""
    if length < min_len:
        return []
    if length < cut + min_len:
        return [(0, length)]
    num = int((length - min_len) / cut) + 1
    return [(i * cut, (i + 1) * cut) for i in range(num - 1)] + [((num - 1) * cut, length)]


class EarsWhamCorpus:
    def __init__(self, opts: EarsWhamOptions):
        self.opts = opts
        self.ears_dir = Path(opts.ears_dir)
        files = list_audio(self.ears_dir, what="EARS")
        self.noise = list_audio(opts.wham_dir, what="WHAM!")
        valid = set(opts.valid_speakers.split(","))
        test = set(opts.test_speakers.split(","))
        held = set(opts.hold_out_styles.split(","))
        rate = opts.mix_rate
        min_len, cut = int(opts.min_seconds * rate), int(opts.cut_seconds * rate)
        self.files: dict[str, list[Path]] = {s: [] for s in SPLITS}
        self.pieces: dict[str, list[tuple[int, int, int]]] = {s: [] for s in SPLITS}  # (file idx, start, end)
        for p in files:
            speaker = p.parent.name
            if not _SPEAKER.match(speaker) or p.name.split("_")[0] in held:
                continue
            split = "valid" if speaker in valid else "test" if speaker in test else "train"
            for start, end in pieces_of(_len_at(p, rate), min_len, cut):
                self.pieces[split].append((len(self.files[split]), start, end))
            self.files[split].append(p)
        if not any(self.pieces.values()):
            raise SourceError(f"{self.ears_dir}: no usable EARS files (p###/<style>_*.wav of >= {opts.min_seconds} s)")
        self.cut_mixing = opts.test_files != ""  # official test split: each cut mixed on its own
        if self.cut_mixing:
            self.files["test"], self.pieces["test"] = _official_test_pieces(opts, self.ears_dir)
        self.loudness = _meter(opts.loudness, rate)
        self._noise_len: dict[Path, int] = {}

    def split_sizes(self) -> dict[str, int]:
        return {s: len(self.pieces[s]) for s in SPLITS}

    def bytes_per_clip(self, split: str) -> float:
        return self.opts.cut_seconds * SAMPLE_RATE * 2 * 2 * 0.65

    def _noise_for(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, str, int]:
        for _ in range(1000):
            path = self.noise[int(rng.integers(len(self.noise)))]
            if path not in self._noise_len:
                self._noise_len[path] = _len_at(path, self.opts.mix_rate)
            if self._noise_len[path] >= n:
                break
        else:
            raise SourceError(f"{self.opts.wham_dir}: no noise file is as long as {n / self.opts.mix_rate:.1f} s")
        x = _read_at(path, self.opts.mix_rate, rng=rng)
        start = int(rng.integers(0, len(x) - n + 1))
        return x[start : start + n], str(path), start

    def clip(self, split: str, index: int) -> Clip | None:
        o = self.opts
        file_idx, start, end = self.pieces[split][index]
        path = self.files[split][file_idx]
        rate = o.mix_rate
        speech = _read_at(path, rate)
        file_offset = 0
        if split == "test" and self.cut_mixing:  # the official test split: the cut alone is mixed
            rng = np.random.default_rng([o.seed, SPLIT_SEED[split], file_idx, start, 0xEA26])
            speech, file_offset, start, end = speech[start:end], start, 0, end - start
        else:
            rng = np.random.default_rng([o.seed, SPLIT_SEED[split], file_idx, 0xEA25])  # per file, mixed whole
        noise, noise_path, noise_start = self._noise_for(rng, len(speech))
        snr = round(float(rng.uniform(o.snr_db_min, o.snr_db_max)), 1)
        l_speech = self.loudness(speech)
        l_noise = self.loudness(noise)
        if not (np.isfinite(l_speech) and np.isfinite(l_noise)):
            log.warning("ears-wham: %s or %s is silent; skipped", path, noise_path)
            return None
        while True:
            gain = 10 ** ((l_speech - snr - l_noise) / 20)
            mixture = speech + gain * noise
            if np.max(np.abs(mixture)) < 1.0:
                break
            snr += 1.0
        noisy, clean = mixture[start:end].astype(np.float32), speech[start:end].astype(np.float32)
        if split == "test" and o.ramp_ms > 0:
            r = min(int(o.ramp_ms / 1000 * rate), len(clean) // 2)
            ramp = np.linspace(0, 1, r, dtype=np.float32)
            for x in (noisy, clean):
                x[:r] *= ramp
                x[len(x) - r :] *= ramp[::-1]
        noisy, clean = to_mono_16k(noisy, rate), to_mono_16k(clean, rate)  # the 16 kHz version
        to16 = SAMPLE_RATE / rate
        start, end = round((file_offset + start) * to16), round((file_offset + start) * to16) + len(clean)
        noise_start = round(noise_start * to16) - round(file_offset * to16)  # the meta adds start below
        meta = {"snr_db": snr, "snr_type": "bs1770-loudness", "level_lufs": l_speech,
                "speaker": path.parent.name, "style": path.stem, "noise_type": "wham",
                "source_clean": str(path.relative_to(self.ears_dir)), "offset_clean": start,
                "source_noise": noise_path, "offset_noise": noise_start + start, "num_samples": end - start}
        return Clip(clip_key(split, index), noisy, clean, meta)


RECIPE = RecipeSpec(NAME, EarsWhamOptions, EarsWhamCorpus)
