"""Synthetic speech and noise for the demo corpus (no downloads).

Speech: espeak-ng (subprocess) when installed, else a procedural speech-like generator: a voiced
sawtooth source with a moving f0, filtered per syllable by three formant resonators, shaped by
syllable envelopes, with unvoiced fricative bursts and pauses between words.
Noise: coloured (white/pink/brown), babble (sum of speech-like talkers), hum (mains + harmonics),
transient (clicks and door-like bursts). All float32 at 16 kHz, deterministic given the rng.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from scipy.signal import butter, lfilter, sawtooth, sosfilt

from sharding.audio import SAMPLE_RATE, to_mono_16k

SR = SAMPLE_RATE

# (F1, F2, F3) Hz of a few vowels (adult male averages; scaled per speaker).
VOWELS = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480], [660, 1720, 2410],
     [570, 840, 2410], [300, 870, 2240], [640, 1190, 2390], [490, 1350, 1690]],
    dtype=np.float64,
)
WORDS = (
    "the a one two three red green blue house water table garden river morning evening light "
    "small large quick slow people window paper music little friend station number orange "
    "yellow winter summer mountain street kitchen silver golden basket pencil market doctor "
    "letter follow open close bring carry listen speak travel remember build answer happy "
    "quiet early later seven eleven under over between around because before after never"
).split()


@dataclass(frozen=True)
class Voice:
    """A procedural speaker: base f0 (Hz), formant scale, syllables per second, breathiness."""

    f0_hz: float
    formant_scale: float
    rate_hz: float
    breath: float

    @staticmethod
    def from_id(speaker: int) -> Voice:
        r = np.random.default_rng([7919, speaker])
        female = speaker % 2 == 1
        f0 = r.uniform(165, 250) if female else r.uniform(85, 150)
        scale = r.uniform(1.08, 1.22) if female else r.uniform(0.88, 1.02)
        return Voice(float(f0), float(scale), float(r.uniform(3.0, 5.5)), float(r.uniform(0.01, 0.06)))


def _resonator(freq: float, bw: float) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(-np.pi * bw / SR)
    theta = 2 * np.pi * freq / SR
    a = np.array([1.0, -2 * r * np.cos(theta), r * r])
    return np.array([a.sum()]), a  # unity gain at DC


def procedural_speech(rng: np.random.Generator, voice: Voice, num_samples: int) -> np.ndarray:
    """A speech-like signal of ``num_samples`` [N] float32, peak-normalised to 0.5."""
    out = np.zeros(num_samples, dtype=np.float64)
    pos = int(rng.integers(0, SR // 10))
    hi = butter(2, [2000, 6000], btype="bandpass", fs=SR, output="sos")
    while pos < num_samples:
        for _ in range(int(rng.integers(1, 4))):  # syllables of one word
            dur = int(SR * rng.uniform(0.6, 1.4) / voice.rate_hz)
            if pos + dur > num_samples:
                dur = num_samples - pos
            if dur < 64:
                pos = num_samples
                break
            t = np.arange(dur) / SR
            f0 = voice.f0_hz * (1 + rng.uniform(-0.15, 0.2)) * (1 - 0.25 * t) * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
            phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.cumsum(f0) / SR
            src = sawtooth(phase) + voice.breath * rng.standard_normal(dur)
            formants = VOWELS[int(rng.integers(len(VOWELS)))] * voice.formant_scale
            seg = src
            for k, f in enumerate(formants):
                b, a = _resonator(f, 60 + 40 * k)
                seg = lfilter(b, a, seg)
            seg = seg / (np.max(np.abs(seg)) + 1e-9)
            atk, rel = min(dur // 3, int(0.02 * SR)), min(dur // 3, int(0.04 * SR))
            env = np.ones(dur)
            env[:atk] = np.linspace(0, 1, atk)
            env[dur - rel :] = np.linspace(1, 0, rel)
            out[pos : pos + dur] += seg * env * rng.uniform(0.5, 1.0)
            if rng.random() < 0.4:  # fricative onset
                n = min(int(SR * rng.uniform(0.03, 0.08)), dur)
                fric = sosfilt(hi, rng.standard_normal(n)) * np.hanning(n) * rng.uniform(0.1, 0.3)
                out[pos : pos + n] += fric
            pos += dur
        pos += int(SR * rng.uniform(0.05, 0.3))  # pause between words
    return (0.5 * out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_speech(rng: np.random.Generator, voice: str, num_samples: int) -> np.ndarray:
    """espeak-ng sentences of random words (pitch/speed drawn from ``rng``), 0.2 s gaps, cut to length."""
    pieces, total = [], 0
    gap = np.zeros(int(0.2 * SR), dtype=np.float32)
    while total < num_samples:
        # ~3 words per second at these speeds: usually one call covers the clip
        words = int(rng.integers(4, 8)) + int(3 * (num_samples - total) / SR)
        text = " ".join(rng.choice(WORDS, size=words))
        cmd = ["espeak-ng", "-v", voice, "-p", str(int(rng.integers(25, 75))),
               "-s", str(int(rng.integers(130, 190))), "--stdout", text]
        wav = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
        x, sr = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
        x = to_mono_16k(x, sr)
        pieces += [x, gap]
        total += len(x) + len(gap)
    y = np.concatenate(pieces)[:num_samples]
    return (0.5 * y / (np.max(np.abs(y)) + 1e-9)).astype(np.float32)


# ---------------------------------------------------------------- noises
NOISE_TYPES = ("white", "pink", "brown", "babble", "hum", "transient")


def coloured_noise(rng: np.random.Generator, num_samples: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(num_samples))
    f = np.fft.rfftfreq(num_samples, 1 / SR)
    f[0] = f[1] if len(f) > 1 else 1.0
    spec *= f ** (-exponent / 2)
    y = np.fft.irfft(spec, n=num_samples)
    return (y / (np.std(y) + 1e-9)).astype(np.float32)


def babble_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Sum of 3-6 procedural talkers drawn from a speaker pool disjoint from the speech speakers."""
    y = np.zeros(num_samples, dtype=np.float32)
    for _ in range(int(rng.integers(3, 7))):
        voice = Voice.from_id(10_000 + int(rng.integers(0, 200)))
        y += procedural_speech(rng, voice, num_samples) * rng.uniform(0.5, 1.0)
    return y


