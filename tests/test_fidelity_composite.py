"""CSIG / CBAK / COVL (Hu & Loizou 2008) as the VoiceBank literature computes them: equal to the reference
script (CMGAN's / MP-SENet's ``compute_metrics``) on the same files of generated speech, run from the
copy the ``sonusai`` package ships (test-only: .ci/setup.sh unpacks it into .venv/reference, outside
site-packages, without its dependencies); LLR,
WSS and segSNR against a second implementation (``pysepm-evo``, same install; its numba JIT and its
reverberation module are bypassed: only its plain-numpy quality measures run), with the reference's
WSS scaling made explicit; the regression and its clipping, and the metrics plumbing."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.audio import read_audio
from sharding.recipes.synth import Voice, make_noise, procedural_speech
from training.evaluation.composite import WSS_SCALE, composite, composite_from_parts, llr, wss
from training.evaluation.metrics import compute_metrics, pesq_wb, ssnr

REFERENCE_SCRIPT = "sonusai==0.15.9"  # .ci/setup.sh: pip install --no-deps --target .venv/reference
REFERENCE_DIR = Path(sys.prefix) / "reference"  # outside site-packages: never imported, no resolver noise


@functools.cache
def _pysepm_quality():
    spec = importlib.util.find_spec("pysepm_evo")
    if spec is None:
        pytest.fail("pysepm-evo is not installed (.ci/setup.sh installs it: pip install --no-deps pysepm-evo==0.1.1)")
    import scipy.signal
    import scipy.signal.windows

    if not hasattr(scipy.signal, "kaiser"):  # removed from scipy.signal; pysepm's util imports it
        scipy.signal.kaiser = scipy.signal.windows.kaiser
    if "numba" not in sys.modules:
        try:
            import numba  # noqa: F401
        except ImportError:
            stub = types.ModuleType("numba")
            stub.jit = lambda f=None, **kw: f if f is not None else (lambda g: g)
            sys.modules["numba"] = stub
    if "pysepm_evo" not in sys.modules:  # its __init__ imports srmrpy: load the submodule alone
        pkg = types.ModuleType("pysepm_evo")
        pkg.__path__ = [os.path.dirname(spec.origin)]
        sys.modules["pysepm_evo"] = pkg
    return importlib.import_module("pysepm_evo.qualityMeasures")


@functools.cache
def _reference_script() -> types.SimpleNamespace:
    """CMGAN's ``compute_metrics`` (as MP-SENet copies it) from ``sonusai/calc_metric_spenh.py``: its
    functions ``wss``, ``llr``, ``lpcoeff``, ``snr`` (the same syntax trees as MP-SENet's
    cal_metrics/compute_metrics.py, up to two local imports and an ``int()`` around ``math.floor``) and
    ``calc_speech_metrics`` (the same regression), executed from the installed file. The module itself
    imports plotting and mixture code, so only these definitions are compiled; the reference's import of
    its own PESQ wrapper is replaced by the call it makes (``pesq(16000, reference, hypothesis, 'wb')``)."""
    path = REFERENCE_DIR / "sonusai" / "calc_metric_spenh.py"
    if not path.is_file():
        pytest.fail(f"{path}: the reference script is not installed (.ci/setup.sh: pip install --no-deps "
                    f"--target .venv/reference {REFERENCE_SCRIPT})")
    wanted = {"wss", "llr", "lpcoeff", "snr", "calc_speech_metrics"}
    tree = ast.parse(path.read_text())
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert {d.name for d in defs} == wanted, f"{path}: not the expected reference functions"
    for d in defs:  # drop `from sonusai.metrics import calc_pesq`: provided below
        d.body = [b for b in d.body if not (isinstance(b, ast.ImportFrom) and (b.module or "").startswith("sonusai"))]
    from pesq import pesq

    namespace = {"np": np, "math": math, "calc_pesq": lambda hypothesis, reference: pesq(16000, reference, hypothesis,
                                                                                         "wb")}
    exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return types.SimpleNamespace(**{k: namespace[k] for k in wanted})


def _generated_speech_files(folder: Path, n: int = 4) -> list[tuple[Path, Path]]:
    """(clean, processed) 16-bit WAV pairs of procedural speech, 3 s each, with processed = clean plus a
    generated noise at 5..20 dB SNR (the kinds of files the tables score). The clean speech gets a -80 dB
    floor as recordings have: digital silence makes the LPC of both scripts undefined (LLR NaN/inf, CSIG
    and COVL clipped to 1)."""
    pairs = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        clean = procedural_speech(rng, Voice.from_id(i), 48000) + 1e-4 * rng.standard_normal(48000)
        noise = make_noise(rng, ("babble", "hum", "pink", "babble")[i % 4], 48000)
        noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2)) * 10 ** (-(5 + 5 * i) / 20)
        paths = folder / f"clean{i}.wav", folder / f"processed{i}.wav"
        for path, x in zip(paths, (clean, clean + noise)):
            sf.write(path, np.clip(x, -1, 1), 16000, subtype="PCM_16")
        pairs.append(paths)
    return pairs


def test_composite_equals_the_reference_script_on_the_same_files(tmp_path):
    """Both read the same files as float in [-1, 1] (the reference's cal_metrics reads with librosa, ours
    with common.audio), so the reference's WSS divides float samples by 32768 (module docstring)."""
    ref = _reference_script()
    unclipped = 0
    for clean_path, processed_path in _generated_speech_files(tmp_path):
        clean, processed = sf.read(clean_path, dtype="float32")[0], sf.read(processed_path, dtype="float32")[0]
        pesq_r, csig_r, cbak_r, covl_r, ssnr_r = ref.calc_speech_metrics(processed, clean)
        ours = compute_metrics(read_audio(clean_path), read_audio(processed_path),
                               metrics=("pesq", "csig", "cbak", "covl", "ssnr")).values
        assert ours["pesq"] == pytest.approx(pesq_r, abs=1e-6)
        assert ours["ssnr"] == pytest.approx(ssnr_r, abs=1e-6)
        assert (ours["csig"], ours["cbak"], ours["covl"]) == pytest.approx((csig_r, cbak_r, covl_r), abs=1e-6)
        unclipped += all(1.0 < ours[k] < 5.0 for k in ("csig", "cbak", "covl"))
    assert unclipped >= 3  # the regression itself is compared, not only its clipping


