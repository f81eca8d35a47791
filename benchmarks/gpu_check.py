"""GPU acceptance check: one command, one table (under 8 minutes on one GPU).

    python benchmarks/gpu_check.py                         # on the GPU (cuda / ROCm)
    python benchmarks/gpu_check.py --device cpu --quick    # every part that runs on CPU (CI: < 60 s)

Parts (each prints rows: part | what | result | ok):
1. step   -- per generator of the registry, a real `train_step` (G, metric discriminator, losses,
             AdamW, PESQ targets) at the paper's training shape, fp32 and bf16: steps/s.
2. parity -- the checkpoint written by part 3 loaded on CPU and on the device: forward on the same
             noisy clip, max |diff| relative to the output's max |value|.
3. resume -- a real `training.run` on the device (demo corpus, deterministic kernels), SIGUSR1 after
             its first checkpoint, exit 75, rerun: per-step losses and final weights against an
             uninterrupted run.
4. kernels -- with mamba-ssm's kernels importable: `selective_scan_fn` against the torch scan
             (forward and gradients, relative error) and their speed; else the reason they are not.
`--quick` shrinks everything (tiny widths, short crops, three model families, 4 training steps).
Exit status 1 when a row fails. Paste the table into README.md after a GPU run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = {"rwsa": {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4},
        "dual": {"channels": 16, "num_blocks": 1}}
QUICK_MODELS = ["rwsa-xs", "mambattention", "mpsenet"]


def _tiny(name: str) -> dict:
    return TINY["rwsa"] if name.startswith("rwsa") else TINY["dual"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- 1. training step per model -----------------------------------------------------------------
def part_step(device: torch.device, quick: bool, batch: int, steps: int, models: list[str] | None) -> list[tuple]:
    from training.loop import StepContext, train_step
    from training.losses import LossWeights
    from training.models import build_model, list_models, model_info
    from training.pesq_targets import PesqPool

    names = models or (QUICK_MODELS if quick else [n for n in list_models() if model_info(n).kind == "generator"])
    rows = []
    with PesqPool(0 if quick else 2) as pool:
        for name in names:
            for precision in ("fp32", "bf16"):
                torch.manual_seed(0)
                G = build_model(name, seed=0, **(_tiny(name) if quick else {})).to(device)
                D = build_model("metric-discriminator", seed=1).to(device)
                seg = G.stft.hop * (16 - 1) if quick else G.segment_samples
                opt = lambda m: torch.optim.AdamW(m.parameters(), lr=5e-4, betas=(0.8, 0.99))  # noqa: E731
                ctx = StepContext(G, D, opt(G), opt(D), G.stft, LossWeights(), device, 1, pool,
                                  bf16=precision == "bf16")
                g = torch.Generator().manual_seed(0)
                clean = 0.1 * torch.randn(batch, seg, generator=g)
                data = {"clean": clean, "noisy": clean + 0.05 * torch.randn(batch, seg, generator=g)}
                try:
                    out = train_step(ctx, data)  # warm-up (kernel selection, allocator)
                    _sync(device)
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        out = train_step(ctx, data)
                    _sync(device)
                    rate = steps / (time.perf_counter() - t0)
                    ok = all(torch.isfinite(torch.tensor(out[k])) for k in ("loss_g", "loss_d"))
                    rows.append(("step", f"{name} {precision} b{batch} x {seg / 16000:.2f} s",
                                 f"{rate:.2f} steps/s, loss_g {out['loss_g']:.3f}", ok))
                except Exception as e:  # report, go on with the next model
                    rows.append(("step", f"{name} {precision}", f"{type(e).__name__}: {e}"[:200], False))
                del G, D, ctx
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


# ----- 3. preemption and resume on the device -----------------------------------------------------
_STEP_LINE = re.compile(r"step (\d+)/\d+\s+loss_g ([-\d.naninf]+)\s+loss_d ([-\d.naninf]+)")


def _losses(workdir: Path) -> dict[int, tuple[str, str]]:
    out = {}
    for line in (workdir / "logs" / "rank-0.log").read_text().splitlines():
        m = _STEP_LINE.search(line)
        if m:
            out[int(m.group(1))] = (m.group(2), m.group(3))  # the last run's value of a step wins
    return out


def _run(cfg: Path, workdir: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "training.run", "--config", str(cfg), "--workdir", str(workdir)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, what: str, expect: int) -> None:
    _, err = p.communicate(timeout=600)
    if p.returncode != expect:
        raise RuntimeError(f"{what} exited {p.returncode} (expected {expect}): {err[-800:]}")


def part_resume(device: torch.device, quick: bool, tmp: Path) -> tuple[list[tuple], Path | None]:
    from sharding.recipes.demo import prepare_demo
    from training.checkpoint import MARKER, load_file
    from training.preempt import EXIT_PREEMPTED

    corpus = tmp / "corpus"
    prepare_demo(corpus, speech="procedural", train_clips=8, valid_clips=1, test_clips=0, shard_samples=4,
                 min_seconds=1.0, max_seconds=1.5)
    steps = 4 if quick else 8
    raw = {"name": "gpu-check", "model": {"name": "rwsa-xs", "options": TINY["rwsa"] if quick else {}},
           "data": {"train": str(corpus / "train"), "valid": None, "segment_samples": 1800 if quick else 16256,
                    "batch_size": 2},
           "trainer": {"max_steps": steps, "ckpt_every": 2, "log_every": 1, "pesq_workers": 0, "num_threads": 1,
                       "device": str(device.type), "deterministic": True},
           "mlflow": {"enabled": False}}
    cfg = tmp / "resume.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    # deterministic cuBLAS needs a fixed workspace (the runs use trainer.deterministic=true)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    straight, resumed = tmp / "straight", tmp / "resumed"
    reference = _run(cfg, straight, env)  # both at once (each is one thread on CPU; one GPU holds both)
    p = _run(cfg, resumed, env)
    t0 = time.time()
    while not (resumed / "checkpoints" / "step-000002" / MARKER).exists():
        if p.poll() is not None or time.time() - t0 > 600:
            raise RuntimeError("the run to be preempted ended (or hung) before its first checkpoint")
        time.sleep(0.05)
    p.send_signal(signal.SIGUSR1)
    _finish(p, "preempted run", EXIT_PREEMPTED)
    _finish(reference, "uninterrupted run", 0)
    stopped = json.loads((resumed / "progress.json").read_text())["step"]
    _finish(_run(cfg, resumed, env), "resumed run", 0)
    a, b = _losses(straight), _losses(resumed)
    same_losses = sorted(a) == sorted(b) == list(range(1, steps + 1)) and a == b
    final = f"checkpoints/step-{steps:06d}/state.pt"
    sa, sb = load_file(straight / final), load_file(resumed / final)
    diff = max(float((sa[p_][k].float() - sb[p_][k].float()).abs().max())
               for p_ in ("generator", "discriminator") for k in sa[p_])
    rows = [("resume", f"SIGUSR1 at step {stopped}/{steps} on {device.type}, exit 75, rerun",
             f"losses {'equal' if same_losses else 'DIFFER'} at {len(b)} steps", same_losses),
            ("resume", "final G/D weights vs uninterrupted", f"max |diff| {diff:.2e}",
             diff == 0.0 if device.type == "cpu" else diff < 1e-4)]
    return rows, straight / "checkpoints" / f"step-{steps:06d}"


# ----- 2. CPU vs device forward parity --------------------------------------------------------------
def _load_generator(folder: Path, device: torch.device) -> torch.nn.Module:
    """The generator of a trainer checkpoint on `device`, loaded as `orchestrate enhance` loads it."""
    from training.evaluation.inference import load_generator

    return load_generator(folder, device).model


def part_parity(device: torch.device, checkpoint: Path) -> list[tuple]:
    g = torch.Generator().manual_seed(1)
    t = torch.arange(16000) / 16000
    noisy = (0.3 * torch.sin(2 * torch.pi * 200 * t) + 0.05 * torch.randn(16000, generator=g))[None]
    outs = []
    for dev in (torch.device("cpu"), device):
        model = _load_generator(checkpoint, dev)
        with torch.no_grad():
            outs.append(model.enhance(noisy.to(dev)).float().cpu())
    rel = float((outs[0] - outs[1]).abs().max() / outs[0].abs().max().clamp_min(1e-12))
    return [("parity", f"checkpoint {checkpoint.name}: cpu vs {device}, 1 s clip", f"max rel diff {rel:.2e}",
             rel < 1e-3)]


# ----- 4. mamba-ssm kernels against the torch scan ----------------------------------------------------
def part_kernels(device: torch.device, quick: bool) -> list[tuple]:
    from training.mamba import kernels, scan

    k = kernels.load()
    v = kernels.versions()
    what = f"mamba-ssm {v['mamba_ssm']}, causal-conv1d {v['causal_conv1d']}"
    if device.type != "cuda":
        return [("kernels", what, f"skipped: {device.type} (the kernels are GPU only)", True)]
    if not k.available:
        return [("kernels", what, f"NOT USABLE: {k.error}", False)]
    b, d, n, length = (2, 64, 16, 201) if quick else (4, 128, 16, 401)
    g = torch.Generator().manual_seed(0)

    def inputs():
        x = {"u": torch.randn(b, d, length, generator=g), "delta": torch.randn(b, d, length, generator=g) * 0.5,
             "A": -torch.rand(d, n, generator=g) - 0.5, "B": torch.randn(b, n, length, generator=g),
             "C": torch.randn(b, n, length, generator=g), "D": torch.randn(d, generator=g),
             "z": torch.randn(b, d, length, generator=g), "delta_bias": torch.randn(d, generator=g) * 0.1}
        return {kk: vv.to(device).requires_grad_(True) for kk, vv in x.items()}

    x = inputs()
    order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    results = {}
    for name, fn in (("kernel", k.selective_scan_fn), ("torch", scan.selective_scan_torch)):
        xs = {kk: vv.detach().clone().requires_grad_(True) for kk, vv in x.items()}
        y = fn(*(xs[o] for o in order), True)
        y.square().sum().backward()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            fn(*(xs[o] for o in order), True).square().sum().backward()
        _sync(device)
        results[name] = (y.detach(), {kk: vv.grad for kk, vv in xs.items()}, (time.perf_counter() - t0) / 3)
    (yk, gk, tk), (yt, gt, tt) = results["kernel"], results["torch"]
    rel = lambda a, r: float((a - r).abs().max() / r.abs().max().clamp_min(1e-12))  # noqa: E731
    worst = max(rel(gk[o], gt[o]) for o in order)
    return [("kernels", f"{what}: selective_scan_fn vs torch scan [{b},{d},{length}]",
             f"fwd rel {rel(yk, yt):.1e}, grads rel {worst:.1e}", rel(yk, yt) < 1e-3 and worst < 1e-2),
            ("kernels", "fwd+bwd time kernel / torch", f"{1e3 * tk:.2f} ms / {1e3 * tt:.1f} ms", True)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (also ROCm) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny models and runs (CI on CPU)")
    ap.add_argument("--batch", type=int, default=2, help="segments per step in part 1")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per model and precision")
    ap.add_argument("--models", nargs="*", default=None, help="part 1 models (default: every generator)")
    ap.add_argument("--parts", nargs="*", default=["step", "resume", "parity", "kernels"])
    args = ap.parse_args(argv)
    from training import device as device_policy
    from training import distributed

    device = distributed.pick_device(args.device, distributed.DistEnv())
    device_policy.numerics(device, deterministic=False, tf32=False)  # fp32 means fp32 (cuDNN's TF32 off)
    torch.set_num_threads(1 if args.quick else torch.get_num_threads())
    facts = device_policy.runtime_facts(device, 1)
    print("# gpu_check: " + device_policy.describe(facts), flush=True)
    t_start = time.time()
    rows: list[tuple] = []
    steps = args.steps or (1 if args.quick else 10)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        checkpoint = None
        if "step" in args.parts:
            rows += part_step(device, args.quick, args.batch, steps, args.models)
        if "resume" in args.parts or "parity" in args.parts:
            try:
                r, checkpoint = part_resume(device, args.quick, Path(tmp))
                rows += r if "resume" in args.parts else []
            except Exception as e:
                rows.append(("resume", "preempt + resume", f"{type(e).__name__}: {e}"[:300], False))
        if "parity" in args.parts and checkpoint is not None:
            rows += part_parity(device, checkpoint)
        if "kernels" in args.parts:
            rows += part_kernels(device, args.quick)
    widths = [max(len(str(r[i])) for r in rows + [("part", "what", "result")]) for i in range(3)]
    line = lambda a, b, c, d: f"| {a:<{widths[0]}} | {b:<{widths[1]}} | {c:<{widths[2]}} | {d:<4} |"  # noqa: E731
    print(line("part", "what", "result", "ok"))
    print(f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|{'-' * (widths[2] + 2)}|------|")
    for part, what, result, ok in rows:
        print(line(part, what, result, "ok" if ok else "FAIL"))
    print(f"# {len(rows)} rows, {sum(not r[3] for r in rows)} failed, {time.time() - t_start:.0f} s")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