def hum_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Mains hum at 50 or 60 Hz with decaying random harmonics and a little broadband noise."""
    base = 50.0 if rng.random() < 0.5 else 60.0
    t = np.arange(num_samples) / SR
    y = np.zeros(num_samples)
    for k in range(1, int(rng.integers(4, 12))):
        y += rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi))
    y += 0.02 * rng.standard_normal(num_samples)
    return y.astype(np.float32)


def transient_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Clicks (short decaying impulses) and door-like bursts (low-passed noise, slow decay)."""
    y = 0.005 * rng.standard_normal(num_samples)
    lp = butter(2, 800, btype="low", fs=SR, output="sos")
    for _ in range(int(rng.integers(2, 8))):
        at = int(rng.integers(0, num_samples))
        if rng.random() < 0.6:
            n = int(SR * rng.uniform(0.002, 0.02))
            burst = rng.standard_normal(n) * np.exp(-np.arange(n) / (n / 4))
        else:
            n = int(SR * rng.uniform(0.15, 0.5))
            burst = sosfilt(lp, rng.standard_normal(n)) * np.exp(-np.arange(n) / (n / 5)) * 4
        n = min(n, num_samples - at)
        y[at : at + n] += burst[:n] * rng.uniform(0.3, 1.0)
    return y.astype(np.float32)


def make_noise(rng: np.random.Generator, kind: str, num_samples: int) -> np.ndarray:
    if kind in ("white", "pink", "brown"):
        return coloured_noise(rng, num_samples, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    if kind == "babble":
        return babble_noise(rng, num_samples)
    if kind == "hum":
        return hum_noise(rng, num_samples)
    if kind == "transient":
        return transient_noise(rng, num_samples)
    raise ValueError(f"unknown noise type {kind!r}; known: {', '.join(NOISE_TYPES)}")
