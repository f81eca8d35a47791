"""Real-data recipes on tiny fake trees: splits, determinism, mixing numbers, clear source errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sharding import testing
from sharding.errors import SourceError
from sharding.loudness import integrated_loudness, k_weighting
from sharding.mixing import activity, dns_snr_mixer
from sharding.recipes import get_recipe
from sharding.recipes.ears_wham import pieces_of
from sharding.stream import iter_utterances
from sharding.writer import build


def samples(split_dir: Path) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    out = []
    for tar_path in sorted(split_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
            for key in sorted({n.split(".")[0] for n in names}):
                meta = json.loads(tar.extractfile(f"{key}.json").read())
                noisy = sf.read(io.BytesIO(tar.extractfile(f"{key}.noisy.flac").read()))[0]
                clean = sf.read(io.BytesIO(tar.extractfile(f"{key}.clean.flac").read()))[0]
                out.append((meta, noisy, clean))
    return out


def shas(out: Path, split: str) -> list[str]:
    return [s["sha256"] for s in json.loads((out / split / "manifest.json").read_text())["shards"]]


# ----------------------------------------------------------------- DSP pieces
def test_bs1770_k_weighting_and_sine_loudness():
    (b1, a1), (b2, a2) = k_weighting(48000)
    np.testing.assert_allclose(b1, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-6)
    np.testing.assert_allclose(a1, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-6)
    np.testing.assert_allclose(a2, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-6)
    for sr in (48000, 16000):
        t = np.arange(5 * sr) / sr
        sine = np.sin(2 * np.pi * 997 * t)  # full-scale 1 kHz sine reads -3.01 LKFS
        assert integrated_loudness(sine, sr) == pytest.approx(-3.01, abs=0.1)
        assert integrated_loudness(0.1 * sine, sr) == pytest.approx(-23.01, abs=0.1)
    quiet_gap = np.concatenate([np.sin(2 * np.pi * 997 * np.arange(48000) / 16000) * 0.1, np.zeros(48000)])
    assert integrated_loudness(quiet_gap, 16000) == pytest.approx(-23.01, abs=0.2)  # silence gated out
    assert integrated_loudness(np.zeros(16000), 16000) == float("-inf")


def test_dns_mixer_snr_level_and_clipping():
    rng = np.random.default_rng(0)
    clean = np.sin(np.arange(32000) / 10) * 0.5
    noise = rng.standard_normal(32000)
    noisy, c, level = dns_snr_mixer(clean, noise, 5, -25)
    snr = 10 * np.log10(np.sum(c.astype(np.float64) ** 2) / np.sum((noisy - c).astype(np.float64) ** 2))
    assert snr == pytest.approx(5, abs=0.01) and level == pytest.approx(-25, abs=0.01)
    noisy, c, level = dns_snr_mixer(clean, noise, 5, -1)  # would clip: re-normalised to 0.99 peak
    assert np.max(np.abs(noisy)) == pytest.approx(0.99, abs=1e-4) and level < -1
    assert activity(np.zeros(16000)) == 0.0 and activity(clean) == 1.0


def test_ears_pieces_follow_the_script_rule():
    assert pieces_of(3, 4, 10) == []
    assert pieces_of(12, 4, 10) == [(0, 12)]
    assert pieces_of(23, 4, 10) == [(0, 10), (10, 23)]
    assert pieces_of(25, 4, 10) == [(0, 10), (10, 20), (20, 25)]


# ----------------------------------------------------------------- recipes
def test_pairs_converts_and_matches(tmp_path):
    root = testing.fake_pairs(tmp_path / "src")
    out = tmp_path / "out"
    build("pairs", out, {"root": str(root)})
    utts = list(iter_utterances(out / "test"))
    assert len(utts) == 3 and all(len(n) == 16000 and len(c) == 16000 for _, n, c in utts)
    metas = [m for m, _, _ in samples(out / "test")]
    assert [m["name"] for m in metas] == ["utt0", "utt1", "utt2"]
    out2 = tmp_path / "out2"
    build("pairs", out2, {"root": str(root), "convert": "false", "split": "valid"})
    assert [m["name"] for m, _, _ in samples(out2 / "valid")] == ["utt0", "utt2"]  # 44.1 kHz stereo skipped


def test_pairs_fileid_matching(tmp_path):
    testing.write_tone(tmp_path / "noisy" / "book_01_snr5_fileid_7.wav", 0.5)
    testing.write_tone(tmp_path / "clean" / "clean_fileid_7.wav", 0.5)
    build("pairs", tmp_path / "o", {"root": str(tmp_path), "match": "fileid"})
    assert [m["name"] for m, _, _ in samples(tmp_path / "o" / "test")] == ["7"]


def test_dns2020_splits_determinism_and_mixing(tmp_path):
    clean_dir, noise_dir = testing.fake_dns(tmp_path / "dns")
    opts = {"clean_dir": str(clean_dir), "noise_dir": str(noise_dir), "train_clips": 6, "valid_clips": 2,
            "clip_seconds": 4.0, "valid_noise_percent": 20}
    out = tmp_path / "o1"
    build("dns2020", out, opts, shard_samples=4)
    train = samples(out / "train")
    assert len(train) == 6 and all(len(c) == 64000 for _, _, c in train)
    for meta, noisy, clean in train:
        assert meta["speaker"] in ("reader_00001", "reader_00002")
        assert -5 <= meta["snr_db"] <= 15 and float(meta["snr_db"]).is_integer()
        assert -35 <= meta["target_level_dbfs"] < -15
        snr = 10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2))
        assert snr == pytest.approx(meta["snr_db"], abs=0.3)
        assert sum(src[2] for src in meta["clean_sources"]) <= 64000
    assert max(len(m["clean_sources"]) for m, _, _ in train) >= 2  # 4 s from 3-4 s files + 0.2 s gaps
    assert {m["speaker"] for m, _, _ in samples(out / "valid")} <= {"reader_01326", "reader_01105"}
    corpus = get_recipe("dns2020").open(get_recipe("dns2020").parse_options(opts))
    assert not set(corpus.noise["train"]) & set(corpus.noise["valid"])
    # same bytes when the work is split differently
    out2 = tmp_path / "o2"
    build("dns2020", out2, opts, shard_samples=4, num_workers=2)
    assert shas(out2, "train") == shas(out, "train")
    # hours -> clip count (3000 h of 10 s clips = 1.08 M)
    big = get_recipe("dns2020").parse_options({"clean_dir": str(clean_dir), "noise_dir": str(noise_dir),
                                               "valid_noise_percent": "20"})
    assert get_recipe("dns2020").open(big).split_sizes()["train"] == 1_080_000


def test_dns2020_clip_independent_of_listing_and_shard_size(tmp_path):
    clean_dir, noise_dir = testing.fake_dns(tmp_path / "dns")
    opts = {"clean_dir": str(clean_dir), "noise_dir": str(noise_dir), "train_clips": 5, "valid_clips": 0,
            "clip_seconds": 2.0}
    a, b = tmp_path / "a", tmp_path / "b"
    build("dns2020", a, opts, shard_samples=5)
    build("dns2020", b, opts, shard_samples=2)
    assert [m for m, _, _ in samples(a / "train")] == [m for m, _, _ in samples(b / "train")]
    seeded = tmp_path / "c"
    build("dns2020", seeded, {**opts, "seed": 3}, shard_samples=5)
    assert [m for m, _, _ in samples(a / "train")] != [m for m, _, _ in samples(seeded / "train")]


def test_vb_demandex_split_types_and_snrs(tmp_path):
    vb, demand, libri = testing.fake_vb_demandex(tmp_path / "src")
    opts = {"voicebank_dir": str(vb), "demand_dir": str(demand), "librispeech_dir": str(libri)}
    corpus = get_recipe("vb-demandex").open(get_recipe("vb-demandex").parse_options(opts))
    assert corpus.split_sizes() == {"train": 6, "valid": 6, "test": 6}  # noisy/ copy ignored
    assert {p.stem[:4] for p in corpus.clean["test"]} == {"p232", "p257"}
    assert {p.stem[:4] for p in corpus.clean["valid"]} == {"p282", "p287"}
    chans = {s: {int(p.stem[2:]) for (c, sp), ps in corpus.demand.items() if sp == s for p in ps} for s in
             ("train", "valid", "test")}
    assert chans == {"train": set(range(1, 13)), "valid": {13, 14}, "test": {15, 16}}
    libri_spk = [set(corpus.libri[s]) for s in ("train", "valid", "test")]
    assert all(libri_spk) and not (libri_spk[0] & libri_spk[1]) and not (libri_spk[1] & libri_spk[2])
    seen = []
    for i in range(6):
        clip = corpus.clip("train", i)
        assert clip.meta["noise_type"] == ["domestic", "office", "public", "transportation", "street", "nature"][i]
        assert clip.meta["snr_db"] == [-10, -5, 0, 5, 10, 15][i]
        n, c = clip.noisy.astype(np.float64), clip.clean.astype(np.float64)
        assert 10 * np.log10(np.sum(c**2) / np.sum((n - c) ** 2)) == pytest.approx(clip.meta["snr_db"], abs=0.05)
        seen.append(clip.meta["noise_sources"][0])
    assert all("ch" in s and int(Path(s).stem[2:]) <= 12 for s in seen)
    for kind_index, kind in ((6, "babble"), (7, "ssn")):
        corpus.clean["train"].extend(corpus.clean["train"][:2])  # make clips 6, 7 exist
        clip = corpus.clip("train", kind_index)
        assert clip.meta["noise_type"] == kind and np.all(np.isfinite(clip.noisy))
        assert all(Path(s).parts[-3] in corpus.libri["train"] for s in clip.meta["noise_sources"])
    out = tmp_path / "o"
    build("vb-demandex", out, opts)
    assert json.loads((out / "test" / "manifest.json").read_text())["num_samples"] == 6


def test_ears_wham_speaker_split_and_loudness_snr(tmp_path):
    ears, wham = testing.fake_ears_wham(tmp_path / "src")
    # mixed at 16 kHz with the builtin meter, so the SNR can be re-measured on the stored 16 kHz audio
    opts = {"ears_dir": str(ears), "wham_dir": str(wham), "min_seconds": 1.0, "cut_seconds": 2.0,
            "mix_rate": 16000, "loudness": "builtin"}
    corpus = get_recipe("ears-wham").open(get_recipe("ears-wham").parse_options(opts))
    # per speaker: 2.5 s file -> 1 piece, 5.5 s -> 2 + 2 + 1.5 s, nonverbal held out, 0.5 s too short
    assert corpus.split_sizes() == {"train": 8, "valid": 4, "test": 4}
    out = tmp_path / "o"
    build("ears-wham", out, opts)
    train = samples(out / "train")
    assert {m["speaker"] for m, _, _ in train} == {"p001", "p002"}
    assert {m["speaker"] for m, _, _ in samples(out / "test")} == {"p102"}
    for meta, _, _ in train:
        assert -2.5 <= meta["snr_db"] <= 17.5 + 3 and meta["snr_type"] == "bs1770-loudness"
    assert not any("nonverbal" in m["style"] for m, _, _ in train)
    # the SNR is a loudness difference over the whole (uncut) file: check on an uncut piece
    meta, noisy, clean = next(t for t in train if t[0]["style"] == "emo_adoration_freeform")
    diff = integrated_loudness(clean, 16000) - integrated_loudness(noisy - clean, 16000)
    assert diff == pytest.approx(meta["snr_db"], abs=0.15)
    test_meta, test_noisy, test_clean = samples(out / "test")[0]
    assert abs(test_clean[0]) < 1e-3  # fade-in ramp on the test split


@pytest.mark.parametrize("recipe,opts,match", [
    ("dns2020", {"clean_dir": "/nonexistent/clean", "noise_dir": "/tmp"}, "clean folder does not exist"),
    ("pairs", {"root": "/nonexistent"}, "noisy folder does not exist"),
    ("ears-wham", {"ears_dir": "/nonexistent", "wham_dir": "/tmp"}, "EARS folder does not exist"),
    ("vb-demandex", {"voicebank_dir": "/nonexistent", "demand_dir": "/x", "librispeech_dir": "/y"}, "VoiceBank"),
    ("dns2020", {"clean_dir": "/nonexistent"}, "noise_dir= are required"),
])
def test_missing_sources_are_clear_errors_before_work(tmp_path, recipe, opts, match):
    with pytest.raises(SourceError, match=match):
        build(recipe, tmp_path / "out", opts)
    assert not (tmp_path / "out").exists()


def test_folder_without_audio_is_source_error(tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "readme.txt").write_text("no audio here")
    (tmp_path / "noise").mkdir()
    with pytest.raises(SourceError, match="holds no audio"):
        build("dns2020", tmp_path / "out", {"clean_dir": str(tmp_path / "clean"), "noise_dir": str(tmp_path / "noise")})
