"""CSIG / CBAK / COVL (Hu & Loizou 2008): LLR, WSS and segSNR against an independent implementation
(the ``pysepm-evo`` package, test-only, installed without its dependencies by .ci/setup.sh; its
numba JIT and its reverberation module are bypassed: only its plain-numpy quality measures run),
the regression and its clipping, and the metrics plumbing."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import types

import numpy as np
import pytest

from training.evaluation.composite import composite, composite_from_parts, llr, wss
from training.evaluation.metrics import compute_metrics, pesq_wb, ssnr


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
    assert wss(clean, enh) == pytest.approx(qm.wss(clean, enh, 16000), rel=1e-9)
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