def test_wss_scaling_is_the_reference_scripts():
    """The reference script divides each float frame by 32768 before its 1e-10 energy floor (it was written
    for int16 samples); pysepm-evo does not scale. So our WSS on x equals pysepm's on x / 32768, the
    reference's on x, and differs from the unscaled measure on the same input."""
    qm, ref = _pysepm_quality(), _reference_script()
    clean, enh = _pair(4, noise=0.1)
    ours = wss(clean, enh)
    assert WSS_SCALE == 1 / 32768
    assert ours == pytest.approx(qm.wss(clean * WSS_SCALE, enh * WSS_SCALE, 16000), rel=1e-9)
    d = np.sort(ref.wss(clean, enh, 16000))
    assert ours == pytest.approx(float(np.mean(d[: round(len(d) * 0.95)])), rel=1e-9)
    assert abs(ours - qm.wss(clean, enh, 16000)) > 0.5  # the scaling matters on float input


def _pair(seed=0, n=32000, noise=0.05):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    clean = 0.3 * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(n)
    clean += 0.1 * np.sin(2 * np.pi * 1300 * t + np.sin(2 * np.pi * 5 * t))
    return clean, clean + noise * rng.standard_normal(n)


@pytest.mark.parametrize("seed,noise", [(0, 0.05), (1, 0.3), (2, 0.01)])
def test_components_match_an_independent_implementation(seed, noise):
    qm = _pysepm_quality()
    clean, enh = _pair(seed, noise=noise)
    assert llr(clean, enh) == pytest.approx(qm.llr(clean, enh, 16000, used_for_composite=True), rel=1e-9)
    assert wss(clean, enh) == pytest.approx(qm.wss(clean * WSS_SCALE, enh * WSS_SCALE, 16000), rel=1e-9)
    assert ssnr(clean, enh) == pytest.approx(qm.SNRseg(clean, enh, 16000), abs=1e-6)


def test_regression_and_clipping():
    got = composite_from_parts(pesq=2.5, llr_mean=0.5, wss_mean=30.0, seg_snr=5.0)
    assert got["csig"] == pytest.approx(3.093 - 1.029 * 0.5 + 0.603 * 2.5 - 0.009 * 30)
    assert got["cbak"] == pytest.approx(1.634 + 0.478 * 2.5 - 0.007 * 30 + 0.063 * 5)
    assert got["covl"] == pytest.approx(1.594 + 0.805 * 2.5 - 0.512 * 0.5 - 0.007 * 30)
    assert composite_from_parts(4.6, 0.0, 0.0, 35.0) == {"csig": 5.0, "cbak": 5.0, "covl": 5.0}
    assert composite_from_parts(1.0, 2.0, 150.0, -10.0) == {"csig": 1.0, "cbak": 1.0, "covl": 1.0}


def test_available_as_metrics_and_ordered_by_quality():
    clean, slight = _pair(3, noise=0.01)
    _, heavy = _pair(3, noise=0.3)
    a = compute_metrics(clean, slight, metrics=("composite",)).values
    b = compute_metrics(clean, heavy, metrics=("csig", "cbak", "covl")).values
    assert set(a) == {"csig", "cbak", "covl"}
    assert all(a[k] > b[k] for k in a)
    direct = composite(clean, slight)
    assert a == pytest.approx(direct)
    parts = composite_from_parts(pesq_wb(clean, slight), llr(clean, slight), wss(clean, slight), ssnr(clean, slight))
    assert direct == pytest.approx(parts)
