"""The portable build of the CPU kernels (``SE_NATIVE_PORTABLE=1``: no ``-march=native``, so the generic
C paths instead of the AVX2 / AVX-512 ones) against the native build, on the same inputs: the
inference attention at every kernel head size and the fused Mamba layer (d_model 16 / 64, both
directions). Both builds approximate the same float32 function (vector exp polynomials, summation
order), so they agree to float32 tolerance, not bitwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("training.mamba.scan_fused", reason="C kernels not buildable here", exc_type=ImportError)

ROOT = Path(__file__).resolve().parents[1]

# Run in the parent (native build) and in a child process (portable build): the same seeded inputs.
COMPUTE = """
import sys, torch
from training.kernels import attention_cpu, native
from training.kernels.attention_cpu import KERNEL_HEAD_SIZES
from training.mamba import Mamba
from training.mamba.infer import fused_layer

def outputs():
    out = {}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for dh in KERNEL_HEAD_SIZES:
            heads = 3
            qkv = torch.randn(2, 37, 3 * heads * dh, generator=g)
            assert attention_cpu.kernel_applies(qkv, heads, 0.0)
            out[f"attention dh {dh}"] = attention_cpu.attention_from_qkv(qkv, heads)
        for dm, length in ((16, 45), (64, 70)):
            torch.manual_seed(dm)
            m = Mamba(dm, expand=2 if dm == 64 else 4).eval()
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
            x = torch.randn(2, length, dm, generator=g)
            norm = torch.nn.RMSNorm(dm, eps=1e-5)
            for reverse in (False, True):
                out[f"mamba d {dm} reverse {reverse}"] = fused_layer(m, x, norm=norm, residual=True, reverse=reverse)
    return out, native.load()._name
"""


def _compute_in_child(env: dict) -> tuple[dict, str]:
    code = COMPUTE + "\nout, lib = outputs()\ntorch.save({'out': out, 'lib': lib}, sys.argv[1])\n"
    path = Path(env["SE_NATIVE_CACHE"]) / "outputs.pt"
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(path)
    return saved["out"], saved["lib"]


def test_portable_build_equals_native_build_to_float32_tolerance(tmp_path):
    scope: dict = {}
    exec(COMPUTE, scope)  # noqa: S102 - the same code the child runs, in this process (native build)
    native_out, native_lib = scope["outputs"]()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SE_NATIVE_PORTABLE": "1", "SE_NATIVE_CACHE": str(tmp_path)}
    portable_out, portable_lib = _compute_in_child(env)
    assert Path(portable_lib).parent == tmp_path and Path(portable_lib).name != Path(native_lib).name
    assert sorted(portable_out) == sorted(native_out) and len(native_out) == 9
    for key, ref in native_out.items():
        got = portable_out[key]
        assert got.shape == ref.shape and torch.isfinite(got).all(), key
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item(), msg=key)


def test_the_portable_library_is_one_file_for_every_cpu_and_the_native_one_is_per_cpu(monkeypatch):
    from training.kernels import native

    cc = native._compiler()

    def path_on(cpu: str, portable: bool) -> str:
        monkeypatch.setattr(native, "_cpu_signature", lambda: cpu)
        monkeypatch.setenv("SE_NATIVE_PORTABLE", "1" if portable else "0")
        return native.library_path(cc).name

    assert path_on("zen3 avx2", True) == path_on("sapphire rapids avx512f", True)
    assert path_on("zen3 avx2", False) != path_on("sapphire rapids avx512f", False)
    assert path_on("zen3 avx2", True) != path_on("zen3 avx2", False)
