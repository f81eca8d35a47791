"""Test-set reader (paired / noisy-only / shards) and the audio file helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.audio import AudioFileError, read_audio, to_mono_16k, write_wav
from training.evaluation.testsets import TestSetError, open_testset

SR = 16000


def tone(seconds: float, sr: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_paired(root: Path, names=("a", "b", "c"), with_clean=True) -> Path:
    (root / "noisy").mkdir(parents=True)
    if with_clean:
        (root / "clean").mkdir()
    for i, n in enumerate(names):
        clean = tone(1.0, SR, 200.0 + 100 * i)
        noise = 0.05 * np.random.default_rng(i).standard_normal(clean.size).astype(np.float32)
        sf.write(root / "noisy" / f"{n}.wav", clean + noise, SR, subtype="FLOAT")
        if with_clean:
            sf.write(root / "clean" / f"{n}.flac", clean, SR, subtype="PCM_24")
    return root


def test_paired_folder_yields_matched_pairs_in_key_order(tmp_path):
    ts = open_testset(make_paired(tmp_path / "vb", names=("p2", "p1", "p3")))
    assert (ts.name, ts.kind, ts.has_reference, len(ts)) == ("vb", "paired", True, 3)
    items = list(ts)
    assert [k for k, _, _ in items] == ["p1", "p2", "p3"]
    for i, (_key, noisy, clean) in enumerate(items):
        assert noisy.dtype == np.float32 and clean.dtype == np.float32
        assert noisy.shape == clean.shape == (SR,)
        expected = tone(1.0, SR, 200.0 + 100 * [1, 0, 2][i])  # p1 was written second
        np.testing.assert_allclose(clean, expected, atol=2e-6)  # 24-bit FLAC
        assert 0.04 < np.std(noisy - clean) < 0.06


def test_noisy_only_folder_has_no_reference(tmp_path):
    ts = open_testset(make_paired(tmp_path / "real", with_clean=False))
    assert (ts.kind, ts.has_reference, len(ts)) == ("noisy-only", False, 3)
    key, noisy, clean = next(iter(ts))
    assert key == "a" and clean is None and noisy.shape == (SR,)


def test_other_rates_and_stereo_are_converted(tmp_path):
    root = tmp_path / "mixed"
    (root / "noisy").mkdir(parents=True)
    (root / "clean").mkdir()
    x48 = tone(0.5, 48000, 300.0)
    stereo = np.stack([x48, 0.5 * x48], axis=1)  # mono mix = 0.75 x
    sf.write(root / "noisy" / "u.wav", stereo, 48000)
    sf.write(root / "clean" / "u.wav", tone(0.5, 22050, 300.0), 22050, subtype="FLOAT")
    (_, noisy, clean), = list(open_testset(root))
    assert noisy.shape == clean.shape == (8000,)
    ref = tone(0.5, SR, 300.0)
    mid = slice(200, -200)  # away from the resampling filter's edge transients
    np.testing.assert_allclose(noisy[mid], 0.75 * ref[mid], atol=2e-3)
    np.testing.assert_allclose(clean[mid], ref[mid], atol=2e-3)


def test_mismatched_names_list_the_missing_files(tmp_path):
    root = make_paired(tmp_path / "bad", names=[f"n{i}" for i in range(8)])
    for i in range(7):
        (root / "clean" / f"n{i}.flac").unlink()
    sf.write(root / "clean" / "extra.flac", tone(1.0, SR), SR)
    with pytest.raises(TestSetError) as err:
        open_testset(root)
    msg = str(err.value)
    assert "\n" not in msg and str(root) in msg
    assert "no clean file for noisy n0, n1, n2, n3, n4, ... (7 in all)" in msg
    assert "no noisy file for clean extra" in msg


def test_dns_style_names_pair_by_fileid(tmp_path):
    root = tmp_path / "no_reverb"
    (root / "noisy").mkdir(parents=True)
    (root / "clean").mkdir()
    for i in (0, 7, 12):
        sf.write(root / "clean" / f"clean_fileid_{i}.wav", tone(0.2, SR, 100.0 + i), SR, subtype="FLOAT")
        sf.write(root / "noisy" / f"book_0{i}_chp_5_snr{i}_tl-21_fileid_{i}.wav", tone(0.2, SR, 100.0 + i) + 0.1,
                 SR, subtype="FLOAT")
    ts = open_testset(root)
    assert ts.keys() == ["fileid_0", "fileid_12", "fileid_7"]
    for key, noisy, clean in ts:
        np.testing.assert_allclose(noisy - clean, 0.1, atol=1e-6)
        np.testing.assert_allclose(clean, tone(0.2, SR, 100.0 + int(key.split("_")[1])), atol=1e-7)
    (root / "clean" / "clean_fileid_7.wav").unlink()
    with pytest.raises(TestSetError, match="names do not match: no clean file for noisy fileid_7$"):
        open_testset(root)


def test_layout_and_decode_errors_name_the_problem(tmp_path):
    with pytest.raises(TestSetError, match="does not exist"):
        open_testset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TestSetError, match="not a test set: expected clean/ \\+ noisy/"):
        open_testset(tmp_path / "empty")
    (tmp_path / "onlyclean" / "clean").mkdir(parents=True)
    with pytest.raises(TestSetError, match="no noisy/ folder"):
        open_testset(tmp_path / "onlyclean")
    root = make_paired(tmp_path / "garbage", names=("x", "y"))
    (root / "noisy" / "y.wav").write_bytes(b"RIFF not really a wav")
    entries = {k: err for k, _, _, err in open_testset(root).entries()}  # one bad file fails alone
    assert entries["x"] is None and "y.wav: cannot decode audio" in entries["y"]
    root = make_paired(tmp_path / "dup", names=("x",))
    sf.write(root / "noisy" / "x.flac", tone(1.0, SR), SR)
    with pytest.raises(TestSetError, match="two files named 'x'"):
        open_testset(root)


def test_pair_length_mismatch_is_an_error_but_rounding_is_trimmed(tmp_path):
    root = make_paired(tmp_path / "len", names=("a", "b"))
    sf.write(root / "clean" / "a.flac", tone(1.0, SR)[:-100], SR)  # 100 samples short: trimmed
    sf.write(root / "clean" / "b.flac", tone(0.5, SR), SR)
    it = iter(open_testset(root))
    _, noisy, clean = next(it)
    assert noisy.shape == clean.shape == (SR - 100,)
    with pytest.raises(TestSetError, match="same duration"):
        next(it)


def test_shard_set_reads_through_sharding(tmp_path):
    from sharding.recipes.demo import prepare_demo

    prepare_demo(tmp_path / "demo", train_clips=1, valid_clips=1, test_clips=3, speech="procedural",
                 min_seconds=1.0, max_seconds=1.5)
    for path in (tmp_path / "demo", tmp_path / "demo" / "test"):
        ts = open_testset(path)
        assert (ts.kind, ts.has_reference, len(ts), ts.name) == ("shards", True, 3, "demo/test")
        items = list(ts)
        assert len(items) == 3
        for _key, noisy, clean in items:
            assert noisy.dtype == clean.dtype == np.float32
            assert noisy.shape == clean.shape and SR <= noisy.size <= 1.5 * SR + 1
    assert len(open_testset(tmp_path / "demo", split="valid")) == 1


def test_write_wav_is_atomic_16_bit_and_round_trips(tmp_path):
    x = tone(0.25, SR, amp=0.9)
    x[:10] = 1.5  # clipped on write
    out = write_wav(tmp_path / "sub" / "y.wav", x)
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
    y = read_audio(out)
    np.testing.assert_allclose(y[10:], x[10:], atol=1.0 / 32768 + 1e-7)
    assert np.all(y[:10] == np.float32(32767 / 32768))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["y.wav"]  # no temp file left behind
    with pytest.raises(AudioFileError, match="mono"):
        write_wav(tmp_path / "z.wav", np.zeros((2, 10)))
    assert not (tmp_path / "z.wav").exists()


def test_to_mono_16k_and_read_errors(tmp_path):
    assert to_mono_16k(np.ones((4, 2)), SR).tolist() == [1.0] * 4
    assert to_mono_16k(np.ones(441 * 100), 44100).shape == (16000,)
    (tmp_path / "bad.flac").write_bytes(b"\x00" * 100)
    with pytest.raises(AudioFileError, match="bad.flac"):
        read_audio(tmp_path / "bad.flac")
