"""Metrics: equality with the libraries, closed-form cases, NaN handling, parallel scoring (the discriminator's
PESQ targets: tests/test_pesq_targets.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pesq import pesq
from pystoi import stoi

from training.evaluation import measures
from training.evaluation import metrics as M
from training.pesq_targets import PesqPool

SR = 16000


def speech_like(seconds: float = 3.0, seed: int = 0, sr: int = SR) -> np.ndarray:
    """Harmonic source with a wandering f0 (~100-175 Hz), 1/k harmonics up to 7 kHz, syllable-rate
    envelope and pauses; float32 [N], peak 0.2. Enough like speech for PESQ's utterance detection."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 130 + 30 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6))
    f0 = f0 + 15 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = np.zeros(n)
    for k in range(1, 40):
        x += np.where(k * f0 < 7000, 1.0 / k, 0.0) * np.sin(k * phase + rng.uniform(0, 6))
    env = np.clip(np.sin(2 * np.pi * rng.uniform(3, 4.5) * t + rng.uniform(0, 6)), 0, None) ** 0.7
    env = env * (np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, 6)) > -0.6)
    x = x * env
    return (0.2 * x / np.max(np.abs(x))).astype(np.float32)


def noisy_version(clean: np.ndarray, level: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (clean + level * rng.standard_normal(clean.size)).astype(np.float32)


@pytest.fixture(scope="module")
def pair():
    clean = speech_like(3.0, seed=0)
    return clean, noisy_version(clean, 0.002)


def test_pesq_and_estoi_equal_direct_library_calls(pair):
    clean, enh = pair
    res = M.compute_metrics(clean, enh)
    assert res.errors == {}
    assert res.values["pesq"] == pytest.approx(pesq(SR, clean, enh, "wb"), abs=1e-6)
    assert res.values["estoi"] == pytest.approx(stoi(clean, enh, SR, extended=True), abs=1e-9)
    assert 1.0 < res.values["pesq"] < 4.0
    assert 0.5 < res.values["estoi"] < 1.0
    # identical signals: best PESQ the ITU model can give
    assert M.compute_metrics(clean, clean, metrics=["pesq"]).values["pesq"] == pytest.approx(4.64, abs=0.01)


def test_si_sdr_closed_form_with_orthogonal_error():
    rng = np.random.default_rng(3)
    s = rng.standard_normal(20000)
    n = rng.standard_normal(20000)
    e = n - (n @ s) / (s @ s) * s  # e is orthogonal to s, so alpha = 1 for s + e
    e *= 0.3
    expected = 10 * math.log10((s @ s) / (e @ e))
    assert measures.si_sdr(s, s + e) == pytest.approx(expected, abs=1e-9)
    # scale invariance: scaling the estimate does not change the score
    assert measures.si_sdr(s, 7.0 * (s + e)) == pytest.approx(expected, abs=1e-9)
    # and the formula through compute_metrics (float64 inputs)
    assert M.compute_metrics(s, s + e, metrics=["si_sdr"]).values["si_sdr"] == pytest.approx(expected, abs=1e-9)


def test_si_sdr_perfect_estimate_is_reported_not_averaged():
    s = speech_like(1.0)
    res = M.compute_metrics(s, 2.0 * s, metrics=["si_sdr"])
    assert math.isnan(res.values["si_sdr"])
    assert res.errors["si_sdr"] == "infinite: the estimate is an exact scaled copy of the reference"


def _ssnr_oracle(clean, enh, sr=SR):
    """Frame loop written straight from the definition (frame count int(N/hop - win/hop))."""
    win_len = round(0.03 * sr)
    hop = win_len // 4
    w = 0.5 * (1 - np.cos(2 * np.pi * np.arange(1, win_len + 1) / (win_len + 1)))
    vals = []
    for k in range(int(len(clean) / hop - win_len / hop)):
        c = clean[k * hop : k * hop + win_len] * w
        p = enh[k * hop : k * hop + win_len] * w
        v = 10 * np.log10(np.sum(c**2) / (np.sum((c - p) ** 2) + 1e-10) + 1e-10)
        vals.append(min(max(v, -10), 35))
    return float(np.mean(vals)), len(vals)


def test_ssnr_matches_definition_loop(pair):
    clean, enh = (x.astype(np.float64) for x in pair)
    expected, frames = _ssnr_oracle(clean, enh)
    assert frames == int(len(clean) / 120 - 4) == measures.ssnr_frames(clean, enh).size
    assert measures.ssnr(clean, enh) == pytest.approx(expected, abs=1e-9)


def test_ssnr_of_a_long_file_is_computed_in_blocks():
    rng = np.random.default_rng(1)
    s = rng.standard_normal(16000 * 40)  # 5329 frames: three blocks of 2048
    e = s + rng.standard_normal(s.size) * np.repeat(rng.uniform(0.01, 3.0, s.size // 1600), 1600)
    expected, frames = _ssnr_oracle(s, e)
    assert frames == 5329
    assert measures.ssnr(s, e) == pytest.approx(expected, abs=1e-9)


def test_ssnr_constant_snr_and_clip_bounds():
    rng = np.random.default_rng(0)
    s = rng.standard_normal(16000)  # energy in every frame
    # enhanced = 0.9 s -> error 0.1 s in every frame -> 20 dB in every frame
    assert measures.ssnr(s, 0.9 * s) == pytest.approx(20.0, abs=1e-6)
    assert measures.ssnr(s, s) == pytest.approx(35.0)  # upper clip
    assert measures.ssnr(s, -10 * s) == pytest.approx(-10.0)  # 10log10(1/121) = -20.8 -> lower clip
    assert measures.ssnr(np.arange(900.0), np.arange(900.0)) == pytest.approx(35.0)  # 900/120 - 4 = 3 frames
    assert math.isnan(measures.ssnr(np.ones(500), np.ones(500)))  # fewer than one frame


def test_silent_reference_gives_nan_with_reasons_and_is_counted(pair):
    clean, enh = pair
    silent = np.zeros_like(clean)
    res = M.compute_metrics(silent, enh)
    for name in ("pesq", "estoi", "si_sdr"):
        assert math.isnan(res.values[name]), name
    assert "NoUtterancesError" in res.errors["pesq"]
    assert res.errors["estoi"] == res.errors["si_sdr"] == "silent reference"
    assert res.values["ssnr"] == pytest.approx(-10.0)  # defined: every frame at the lower clip
    rows = M.evaluate_pairs([("good", clean, enh), ("silent", silent, enh)], num_workers=0, progress=False)
    summary = M.summarize(rows)
    good = M.compute_metrics(clean, enh).values
    assert summary.failed == {"pesq": 1, "estoi": 1, "si_sdr": 1, "ssnr": 0}
    assert summary.counts == {"pesq": 1, "estoi": 1, "si_sdr": 1, "ssnr": 2}
    assert summary.means["pesq"] == pytest.approx(good["pesq"])
    assert summary.means["ssnr"] == pytest.approx((good["ssnr"] - 10.0) / 2)
    assert summary.first_errors["pesq"].startswith("silent: NoUtterancesError")
    flat = summary.flat("val/")
    assert flat["val/pesq"] == summary.means["pesq"] and flat["val/pesq_failed"] == 1.0


def test_short_and_mismatched_inputs_fail_per_metric_not_per_call(pair):
    clean, enh = pair
    i = max(0, int(np.argmax(np.abs(clean))) - 800)
    res = M.compute_metrics(clean[i : i + 1600], enh[i : i + 1600])  # 0.1 s of voiced signal
    assert "BufferTooShortError" in res.errors["pesq"]
    assert math.isnan(res.values["estoi"]) and res.errors["estoi"]
    assert math.isfinite(res.values["si_sdr"]) and math.isfinite(res.values["ssnr"])
    res = M.compute_metrics(clean, enh[: clean.size // 2])
    assert set(res.errors) == set(M.DEFAULT_METRICS)
    assert all("length mismatch" in r for r in res.errors.values())
    # a few samples of iSTFT slack are cut, not refused
    res = M.compute_metrics(clean, np.concatenate([enh, np.zeros(37, np.float32)]), metrics=["si_sdr"])
    assert res.values["si_sdr"] == pytest.approx(measures.si_sdr(clean, enh), abs=1e-9)


def test_other_sample_rate_is_resampled(pair):
    from scipy.signal import resample_poly

    clean, enh = pair
    c8, e8 = resample_poly(clean, 1, 2), resample_poly(enh, 1, 2)
    res = M.compute_metrics(c8, e8, sr=8000, metrics=["pesq", "si_sdr"])
    direct = M.compute_metrics(resample_poly(c8, 2, 1), resample_poly(e8, 2, 1), metrics=["pesq", "si_sdr"])
    assert res.values == pytest.approx(direct.values)


def test_classic_stoi_and_metric_groups(pair):
    clean, enh = pair
    res = M.compute_metrics(clean, enh, metrics=["stoi", "si_sdr"])
    assert res.values["stoi"] == pytest.approx(stoi(clean, enh, SR, extended=False), abs=1e-9)
    assert M.check_metric_names(["pesq", "dnsmos", "pesq", "dnsmos_bak"]) == (
        "pesq", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")


def test_bad_requests_raise():
    with pytest.raises(M.MetricError, match="unknown metric"):
        M.compute_metrics(np.ones(10), np.ones(10), metrics=["pesq", "mos"])
    with pytest.raises(M.MetricError, match="1-D"):
        M.compute_metrics(np.ones((2, 10)), np.ones((2, 10)))


def test_reference_free_rows_and_dnsmos_availability(pair):
    clean, enh = pair
    res = M.compute_metrics(None, enh, metrics=M.ALL_METRICS)
    assert not set(res.values) & set(M.REFERENCE_METRICS)  # not applicable, not failed
    if measures.dnsmos_available():
        from speechmos import dnsmos

        direct = dnsmos.run(enh, SR)
        assert res.errors == {}
        assert res.values["dnsmos_sig"] == pytest.approx(direct["sig_mos"])
        assert res.values["dnsmos_bak"] == pytest.approx(direct["bak_mos"])
        assert res.values["dnsmos_ovrl"] == pytest.approx(direct["ovrl_mos"])
        assert all(1.0 <= res.values[m] <= 5.0 for m in M.DNSMOS_METRICS)
    else:
        assert set(res.errors) == set(M.DNSMOS_METRICS)
        assert all("speechmos" in r for r in res.errors.values())


def test_evaluate_pairs_parallel_equals_serial_in_order():
    pairs = []
    for i in range(4):
        c = speech_like(3.0, seed=10 + i)
        pairs.append((f"utt{i}", c, noisy_version(c, 0.001 * (i + 1), seed=i)))
    pairs.append(("silent", np.zeros(48000, np.float32), pairs[0][2]))
    serial = M.evaluate_pairs(pairs, num_workers=0, progress=False)
    parallel = M.evaluate_pairs(iter(pairs), num_workers=2, progress=False)  # a generator: no len()
    assert [r["key"] for r in parallel] == ["utt0", "utt1", "utt2", "utt3", "silent"]
    for a, b in zip(serial, parallel):
        assert a["errors"] == b["errors"]
        for m in M.DEFAULT_METRICS:
            assert a[m] == pytest.approx(b[m], nan_ok=True)
    with PesqPool(num_workers=2) as pool:  # validation reusing the discriminator's pool
        reused = M.evaluate_pairs(pairs[:2], metrics=["pesq"], executor=pool.executor, progress=False)
        assert pool.executor is not None and not pool.executor._shutdown_thread  # still usable
        assert pool.normalized_pesq(pairs[0][1][None], pairs[0][2][None])[1].tolist() == [True]
    assert [r["pesq"] for r in reused] == pytest.approx([r["pesq"] for r in serial[:2]])
    # more noise, lower scores
    pesqs = [r["pesq"] for r in serial[:4]]
    assert pesqs == sorted(pesqs, reverse=True)


def test_measures_composite_and_metrics_import_in_one_direction_without_torch():
    """measures <- composite <- metrics (no cycle), and none of them, nor the PESQ-target pool the
    discriminator uses, loads torch: their worker processes start quickly."""
    import subprocess
    import sys

    code = ("import sys; import training.evaluation.composite as c; "
            "assert 'training.evaluation.metrics' not in sys.modules, 'composite imports metrics'; "
            "import training.evaluation.metrics, training.pesq_targets; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "ok", r.stderr
