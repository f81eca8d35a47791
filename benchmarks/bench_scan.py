"""Time and peak memory of the selective-scan backends, one child process per measurement.

Cases (MambAttention at batch 8, 2 s; D 256, N 16):
    time   800 sequences x 321 steps   (8 x 100 frequency bins, scanned over time)
    freq   2568 sequences x 100 steps  (8 x 321 frames, scanned over the compressed frequency axis)
    block  one Mamba block (d_model 64, expand 4, d_state 16) on the time shape, forward+backward

Backends: ``fused`` (training.mamba.scan_fused), ``torch`` (the pure-PyTorch chunked scan of
training.mamba.scan), ``mambapy`` (mambapy's parallel scan / MambaBlock) and ``oracle`` (the
sequential loop of tests/scan_oracle.py). Backends whose memory grows with B·L·D·N run on a
fraction of the sequences; their time and their memory above the pre-call baseline are scaled
linearly to the full batch and marked ``scaled xK`` in the output.

Children run with glibc's default malloc, as training processes do; ``BENCH_MALLOC_TUNING=1``
applies ``training.kernels.malloc_tuning`` to every backend (it helps mambapy's huge temporaries most).
Peak memory is the child's ``ru_maxrss``; ``peak above base`` subtracts the high-water mark the
child had reached before the timed call (interpreter, torch, inputs). Ratios are other / fused.

    python benchmarks/bench_scan.py            # full shapes (minutes)
    python benchmarks/bench_scan.py --quick    # 1/16 of the sequences, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {"time": (800, 321), "freq": (2568, 100), "block": (800, 321)}
DIM, STATE, D_MODEL, EXPAND = 256, 16, 64, 4
# Fraction of the sequences each backend runs on at full size (1 = all of them).
FRACTION = {"fused": 1, "torch": 4, "mambapy": 16, "oracle": 16}
REPEATS = 2


def _hwm_kb() -> int:
    """High-water RSS of this process so far, in KiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _scan_inputs(torch, batch, length, seed=0):
    """Inputs in the (batch, dim, L) shapes of ``selective_scan_fn``, stored channel-last (as
    transposed views of (batch, L, dim) tensors): the layout the Mamba layers of both this package
    and mambapy produce (delta before softplus)."""
    g = torch.Generator().manual_seed(seed)
    t = lambda v: v.transpose(1, 2)  # noqa: E731
    return {
        "u": t(torch.randn(batch, length, DIM, generator=g)),
        "delta": t(torch.randn(batch, length, DIM, generator=g) * 0.5 - 2.0),
        "A": -torch.arange(1, STATE + 1, dtype=torch.float32).repeat(DIM, 1),
        "B": t(torch.randn(batch, length, STATE, generator=g)),
        "C": t(torch.randn(batch, length, STATE, generator=g)),
        "D": torch.ones(DIM),
        "z": t(torch.randn(batch, length, DIM, generator=g)),
        "delta_bias": torch.full((DIM,), 0.1),
    }


