"""The fused CPU selective scan against the sequential oracle (forward and every gradient)."""

from __future__ import annotations

import pytest
import torch
from scan_oracle import sequential_selective_scan

from training.mamba import scan_fused
from training.mamba.scan_fused import selective_scan_fused

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, dim, n, length, dtype=torch.float32, seed=0, D=True, z=True, bias=True, softplus=True):
    """Random inputs in the ranges a Mamba layer produces (A < 0; delta > 0 without the softplus)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return {
        "u": r(batch, dim, length),
        "delta": r(batch, dim, length, scale=0.5) if softplus else r(batch, dim, length, scale=0.5).abs(),
        "A": (-torch.rand(dim, n, generator=g, dtype=torch.float64) * 3 - 0.05).to(dtype),
        "B": r(batch, n, length),
        "C": r(batch, n, length),
        "D": r(dim) if D else None,
        "z": r(batch, dim, length) if z else None,
        "delta_bias": r(dim, scale=0.5) if bias else None,
    }


def run(fn, inputs, softplus, grad_out, requires=NAMES):
    """Output and gradients of ``fn`` for the inputs named in ``requires``."""
    xs = {k: (v.clone().requires_grad_(k in requires) if v is not None else None) for k, v in inputs.items()}
    out = fn(**xs, delta_softplus=softplus)
    leaves = [k for k in NAMES if xs[k] is not None and xs[k].requires_grad]
    grads = torch.autograd.grad(out, [xs[k] for k in leaves], grad_out.to(out.dtype)) if leaves else ()
    return out, dict(zip(leaves, grads))


def assert_close_rel(actual, expected, rel, what):
    """max |actual - expected| <= rel * max |expected| (elementwise relative error is meaningless near 0)."""
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= rel * max(scale, 1e-12), f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def compare(inputs, softplus, rel, requires=NAMES, seed=1):
    ref_in = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    g = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(*inputs["u"].shape, generator=g, dtype=torch.float64)
    out, grads = run(selective_scan_fused, inputs, softplus, grad_out, requires)
    ref, ref_grads = run(sequential_selective_scan, ref_in, softplus, grad_out, requires)
    assert out.dtype == inputs["u"].dtype and out.shape == ref.shape
    assert_close_rel(out, ref, rel, "out")
    assert set(grads) == set(ref_grads)
    for k in grads:
        assert grads[k].dtype == inputs[k].dtype and grads[k].shape == inputs[k].shape, k
        assert_close_rel(grads[k], ref_grads[k], rel, f"d{k}")


# Lengths around the checkpoint interval (64) and odd ones; one length-1 sequence.
@pytest.mark.parametrize(
    "batch,dim,n,length,softplus,opts",
    [
        (2, 3, 4, 1, True, {}),
        (3, 5, 16, 63, True, {}),
        (2, 4, 16, 64, False, {}),
        (1, 7, 8, 65, True, {"D": False}),
        (4, 6, 16, 129, True, {"z": False, "bias": False}),
        (2, 9, 5, 201, False, {"D": False, "z": False, "bias": False}),
        (5, 2, 16, 77, True, {"bias": False}),
    ],
)
def test_float32_matches_float64_oracle(batch, dim, n, length, softplus, opts):
    x = make_inputs(batch, dim, n, length, torch.float32, seed=length, softplus=softplus, **opts)
    compare(x, softplus, rel=1e-4)


def test_float64_matches_oracle_exactly():
    compare(make_inputs(3, 4, 16, 150, torch.float64, seed=7), True, rel=1e-12)


@pytest.mark.parametrize("requires", [("u",), ("A",), ("delta", "delta_bias"), ("B", "C"), ("D", "z")])
def test_subsets_of_inputs_require_grad(requires):
    compare(make_inputs(2, 3, 8, 70, torch.float32, seed=3), True, rel=1e-4, requires=requires)


def test_non_contiguous_inputs():
    base = make_inputs(3, 4, 8, 66, torch.float32, seed=5)
    # Same values, laid out transposed in memory.
    nc = {k: (v.transpose(0, -1).contiguous().transpose(0, -1) if v is not None and v.dim() > 1 else v)
          for k, v in base.items()}
    nc["u"] = base["u"][:, :, ::1].permute(2, 0, 1).contiguous().permute(1, 2, 0)
    assert not nc["u"].is_contiguous() and not nc["B"].is_contiguous() and not nc["A"].is_contiguous()
    compare(nc, True, rel=1e-4)
    strided = make_inputs(2, 3, 4, 100, torch.float32, seed=6, softplus=False)
    for k in ("u", "delta", "z"):
        strided[k] = torch.cat([strided[k], strided[k]], dim=-1)[:, :, ::2]
    for k in ("B", "C"):
        strided[k] = torch.cat([strided[k], strided[k]], dim=-1)[:, :, ::2]
    compare(strided, False, rel=1e-4)


def test_no_grad_path_equals_autograd_path():
    x = make_inputs(2, 4, 16, 90, torch.float32, seed=9)
    with torch.no_grad():
        a = selective_scan_fused(**x, delta_softplus=True)
    xs = dict(x, u=x["u"].clone().requires_grad_())
    b = selective_scan_fused(**xs, delta_softplus=True)
    assert b.requires_grad and torch.equal(a, b.detach())


def test_gradcheck_float64_tiny():
    x = make_inputs(2, 2, 3, 9, torch.float64, seed=11)
    args = tuple(x[k].clone().requires_grad_() for k in NAMES)

    def f(u, delta, A, B, C, D, z, bias):
        return selective_scan_fused(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradcheck(lambda u, d, A, B, C: selective_scan_fused(u, d, A, B, C), args[:5])


def test_result_does_not_depend_on_thread_count():
    x = make_inputs(3, 5, 8, 80, torch.float32, seed=13)
    grad_out = torch.randn(3, 5, 80, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(run(selective_scan_fused, x, True, grad_out))
    finally:
        torch.set_num_threads(before)
    (o1, g1), (o2, g2) = results
    assert torch.equal(o1, o2)
    for k in g1:
        assert torch.equal(g1[k], g2[k]), k


def test_saved_memory_is_not_batch_dim_length_state():
    """What autograd keeps is O(B·D·L + B·D·N·L/CHUNK), far below the B·D·L·N states."""
    batch, dim, n, length = 2, 64, 16, 512
    x = make_inputs(batch, dim, n, length, torch.float32, seed=17)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    xs = {k: (v.requires_grad_() if v is not None else None) for k, v in x.items()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = selective_scan_fused(**xs, delta_softplus=True)
    out.sum().backward()
    inputs_bytes = sum(v.numel() * 4 for v in x.values() if v is not None)
    states_bytes = batch * dim * length * n * 4
    ckpt_bytes = batch * dim * n * -(-length // scan_fused.CHUNK) * 4
    extra = sum(saved) - inputs_bytes
    assert extra <= batch * dim * length * 4 + ckpt_bytes  # y before the gate + checkpoints
    assert sum(saved) < states_bytes / 3


def test_bad_shapes_raise_value_error():
    x = make_inputs(2, 3, 4, 10)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_fused(**dict(x, B=x["B"][:, :, :5]))
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_fused(**dict(x, A=x["A"][:2]))
    with pytest.raises(ValueError, match="delta_bias must be"):
        selective_scan_fused(**dict(x, delta_bias=x["delta_bias"][:1]))


def test_mamba_layer_uses_fused_scan_and_matches_torch_backend(monkeypatch):
    """training.mamba picks the fused scan on CPU; a Mamba layer's output and gradients agree."""
    from training.mamba import Mamba, scan

    monkeypatch.delenv("SE_SCAN_BACKEND", raising=False)
    assert scan.resolve_backend(torch.zeros(1)) == "fused"
    torch.manual_seed(0)
    layer = Mamba(16, d_state=8, expand=2)
    x = torch.randn(2, 37, 16)
    results = {}
    for backend in ("fused", "torch"):
        monkeypatch.setenv("SE_SCAN_BACKEND", backend)
        layer.zero_grad()
        xb = x.clone().requires_grad_()
        out = layer(xb)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[backend] = [out, xb.grad] + [p.grad.clone() for p in layer.parameters()]
    for a, b in zip(results["fused"], results["torch"]):
        assert_close_rel(a, b, 1e-4, "mamba layer")


