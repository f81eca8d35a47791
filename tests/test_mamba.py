"""The portable Mamba: scan vs the sequential oracle, mamba_ssm-compatible parameters, mambapy parity."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from scan_oracle import sequential_selective_scan  # noqa: E402

from training.mamba import BiMamba, Mamba, ResidualMamba  # noqa: E402
from training.mamba import scan as scan_mod  # noqa: E402


def _inputs(b, d, n, length, seed):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=f64) * scale).requires_grad_()

    return {
        "u": r(b, d, length),
        "delta": r(b, d, length, scale=0.5),
        "A": (-torch.rand(d, n, generator=g, dtype=f64) * 4).requires_grad_(),
        "B": r(b, n, length),
        "C": r(b, n, length),
        "D": r(d),
        "z": r(b, d, length),
        "delta_bias": r(d, scale=0.3),
    }


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 7), (3, 5, 16, 33), (2, 8, 4, 130)])
@pytest.mark.parametrize("chunk_elements", [1, 1 << 20])
def test_torch_scan_matches_oracle_forward_and_grad(shape, chunk_elements, monkeypatch):
    # Tiny chunks exercise the chunk-to-chunk carry in both passes; large ones one chunk.
    monkeypatch.setattr(scan_mod, "_CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(scan_mod, "_MIN_CHUNK", 1 if chunk_elements == 1 else 8)
    x = _inputs(*shape, seed=sum(shape))
    y = scan_mod.selective_scan_torch(**x, delta_softplus=True)
    y_ref = sequential_selective_scan(**x, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-9)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, list(x.values()), gy)
    grads_ref = torch.autograd.grad(y_ref, list(x.values()), gy)
    for name, g, g_ref in zip(x, grads, grads_ref):
        torch.testing.assert_close(
            g, g_ref, rtol=1e-5, atol=1e-9 * g_ref.abs().max().item() + 1e-12, msg=name
        )


def test_torch_scan_without_optional_terms():
    x = _inputs(2, 3, 4, 9, seed=3)
    args = [x[k] for k in ("u", "delta", "A", "B", "C")]
    torch.testing.assert_close(
        scan_mod.selective_scan_torch(*args), sequential_selective_scan(*args), rtol=1e-5, atol=1e-9
    )


def test_dispatcher_backend_selection(monkeypatch):
    u = torch.zeros(1, 1, 1)
    monkeypatch.setenv("SE_SCAN_BACKEND", "torch")
    assert scan_mod.resolve_backend(u) == "torch"
    monkeypatch.setenv("SE_SCAN_BACKEND", "nonsense")
    with pytest.raises(scan_mod.ScanBackendError, match="SE_SCAN_BACKEND"):
        scan_mod.resolve_backend(u)
    monkeypatch.delenv("SE_SCAN_BACKEND")
    expected = "fused" if scan_mod._fused_scan is not None else "torch"
    assert scan_mod.resolve_backend(u) == expected
    if not scan_mod.kernels.load().available:
        monkeypatch.setenv("SE_SCAN_BACKEND", "mamba_ssm")
        with pytest.raises(scan_mod.ScanBackendError, match="mamba_ssm"):
            scan_mod.resolve_backend(u)


def test_dispatcher_result_matches_oracle(monkeypatch):
    monkeypatch.setenv("SE_SCAN_BACKEND", "auto")
    x = _inputs(2, 4, 8, 21, seed=5)
    y = scan_mod.selective_scan(**x, delta_softplus=True)
    torch.testing.assert_close(y, sequential_selective_scan(**x, delta_softplus=True), rtol=1e-5, atol=1e-9)


def test_mamba_state_dict_matches_mamba_ssm():
    # mamba_ssm.Mamba(d_model=64, d_state=16, d_conv=4, expand=4) (platform-facts.md)
    expected = {
        "A_log": (256, 16),
        "D": (256,),
        "in_proj.weight": (512, 64),
        "conv1d.weight": (256, 1, 4),
        "conv1d.bias": (256,),
        "x_proj.weight": (36, 256),
        "dt_proj.weight": (256, 4),
        "dt_proj.bias": (256,),
        "out_proj.weight": (64, 256),
    }
    sd = Mamba(64, d_state=16, d_conv=4, expand=4).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_mamba_initialisation():
    torch.manual_seed(0)
    m = Mamba(64, expand=4)
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 17.0)).repeat(256, 1))
    assert torch.equal(m.D, torch.ones(256))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.001 - 1e-6 and dt.max() <= 0.1 + 1e-6
    assert m.dt_proj.weight.abs().max() <= 4**-0.5
    assert sum(p.numel() for p in ResidualMamba(64).parameters()) == 65_344


def test_mambapy_block_loads_strictly_and_agrees():
    from mambapy.mamba import MambaBlock, MambaConfig

    torch.manual_seed(1)
    ref = MambaBlock(MambaConfig(d_model=32, n_layers=1, d_state=16, expand_factor=4, d_conv=4)).double()
    ours = Mamba(32, d_state=16, d_conv=4, expand=4).double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 19, 32, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-7, atol=1e-9)


def test_bimamba_shapes_and_direction():
    torch.manual_seed(0)
    blk = BiMamba(8, expand=2)
    x = torch.randn(2, 11, 8)
    y = blk(x)
    assert y.shape == (2, 11, 16)
    # The forward half at step t only sees x[:t+1]; the backward half only x[t:].
    x2 = x.clone()
    x2[:, 6:] += 1.0
    y2 = blk(x2)
    assert torch.allclose(y[:, :6, :8], y2[:, :6, :8])
    assert not torch.allclose(y[:, :6, 8:], y2[:, :6, 8:])