def _scan_fn(backend):
    """f(**inputs) -> out for one backend, all with mamba_ssm semantics (softplus, D, silu(z))."""
    import torch.nn.functional as F

    if backend == "fused":
        from training.mamba.scan_fused import selective_scan_fused

        return lambda x: selective_scan_fused(**x, delta_softplus=True)
    if backend == "torch":
        from training.mamba.scan import selective_scan_torch

        return lambda x: selective_scan_torch(**x, delta_softplus=True)
    if backend == "oracle":
        sys.path.insert(0, str(ROOT / "tests"))
        from scan_oracle import sequential_selective_scan

        return lambda x: sequential_selective_scan(**x, delta_softplus=True)
    if backend == "mambapy":
        from mambapy.mamba import MambaBlock, MambaConfig

        block = MambaBlock(MambaConfig(d_model=DIM // EXPAND, n_layers=1, expand_factor=EXPAND, pscan=True))

        def run(x):
            t = lambda v: v.transpose(1, 2)  # noqa: E731  (b, d, l) -> (b, l, d)
            delta = F.softplus(x["delta"] + x["delta_bias"][None, :, None])
            y = block.selective_scan(t(x["u"]), t(delta), x["A"], t(x["B"]), t(x["C"]), x["D"])
            return t(y) * F.silu(x["z"])

        return run
    raise ValueError(f"unknown backend {backend!r}")


def _block(backend):
    """A Mamba block (mixer only) d_model 64, expand 4: ours (scan forced to ``backend``) or mambapy's."""
    import torch

    torch.manual_seed(0)
    if backend == "mambapy":
        from mambapy.mamba import MambaBlock, MambaConfig

        return MambaBlock(MambaConfig(d_model=D_MODEL, n_layers=1, expand_factor=EXPAND, d_state=STATE))
    os.environ["SE_SCAN_BACKEND"] = backend
    from training.mamba import Mamba

    return Mamba(D_MODEL, d_state=STATE, expand=EXPAND)


def child(case: str, backend: str, batch: int, length: int) -> dict:
    """Run one measurement in this (fresh) process; returns the numbers as a dict."""
    import torch

    result = {"threads": torch.get_num_threads()}
    if os.environ.get("BENCH_MALLOC_TUNING") == "1":  # compare under orchestrate enhance's malloc settings
        from training.kernels.malloc_tuning import tune

        result["malloc_tuned"] = tune()
    if case == "block":
        model = _block(backend)
        x = torch.randn(batch, length, D_MODEL, requires_grad=True)
        warm_x = torch.randn(2, 16, D_MODEL, requires_grad=True)
        fn = model
    else:
        fn = _scan_fn(backend)
        x = {k: v.requires_grad_() for k, v in _scan_inputs(torch, batch, length).items()}
        warm_x = {k: v.requires_grad_() for k, v in _scan_inputs(torch, 2, 16, seed=1).items()}
    t0 = time.perf_counter()
    fn(warm_x).sum().backward()  # first call: kernels compile or load from the cache
    result["first_call_s"] = time.perf_counter() - t0
    leaves = list(x.values()) if isinstance(x, dict) else [x, *fn.parameters()]
    base = _hwm_kb()
    best = None
    for _ in range(REPEATS):  # the machine may be shared: keep the fastest run
        for leaf in leaves:
            leaf.grad = None
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        out = fn(x)
        t1 = time.perf_counter()
        out.backward(torch.ones_like(out))
        t2 = time.perf_counter()
        run = {"fwd_s": t1 - t0, "bwd_s": t2 - t1, "cpu_s": time.process_time() - cpu0}
        if best is None or run["fwd_s"] + run["bwd_s"] < best["fwd_s"] + best["bwd_s"]:
            best = run
        del out
    result.update(best)
    result.update(peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, base_mb=base / 1024)
    return result


def measure(case: str, backend: str, fraction: int, quick: bool) -> dict:
    batch, length = CASES[case]
    batch = max(1, batch // (16 if quick else 1) // fraction)
    cmd = [sys.executable, __file__, "--child", json.dumps([case, backend, batch, length])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "batch": batch}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["batch"] = batch
    r["scale"] = fraction
    above = r["peak_mb"] - r["base_mb"]
    r["above_mb"] = above * fraction
    r["peak_full_mb"] = r["base_mb"] + above * fraction  # inputs scale too; a lower bound
    for key in ("fwd_s", "bwd_s", "cpu_s"):
        r[key] *= fraction
    return r


def _row(case, backend, r, ref):
    if "error" in r:
        return f"{case:6s} {backend:8s} error: {r['error']}"
    total = r["fwd_s"] + r["bwd_s"]
    note = f"  (scaled x{r['scale']} from {r['batch']} sequences)" if r["scale"] > 1 else ""
    ratio = ""
    if ref is not None and backend != "fused":
        ratio = (f"  | {total / (ref['fwd_s'] + ref['bwd_s']):6.1f}x time {r['cpu_s'] / ref['cpu_s']:5.1f}x cpu"
                 f" {r['peak_full_mb'] / ref['peak_full_mb']:5.1f}x peak"
                 f" {r['above_mb'] / max(ref['above_mb'], 1.0):6.1f}x above-base")
    return (f"{case:6s} {backend:8s} fwd {r['fwd_s']:7.2f} s  bwd {r['bwd_s']:7.2f} s  cpu {r['cpu_s']:7.1f} s"
            f"  peak {r['peak_full_mb']:8.0f} MB  above base {r['above_mb']:8.0f} MB"
            f"  first call {r['first_call_s']:5.1f} s{ratio}{note}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1/16 of the sequences (a smoke run)")
    p.add_argument("--cases", default="time,freq,block", help="comma-separated subset of time,freq,block")
    p.add_argument("--backends", default="fused,torch,mambapy,oracle", help="comma-separated backends")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return 0
    print(f"# D {DIM}, N {STATE}; block d_model {D_MODEL} expand {EXPAND}; forward+backward, float32;"
          f" {'QUICK (1/16 of the sequences)' if args.quick else 'full batch 8'}; cpus {os.cpu_count()}")
    print("# ratios: other backend / fused (time: fwd+bwd wall; cpu: process CPU time of that run;"
          " peak: ru_maxrss; above-base: peak minus pre-call). Best of", REPEATS, "runs per child.")
    for case in args.cases.split(","):
        ref = None
        for backend in args.backends.split(","):
            if case == "block" and backend == "oracle":
                continue  # the oracle is a scan, not a block
            r = measure(case, backend, FRACTION.get(backend, 1), args.quick)
            if backend == "fused" and "error" not in r:
                ref = r
            print(_row(case, backend, r, ref), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
