"""DNSMOS P.835 (Table II's SIG/BAK/OVRL) through the `dnsmos` extra: the real ONNX models that speechmos
ships, on generated speech, through `orchestrate evaluate`; and the one-line error before any work when
the extra is missing (simulated by hiding the installed package from a child interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import train_overrides

from sharding.recipes.synth import Voice, make_noise, procedural_speech
from training.evaluation.metrics import DNSMOS_METRICS, compute_metrics, dnsmos_available

ROOT = Path(__file__).resolve().parents[1]
HIDE_SPEECHMOS = "import sys; sys.modules['speechmos'] = None; from orchestrator.cli import main; sys.exit(main(sys.argv[1:]))"


def _speech_and_noisy(seed: int, seconds: float = 4.6) -> tuple[np.ndarray, np.ndarray]:
    """4.6 s: DNSMOS repeats a clip to >= 9.01 s and scores 9.01 s windows every second: one window here."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    clean = procedural_speech(rng, Voice.from_id(seed), n) * 0.5
    noise = make_noise(rng, "babble" if seed % 2 else "pink", n)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2))  # 0 dB
    return clean.astype(np.float32), (clean + noise).astype(np.float32)


def _folder(root: Path, n: int = 2) -> Path:
    for i in range(n):
        clean, noisy = _speech_and_noisy(i)
        for sub, x in (("clean", clean), ("noisy", noisy)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            sf.write(root / sub / f"u{i}.wav", x, 16000, subtype="PCM_16")
    return root


def test_dnsmos_scores_generated_speech_with_the_shipped_models():
    assert dnsmos_available(), "the dnsmos extra is installed by .ci/setup.sh"
    clean, noisy = _speech_and_noisy(0)
    on_clean = compute_metrics(None, clean, metrics=("dnsmos",)).values
    on_noisy = compute_metrics(None, noisy, metrics=("dnsmos",)).values
    assert set(on_clean) == set(DNSMOS_METRICS)
    assert all(1.0 <= v <= 5.0 for v in (*on_clean.values(), *on_noisy.values()))
    assert on_clean["dnsmos_bak"] > on_noisy["dnsmos_bak"] + 0.5  # 0 dB babble/pink: clearly noisier
    again = compute_metrics(None, noisy, metrics=("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")).values
    assert again == on_noisy  # deterministic


def test_orchestrate_evaluate_reports_dnsmos_for_noisy_and_enhanced(trained_run, tmp_path, capsys):
    from orchestrator.cli import main

    run, _uri, _corpus = trained_run
    testset = _folder(tmp_path / "ts")
    capsys.readouterr()
    rc = main(["evaluate", str(run), "--testset", str(testset), "--metrics", "dnsmos", "--out", str(tmp_path / "out"),
               "--no-mlflow", "--json", "--workers", "1"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 2 and s["scored"] == 2
    for side in ("noisy", "enhanced"):
        assert set(s[side]) == set(DNSMOS_METRICS) and all(1.0 <= v <= 5.0 for v in s[side].values())


def test_missing_extra_is_one_line_before_any_work(journey_corpus, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-c", HIDE_SPEECHMOS, *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)

    p = run("evaluate", "--noisy-only", "--testset", str(journey_corpus / "test"), "--metrics", "dnsmos")
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'se-orchestrator[dnsmos]'" in lines[0], p.stderr
    # a training job whose end-of-job evaluation asks for DNSMOS stops before its first step
    work = tmp_path / "run"
    p = run("train", "rwsa-xs", *train_overrides(journey_corpus, tmp_path / "mlflow.db"),
            f"eval.testsets=[{journey_corpus / 'test'}]", "eval.metrics=[dnsmos]", "--workdir", str(work))
    assert p.returncode == 2, p.stderr[-2000:]
    assert "eval.metrics: dnsmos needs the optional DNSMOS models" in p.stderr
    assert not (work / "checkpoints").exists()
