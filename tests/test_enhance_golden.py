"""Golden outputs of inference: seeded tiny generators enhance a fixed signal through the protocol every
command uses (`training.evaluation.protocol.enhancer_for`) and must give the numbers of the plain
PyTorch modules (GOLDEN: how they were recorded; relative tolerance 1e-5: float32 rounding of
reordered sums). The
trained 2-step checkpoint (tests/conftest.py ``trained_run``) gives the same output through
`orchestrate enhance` as through the in-process enhancer, whatever the segment batch."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from orchestrator.cli import main
from training.config import load_run_config
from training.evaluation.inference import load_generator
from training.evaluation.protocol import enhancer_for
from training.evaluation.segment_eval import enhance_segments
from training.models import build_model

CASES = {  # name: (model options, eval overrides, audio seconds)
    "rwsa-xs": ({"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}, [], 2.5),
    "mambattention": ({"channels": 8, "num_blocks": 1, "n_head": 2},
                      ["eval.mode=chunked", "eval.chunk_seconds=1.0", "eval.overlap_seconds=0.25"], 2.3),
}
PROBES = (0, 1000, 12345, 20000, 30599, 35000)
# enhanced signal at PROBES, its sum, sum of |x| and RMS. Recorded with the code before the speedups, then
# again (2026-12-06) from the plain PyTorch modules (a global forward hook turns the fast paths off; they
# agree to 2e-7) when the input's 1/RMS moved to a float64 sum (`training.stft.inverse_rms`): one ulp of
# that factor flips first-frame phases, which moved two mambattention probes by 6e-4.
GOLDEN: dict[str, list[float]] = {
    "mambattention": [-0.227220014, -0.136186391, 0.0168617684, -0.249602109, -0.0292757228, -0.0362860076,
                      -42.6167766, 3091.70077, 0.11370018],
    "rwsa-xs": [-0.0478148721, -0.0121354209, -0.000461882766, -0.0192725156, 0.000737202121, 0.0600663759,
                -14.4328479, 1613.8623, 0.0653295604],
}


def _signal(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.1 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t))
            + 0.03 * rng.standard_normal(t.shape)).astype(np.float32)


def _enhanced(name: str) -> np.ndarray:
    options, overrides, seconds = CASES[name]
    cfg = load_run_config(None, [f"model.name={name}", f"model.options={options}", "mlflow.enabled=false",
                                 *overrides])
    torch.manual_seed(0)
    model = build_model(name, **options).eval()
    return enhancer_for(model, cfg).enhance(_signal(seconds))


def _summary(y: np.ndarray) -> list[float]:
    y64 = y.astype(np.float64)
    return [float(y64[i % len(y)]) for i in PROBES] + [y64.sum(), np.abs(y64).sum(), np.sqrt((y64**2).mean())]


@pytest.mark.parametrize("name", sorted(CASES))
def test_enhance_matches_golden(name):
    got = _summary(_enhanced(name))
    want = GOLDEN[name]
    scale = max(abs(v) for v in want[: len(PROBES)])  # sample probes compared relative to the signal scale
    np.testing.assert_allclose(got[: len(PROBES)], want[: len(PROBES)], rtol=0, atol=1e-5 * scale)
    (s, a, r), (ws, wa, wr) = got[len(PROBES):], want[len(PROBES):]
    np.testing.assert_allclose([a, r], [wa, wr], rtol=1e-5)
    assert abs(s - ws) <= 1e-5 * wa  # the signed sum cancels: compared against the sum of |x|


def test_trained_checkpoint_cli_equals_in_process_any_batch(trained_run, tmp_path):
    run_dir, _uri, _corpus = trained_run
    noisy = _signal(5.0)  # 3 segments of 30,600 samples, the last aligned to the end
    sf.write(tmp_path / "n.wav", noisy, 16000, subtype="FLOAT")
    assert main(["enhance", str(run_dir), str(tmp_path / "n.wav"), "--out", str(tmp_path / "out")]) == 0
    cli, sr = sf.read(tmp_path / "out" / "n.wav", dtype="float32")
    loaded = load_generator(run_dir)
    ref = enhancer_for(loaded.model, loaded.config).enhance(noisy)
    assert sr == 16000 and cli.shape == ref.shape == noisy.shape
    np.testing.assert_allclose(cli, ref, rtol=0, atol=1.01 / 32768)  # the CLI writes 16-bit PCM: 1 step
    one_by_one = enhance_segments(loaded.model, noisy, batch=1)
    np.testing.assert_allclose(one_by_one, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