def _python(code: str, **env) -> list[str]:
    """Run ``code`` in a fresh interpreter at the repository root; its stdout words."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_without_a_c_compiler_the_module_is_not_importable_and_torch_is_used(tmp_path):
    code = (
        "try:\n    import training.mamba.scan_fused\nexcept ImportError as e:\n    print('import-error', type(e).__name__)\n"
        "import torch\nfrom training.mamba import scan\nprint(scan.resolve_backend(torch.zeros(1)))\n"
    )
    words = _python(code, CC="no-such-compiler", SE_NATIVE_CACHE=str(tmp_path / "empty-cache"))
    assert words == ["import-error", "NativeBuildError", "torch"]


def test_kernels_build_once_into_the_cache_and_load_from_it(tmp_path):
    """First import compiles into the cache folder; a later process loads that file."""
    cache = tmp_path / "cache"
    code = "from training.mamba import scan_fused\nprint(scan_fused._LIB._name)"
    first = _python(code, SE_NATIVE_CACHE=str(cache))
    built = list(cache.glob("se_cpu-*.so"))
    assert [str(p) for p in built] == first and not list(cache.glob("*.tmp"))
    mtime = built[0].stat().st_mtime_ns
    # Same compiler identity (cc's version is part of the key), so the cached file is reused as is.
    assert _python(code, SE_NATIVE_CACHE=str(cache)) == first
    assert built[0].stat().st_mtime_ns == mtime


def test_results_do_not_depend_on_the_process_history():
    """Bitwise equal results whether or not other shapes ran first (no uninitialised scratch)."""
    x = make_inputs(3, 21, 16, 70, torch.float32, seed=23)  # 21 channels: a partial 16-block
    grad_out = torch.randn(3, 21, 70, dtype=torch.float64)
    first = run(selective_scan_fused, x, True, grad_out)
    noise = make_inputs(4, 40, 16, 130, torch.float32, seed=29)
    noise["delta"][0, 0, 5] = float("nan")
    run(selective_scan_fused, noise, True, torch.randn(4, 40, 130, dtype=torch.float64))
    again = run(selective_scan_fused, x, True, grad_out)
    assert torch.equal(first[0], again[0])
    for k in first[1]:
        assert torch.equal(first[1][k], again[1][k]), k


def test_bfloat16_inputs_compute_in_float32():
    x = make_inputs(2, 3, 8, 40, torch.float32, seed=19)
    half = {k: (v.to(torch.bfloat16) if v is not None else None) for k, v in x.items()}
    xs = {k: v.clone().requires_grad_() for k, v in half.items()}
    out = selective_scan_fused(**xs, delta_softplus=True)
    out.sum().backward()
    ref = selective_scan_fused(**{k: v.float() for k, v in half.items()}, delta_softplus=True)
    assert out.dtype == torch.bfloat16 and all(xs[k].grad.dtype == torch.bfloat16 for k in NAMES)
    assert_close_rel(out.float(), ref, 1e-2, "bfloat16 out")
