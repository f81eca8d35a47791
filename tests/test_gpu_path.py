"""The Mamba mixer's GPU branch (mamba-ssm's ``mamba_inner_fn`` / ``selective_scan_fn``) run on CPU.

mamba-ssm and causal-conv1d are installed from their sdists without kernels (.ci/setup.sh:
``MAMBA_SKIP_CUDA_BUILD=TRUE``), so their Python files are real. What cannot exist without a GPU is
stubbed, and only that: the compiled extensions ``selective_scan_cuda`` and ``causal_conv1d_cuda``
(empty modules, never called), and mamba-ssm's Triton layer-norm module (Triton has no CPU build
here; the interface only imports ``_layer_norm_fwd`` from it, unused by the Mamba mixer). The package
``__init__`` of mamba_ssm (which imports its Triton-based models) is bypassed by loading
``mamba_ssm.ops.selective_scan_interface`` under an empty package module.
Then mamba-ssm's CUDA entry points are swapped for its own pure-PyTorch references
(``selective_scan_ref``, ``mamba_inner_ref``, causal-conv1d's ``causal_conv1d_ref``) and the mixer,
with ``SE_SCAN_BACKEND=mamba_ssm``, takes the exact code path it takes on a GPU; its output and
gradients are compared with the CPU path on the same parameters.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch

from training.mamba import kernels, scan
from training.mamba.mixer import Mamba


def _interface(monkeypatch):
    """mamba_ssm.ops.selective_scan_interface imported on CPU (stubs: see the module docstring)."""
    for name in ("mamba_ssm", "causal_conv1d"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} not installed (bash .ci/setup.sh installs it without kernels)")
    pytest.importorskip("einops")
    spec = importlib.util.find_spec("mamba_ssm")
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = list(spec.submodule_search_locations)
    for name, module in {
        "mamba_ssm": pkg,
        "selective_scan_cuda": types.ModuleType("selective_scan_cuda"),
        "causal_conv1d_cuda": types.ModuleType("causal_conv1d_cuda"),
        "mamba_ssm.ops.triton.layer_norm": types.SimpleNamespace(_layer_norm_fwd=None),
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in [m for m in sys.modules if m.startswith(("mamba_ssm.ops.selective", "causal_conv1d."))]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("mamba_ssm.ops.selective_scan_interface")


@pytest.fixture
def reference_kernels(monkeypatch):
    ssi = _interface(monkeypatch)
    # the real interface module passes mamba-ssm's own checks (symbols and causal-conv1d binding)
    assert kernels.from_interface(ssi).available
    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref

    monkeypatch.setattr(ssi, "causal_conv1d_fn", causal_conv1d_ref)
    monkeypatch.setattr(ssi, "selective_scan_fn", ssi.selective_scan_ref)
    monkeypatch.setattr(kernels, "_cached", kernels.MambaKernels(ssi.selective_scan_ref, ssi.mamba_inner_ref))
    return ssi


def _run(m: Mamba, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = m(x)
    y.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("fast_path", [True, False])
def test_gpu_branch_with_reference_kernels_matches_cpu_path(reference_kernels, monkeypatch, fast_path):
    torch.manual_seed(0)
    m = Mamba(d_model=16, d_state=8, use_fast_path=fast_path)
    x = torch.randn(2, 13, 16)
    calls = []
    inner = kernels._cached.mamba_inner_fn
    scan_fn = kernels._cached.selective_scan_fn
    monkeypatch.setattr(kernels, "_cached", kernels.MambaKernels(
        lambda *a, **k: calls.append("scan") or scan_fn(*a, **k),
        lambda *a, **k: calls.append("inner") or inner(*a, **k)))

    monkeypatch.setenv("SE_SCAN_BACKEND", "mamba_ssm")
    y_gpu, dx_gpu, g_gpu = _run(m, x)
    assert calls == (["inner"] if fast_path else ["scan"])  # the branch under test ran
    monkeypatch.setenv("SE_SCAN_BACKEND", "torch")
    y_cpu, dx_cpu, g_cpu = _run(m, x)
    # float32 tolerances: mamba-ssm's references compute the scan in float32
    torch.testing.assert_close(y_gpu, y_cpu, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(dx_gpu, dx_cpu, rtol=1e-4, atol=1e-6)
    for k in g_cpu:
        torch.testing.assert_close(g_gpu[k], g_cpu[k], rtol=1e-4, atol=1e-5, msg=k)
    assert not torch.equal(y_gpu, torch.zeros_like(y_gpu))


def test_interface_without_causal_conv1d_binding_is_refused(monkeypatch):
    ssi = _interface(monkeypatch)
    monkeypatch.setattr(ssi, "causal_conv1d_fwd_function", None)
    k = kernels.from_interface(ssi)
    assert not k.available and "causal-conv1d binding" in k.error


def test_known_bad_version_pairs_are_refused():
    bad_args = kernels.version_problem({"mamba_ssm": "2.2.4", "causal_conv1d": "1.5.2"})
    assert "7 arguments" in bad_args
    assert "cpp_functions" in kernels.version_problem({"mamba_ssm": "2.2.6.post3", "causal_conv1d": "1.5.0.post8"})
    assert kernels.version_problem({"mamba_ssm": "2.2.4", "causal_conv1d": "1.5.0.post8"}) is None
    assert kernels.version_problem(dict(kernels.PINNED)) is None
    assert "not installed" in kernels.version_problem({"mamba_ssm": "not installed", "causal_conv1d": "1.5.2"})


def test_gpu_without_kernels_stops_unless_torch_scan_is_asked(monkeypatch):
    """No CUDA tensors here: the policy is checked on the device type the dispatcher sees."""
    monkeypatch.setattr(kernels, "_cached", kernels.MambaKernels(error="import failed: No module named 'triton'"))
    monkeypatch.delenv("SE_SCAN_BACKEND", raising=False)
    with pytest.raises(scan.ScanBackendError, match="triton.*SE_SCAN_BACKEND=torch"):
        scan.choose_backend("cuda")
    monkeypatch.setenv("SE_SCAN_BACKEND", "torch")
    assert scan.choose_backend("cuda") == "torch"
    monkeypatch.setenv("SE_SCAN_BACKEND", "fused")
    with pytest.raises(scan.ScanBackendError, match="CPU only"):
        scan.choose_backend("cuda")
    monkeypatch.delenv("SE_SCAN_BACKEND")
    assert scan.choose_backend("cpu") in ("fused", "torch")
