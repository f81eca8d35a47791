"""Test-data factories: tiny fake corpus trees with the real corpora's names (sines and noise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def write_tone(path: str | Path, seconds: float, *, sr: int = 16000, freq: float = 220.0, channels: int = 1,
               amp: float = 0.3, seed: int = 0, noise: bool = False) -> Path:
    """A syllable-modulated sine (speech-like activity) or white noise, written as WAV PCM_16."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    if noise:
        x = amp * rng.uniform(-1, 1, len(t))
    else:
        x = amp * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    x = np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], 1) if channels > 1 else x
    sf.write(str(path), x.astype(np.float32), sr, subtype="PCM_16")
    return path


def fake_dns(root: str | Path, *, readers=("00001", "00002", "01326", "01105"), files_per_reader: int = 2,
             noises: int = 60, sr: int = 16000) -> tuple[Path, Path]:
    """DNS-like ``clean/book_.._reader_<id>_<k>.wav`` and ``noise/<type>_<k>.wav``; returns (clean, noise)."""
    root = Path(root)
    for i, r in enumerate(readers):
        for k in range(files_per_reader):
            write_tone(root / "clean" / f"book_{i:05d}_chp_0001_reader_{r}_{k}.wav", 3.0 + k, sr=sr,
                       freq=150 + 40 * i + 7 * k, seed=i * 10 + k)
    kinds = ("Door_Knock", "Typing", "AirConditioner")
    for k in range(noises):
        write_tone(root / "noise" / f"{kinds[k % 3]}_{k}.wav", 2.0 + k % 3, sr=sr, noise=True, seed=1000 + k)
    return root / "clean", root / "noise"


def fake_ears_wham(root: str | Path, *, sr: int = 48000) -> tuple[Path, Path]:
    """EARS speakers p001/p002 (train), p100 (valid), p102 (test) + WHAM! noise; returns (ears, wham)."""
    root = Path(root)
    for i, spk in enumerate(("p001", "p002", "p100", "p102")):
        write_tone(root / "EARS" / spk / "emo_adoration_freeform.wav", 2.5, sr=sr, freq=200 + 30 * i, seed=i)
        write_tone(root / "EARS" / spk / "rainbow_01_regular.wav", 5.5, sr=sr, freq=180 + 30 * i, seed=10 + i)
        write_tone(root / "EARS" / spk / "nonverbal_laughing.wav", 3.0, sr=sr, seed=20 + i)  # held-out style
        write_tone(root / "EARS" / spk / "emo_anger_sentences.wav", 0.5, sr=sr, seed=30 + i)  # too short
    for k in range(3):
        write_tone(root / "WHAM" / "audio" / f"noise{k:03d}.wav", 7.0, sr=sr, channels=2, noise=True, seed=100 + k)
    return root / "EARS", root / "WHAM"


def fake_vb_demandex(root: str | Path) -> tuple[Path, Path, Path]:
    """VoiceBank (48 kHz), DEMAND (16 kHz, 6 categories x ch01..16), LibriSpeech; returns the 3 folders."""
    root = Path(root)
    for i, spk in enumerate(("p226", "p227", "p282", "p287", "p232", "p257")):
        for k in range(3):
            folder = "clean_testset_wav" if spk in ("p232", "p257") else "clean_trainset_28spk_wav"
            write_tone(root / "vb" / folder / f"{spk}_{k + 1:03d}.wav", 1.0 + 0.2 * k, sr=48000,
                       freq=120 + 25 * i, seed=i * 3 + k)
    write_tone(root / "vb" / "noisy_trainset_28spk_wav" / "p226_001.wav", 1.0, sr=48000, noise=True)  # ignored
    for j, sub in enumerate(("DKITCHEN", "OOFFICE", "PCAFETER", "TBUS", "SPSQUARE", "NPARK")):
        for ch in range(1, 17):
            write_tone(root / "demand" / sub / f"ch{ch:02d}.wav", 2.0, noise=True, seed=500 + 16 * j + ch)
    for s in range(30):
        write_tone(root / "libri" / f"{100 + s}" / "1" / f"{100 + s}-1-0000.flac", 1.0, freq=140 + 9 * s, seed=900 + s)
    return root / "vb", root / "demand", root / "libri"


def fake_pairs(root: str | Path, n: int = 3) -> Path:
    """``noisy/`` + ``clean/`` pairs: one 16 kHz mono, one 44.1 kHz stereo, one unmatched file."""
    root = Path(root)
    for k in range(n):
        sr, ch = (44100, 2) if k == 1 else (16000, 1)
        write_tone(root / "clean" / f"utt{k}.wav", 1.0, sr=sr, channels=ch, seed=k)
        write_tone(root / "noisy" / f"utt{k}.wav", 1.0, sr=sr, channels=ch, seed=k, amp=0.5)
    write_tone(root / "noisy" / "orphan.wav", 1.0)
    return root
