"""The papers' test sets: the released / official pairs sharded with the ``pairs`` recipe at the paths
the paper sweeps name (commands in sharding/README.md), and `orchestrate evaluate --noisy-only`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from orchestrator.cli import main
from sharding.writer import build
from training.evaluation.metrics import compute_metrics
from training.evaluation.paper_reference import PAPER_NOISY_ROWS, paper_row_for
from training.evaluation.testsets import open_testset


def _speechlike(rng, n, sr):
    t = np.arange(n) / sr
    env = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))
    return (0.2 * env * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(n)).astype(np.float32)


def _write(path, x, sr):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr)


def test_official_ears_wham_v2_pairs_48k_matched_by_name(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "EARS-WHAM-v2" / "test"
    for spk, ids in (("p102", (1, 2)), ("p107", (3,))):
        for i in ids:
            clean = _speechlike(rng, 48000 * 2, 48000)
            _write(src / "clean" / spk / f"{i:05d}.wav", clean, 48000)
            _write(src / "noisy" / spk / f"{i:05d}_{-1.5 + i:.1f}dB.wav", clean + 0.05 * rng.standard_normal(96000),
                   48000)
    out = tmp_path / "data" / "ears_wham_v2_official"
    build("pairs", out, {"root": str(src), "match": "ears"})
    ts = open_testset(out / "test")
    utts = list(ts)
    assert len(utts) == 3 and all(len(n) == len(c) == 32000 for _, n, c in utts)  # 2 s at 16 kHz
    assert ts.has_reference  # each noisy file paired with its own clean file (snr suffix stripped)
    assert all(np.corrcoef(n, c)[0, 1] > 0.9 for _, n, c in utts)
    assert json.loads((out / "test" / "manifest.json").read_text())["num_samples"] == 3


def test_dns_no_reverb_and_released_vb_demandex_at_the_sweep_paths(tmp_path):
    rng = np.random.default_rng(1)
    dns = tmp_path / "DNS" / "test_set" / "synthetic" / "no_reverb"
    vb = tmp_path / "VB-DemandEx"
    for i in range(3):
        clean = _speechlike(rng, 16000, 16000)
        _write(dns / "clean" / f"clean_fileid_{i}.wav", clean, 16000)
        _write(dns / "noisy" / f"book_00{i}_snr5_fileid_{i}.wav", clean + 0.05 * rng.standard_normal(16000), 16000)
        _write(vb / "clean_test" / f"p232_{i:03d}.wav", clean, 16000)
        _write(vb / "noisy_test" / f"p232_{i:03d}.wav", clean + 0.1 * rng.standard_normal(16000), 16000)
    data = tmp_path / "data"
    build("pairs", data / "dns2020" / "test_no_reverb", {"root": str(dns), "match": "fileid"})
    build("pairs", data / "vb_demandex_released",
          {"noisy_dir": str(vb / "noisy_test"), "clean_dir": str(vb / "clean_test")})
    # the paths the paper sweeps name open as test sets
    assert len(open_testset(data / "dns2020" / "test_no_reverb")) == 3
    assert len(open_testset(data / "vb_demandex_released" / "test")) == 3


def test_paper_row_guess():
    assert paper_row_for("data/vb_demandex_released/test") == "vb_demandex"
    assert paper_row_for("data/dns2020/test_no_reverb") == "dns_no_reverb"
    assert paper_row_for("data/ears_wham_v2_official/test") == "ears_wham_v2"
    assert paper_row_for("data/demo/test") is None


def test_evaluate_noisy_only_prints_ours_beside_the_papers_row(tmp_path, capsys):
    rng = np.random.default_rng(2)
    root = tmp_path / "ears_toy"
    rows = []
    for i in range(2):
        clean = _speechlike(rng, 24000, 16000)
        noisy = clean + 0.05 * rng.standard_normal(24000).astype(np.float32)
        _write(root / "clean" / f"u{i}.wav", clean, 16000)
        _write(root / "noisy" / f"u{i}.wav", noisy, 16000)
        clean_r, _ = sf.read(root / "clean" / f"u{i}.wav", dtype="float32")
        noisy_r, _ = sf.read(root / "noisy" / f"u{i}.wav", dtype="float32")
        rows.append(compute_metrics(clean_r, noisy_r, metrics=("pesq", "si_sdr")).values)
    assert main(["evaluate", "--noisy-only", "--testset", str(root), "--metrics", "pesq,si_sdr",
                 "--workers", "0"]) == 0
    out = capsys.readouterr().out
    ours = [line for line in out.splitlines() if "this test set" in line][0].split()[-2:]
    paper = [line for line in out.splitlines() if "paper ears_wham_v2" in line][0].split()[-2:]
    assert [float(v) for v in paper] == [PAPER_NOISY_ROWS["ears_wham_v2"][m] for m in ("pesq", "si_sdr")]
    expected = [np.mean([r[m] for r in rows]) for m in ("pesq", "si_sdr")]
    assert [float(v) for v in ours] == pytest.approx(expected, abs=0.006)
    assert main(["evaluate", "--testset", str(root)]) == 2  # no checkpoint, no --noisy-only


def test_ears_wham_recipe_official_mode_48k_pyloudnorm_and_cut_list(tmp_path):
    import pyloudnorm

    from sharding import testing
    from sharding.recipes import get_recipe
    from sharding.recipes.ears_wham import _meter

    ears, wham = testing.fake_ears_wham(tmp_path / "src")  # 48 kHz files
    x = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1
    assert _meter("pyloudnorm", 48000)(x) == pytest.approx(pyloudnorm.Meter(48000).integrated_loudness(x.astype(float)))
    cuts = tmp_path / "test_files.json"  # the official format: speaker -> file -> [[start, end], ...] at 48 kHz
    cuts.write_text(json.dumps({"p102": {"rainbow_01_regular": [[0, 96000], [96000, -1]],
                                         "emo_adoration_freeform": [[0, -1]]}}))
    spec = get_recipe("ears-wham")
    opts = {"ears_dir": str(ears), "wham_dir": str(wham), "min_seconds": 1.0, "cut_seconds": 2.0,
            "test_files": str(cuts)}
    corpus = spec.open(spec.parse_options(opts))
    assert corpus.opts.mix_rate == 48000 and corpus.opts.loudness == "pyloudnorm"  # the defaults
    assert corpus.split_sizes()["test"] == 3
    lengths = sorted(len(corpus.clip("test", i).clean) for i in range(3))
    # 2 s; 5.5 s file from 2 s to its last sample but one; 2.5 s file to its last sample but one (16 kHz)
    assert lengths == [32000, round((2.5 * 48000 - 1) / 3), round((3.5 * 48000 - 1) / 3)]
    clip = corpus.clip("test", 0)
    assert -2.5 <= clip.meta["snr_db"] <= 20.5 and abs(clip.clean[0]) < 1e-3  # ramps as the script
    with pytest.raises(Exception, match="test_files"):
        spec.parse_options({**opts, "test_files": str(tmp_path / "missing.json")})
