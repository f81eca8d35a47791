"""`orchestrate evaluate` / `enhance` / `analyze` end to end on the checkpoints a real 2-step
`orchestrate train` of a tiny RWSA model wrote (the session fixture `trained_run`)."""

from __future__ import annotations

import csv
import json
import math

import mlflow
import numpy as np
import pytest
import soundfile as sf
import torch

from orchestrator.cli import main
from training.checkpoint import MARKER, STATE
from training.config import load_run_config
from training.evaluation.inference import Enhancer, checkpoint_config, load_generator, resolve_checkpoint
from training.evaluation.metrics import compute_metrics
from training.models import build_model

TINY = ["model.name=rwsa-xs", "model.options={hidden: 8, num_blocks: 1}"]


def _speechlike(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 * (1 + np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6))) ** 2
    return (0.1 * voiced * env).astype(np.float32)


@pytest.fixture(scope="module")
def run_dir(trained_run):
    """The run directory a real 2-step `orchestrate train` wrote (tests/conftest.py), its MLflow run id
    and tracking URI."""
    root, uri, _corpus = trained_run
    return root, (root / "mlflow_run_id").read_text().strip(), uri


@pytest.fixture(scope="module")
def testset(tmp_path_factory):
    """clean/ + noisy/ pairs: one 44.1 kHz stereo file, one 16 kHz file, one with a silent reference."""
    root = tmp_path_factory.mktemp("testset")
    (root / "clean").mkdir()
    (root / "noisy").mkdir()
    rng = np.random.default_rng(1)
    for i, (sr, channels) in enumerate([(16000, 1), (44100, 2)]):
        clean = _speechlike(3.0, i, sr)
        noisy = clean + 0.05 * rng.standard_normal(clean.shape).astype(np.float32)
        if channels == 2:
            clean, noisy = np.stack([clean, clean], 1), np.stack([noisy, noisy], 1)
        sf.write(root / "clean" / f"u{i}.wav", clean, sr)
        sf.write(root / "noisy" / f"u{i}.wav", noisy, sr)
    sf.write(root / "clean" / "u9.wav", np.zeros(48000, np.float32), 16000)
    sf.write(root / "noisy" / "u9.wav", 0.05 * rng.standard_normal(48000).astype(np.float32), 16000)
    return root


def test_resolve_and_load_strict(run_dir, tmp_path):
    root, run_id, _ = run_dir
    ckpts = root / "checkpoints"
    assert resolve_checkpoint(root) == ckpts / "best"
    loaded = load_generator(root)
    assert loaded.step == 2 and loaded.mlflow_run_id == run_id  # best/ has no run id: read from the run dir
    assert loaded.config.model.options == {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}
    # every path a user may give loads the trainer's checkpoint: best/, step-N/, state.pt
    for path, step in ((ckpts / "best", 2), (ckpts / "step-000001", 1), (ckpts / "step-000002" / STATE, 2)):
        got = load_generator(path)
        assert got.step == step and got.mlflow_run_id == run_id and got.config.model.name == "rwsa-xs"
        cfg, folder = checkpoint_config(path)
        assert cfg == got.config and folder == got.checkpoint
    # the stored config is the trainer's resolved config (YAML text), equal to the run's config.yaml
    assert isinstance(torch.load(ckpts / "best" / STATE, weights_only=True)["config"], str)
    assert checkpoint_config(root)[0] == load_run_config(root / "config.yaml")
    # an incomplete checkpoint (no marker) is refused
    bad = tmp_path / "partial"
    bad.mkdir()
    (bad / STATE).write_bytes((ckpts / "step-000001" / STATE).read_bytes())
    with pytest.raises(ValueError, match="incomplete"):
        resolve_checkpoint(bad)
    # a state.pt without a config names the file and what was expected
    (bad / MARKER).write_text("1\n")
    torch.save({"generator": {}, "step": 1}, bad / STATE)
    with pytest.raises(ValueError, match="holds no resolved config"):
        checkpoint_config(bad)


def test_evaluate_json_csv_and_mlflow(run_dir, testset, tmp_path, capsys):
    root, run_id, uri = run_dir
    out = tmp_path / "eval"
    rc = main(["evaluate", str(root), "--testset", str(testset), "--name", "toy", "--out", str(out),
               "--json", "--workers", "0", "--metrics", "pesq,si_sdr,ssnr"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["testset"] == "toy" and summary["n"] == 3
    # the silent reference fails PESQ and SI-SDR for that file only: counted, left out of the mean
    assert summary["failed"]["enhanced"]["pesq"] == 1 and summary["failed"]["noisy"]["si_sdr"] == 1
    rows = list(csv.DictReader(open(out / "toy.csv")))
    assert [r["key"] for r in rows] == ["u0", "u1", "u9"]
    assert rows[2]["noisy_pesq"] == "nan" and "silent" in rows[2]["errors"]
    # noisy means equal direct metric calls on the two scorable files
    from training.evaluation.testsets import open_testset

    direct = [compute_metrics(clean, noisy, metrics=["pesq"]).values["pesq"]
              for key, noisy, clean in open_testset(testset) if key != "u9"]
    assert summary["noisy"]["pesq"] == pytest.approx(np.mean(direct), abs=1e-6)
    # logged to the run's MLflow run under the contract's names, at the checkpoint's step
    client = mlflow.MlflowClient(uri)
    hist = client.get_metric_history(run_id, "eval/toy/noisy/pesq")
    assert len(hist) == 1 and hist[0].step == 2 and hist[0].value == pytest.approx(summary["noisy"]["pesq"])
    assert client.get_metric_history(run_id, "eval/toy/n")[0].value == 3
    arts = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"eval/toy.csv", "eval/toy.json"} <= arts


def test_evaluate_bad_testset_exits_2(run_dir, tmp_path, capsys):
    root, _, _ = run_dir
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(root), "--testset", str(tmp_path / "empty"), "--no-mlflow"]) == 2
    assert "not a test set" in capsys.readouterr().err


def test_enhance_files_rate_channels_and_keep_rate(run_dir, tmp_path, capsys):
    root, _, _ = run_dir
    src = tmp_path / "in"
    src.mkdir()
    stereo = np.stack([_speechlike(1.3, 3, 22050)] * 2, 1)
    sf.write(src / "a.flac", stereo, 22050)
    sf.write(src / "b.wav", _speechlike(0.7, 4), 16000)
    out = tmp_path / "out"
    assert main(["enhance", str(root), str(src), "--out", str(out)]) == 0
    assert "real-time factor" in capsys.readouterr().out
    a, sr = sf.read(out / "a.wav")
    assert sr == 16000 and a.ndim == 1 and len(a) == round(1.3 * 22050 * 16000 / 22050)
    assert np.isfinite(a).all() and np.abs(a).max() > 0
    assert main(["enhance", str(root), str(src / "a.flac"), "--out", str(tmp_path / "keep"), "--keep-rate"]) == 0
    info = sf.info(tmp_path / "keep" / "a.wav")
    assert info.samplerate == 22050 and info.channels == 1 and abs(info.frames - stereo.shape[0]) <= 2
    assert main(["enhance", str(root), str(tmp_path / "missing.wav"), "--out", str(out)]) == 2


def test_chunked_enhancement_matches_whole_file_away_from_edges():
    """Overlap-add chunks of a real model agree with one pass over the file, away from chunk seams
    (a freshly initialised hidden-8 model: the chunking property, not the checkpoint, is tested)."""
    cfg = load_run_config(None, TINY)
    torch.manual_seed(0)
    model = build_model(cfg.model.name, **cfg.model.options).eval()
    wav = _speechlike(6.0, 5)
    whole = Enhancer(model, chunk_seconds=100.0, overlap_seconds=0.0).enhance(wav)
    chunked = Enhancer(model, chunk_seconds=2.0, overlap_seconds=0.5).enhance(wav)
    # RMS normalisation is per chunk, so compare the shape of the signal: correlation near 1
    inner = slice(16000, len(wav) - 16000)
    corr = np.corrcoef(whole[inner], chunked[inner])[0, 1]
    assert corr > 0.95, corr
    assert math.isclose(np.sqrt(np.mean(chunked**2)), np.sqrt(np.mean(whole**2)), rel_tol=0.3)


def test_analyze_spectrogram_and_tsne_pngs_logged(run_dir, testset, tmp_path):
    root, run_id, uri = run_dir
    out = tmp_path / "figs"
    assert main(["analyze", "spectrogram", str(root), "--testset", str(testset), "--keys", "u1", "--out", str(out)]) == 0
    png = out / f"spectrogram_{testset.name}_u1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["analyze", "spectrogram", str(root), "--testset", str(testset), "--keys", "zz", "--out",
                 str(out), "--no-mlflow"]) == 2
    assert main(["analyze", "tsne", str(root), "--testset", str(testset), "--with-clean", "--out", str(out)]) == 0
    tsne = out / f"tsne_{testset.name}_clean.png"
    assert tsne.read_bytes()[:4] == b"\x89PNG"
    arts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id, "figures")}
    assert {f"figures/{png.name}", f"figures/{tsne.name}"} <= arts


def test_latent_vector_is_time_averaged_last_block_output(run_dir):
    from training.evaluation.analysis import latent_vector

    model = load_generator(run_dir[0]).model
    v1 = latent_vector(model, _speechlike(1.0, 7))
    v2 = latent_vector(model, _speechlike(2.0, 7))
    assert v1.shape == v2.shape and v1.ndim == 1  # one vector per utterance whatever its length
    assert np.isfinite(v1).all() and not np.allclose(v1, v2)
