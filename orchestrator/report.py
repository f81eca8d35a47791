"""Efficiency report (MambAttention paper Table VI): params, GFLOPs per 2 s, inference time per model, and
the training time of a finished sweep in GPU-hours.

For each model (a registered name, randomly initialised, or a checkpoint/run directory) the report
gives the parameter count, G-MACs for 2 s of 16 kHz audio counted two ways (``training.models.flops``:
``gflops`` every multiply-accumulate incl. the scan and attention; ``gflops_thop`` the papers'
thop convention), and the wall-clock inference time on a test set (or on ``clips`` synthetic 2 s
clips when no test set is given), with the real-time factor. Timing runs on this process's device
with ``torch.inference_mode``; the first utterance is a warm-up and not timed.

Training time (``training_time_rows``): for each FINISHED run of a sweep, the wall-clock seconds of its
training windows, sum over the logged ``train/steps_per_s`` points of (steps since the previous point) /
rate -- validation and checkpoint time inside a window included, queueing, start-up and requeue gaps not
-- times its devices (``launcher.nodes`` x ``launcher.gpus_per_node``; CPU processes, ``nodes`` x ``nproc``,
for a run without GPUs): the paper's "wall clock time x number of GPUs". Per model (the rows of
``orchestrate compare``) the mean ± std over seeds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from common.progress import FileProgress
from orchestrator.errors import UserError
from training.evaluation.inference import Enhancer, load_generator
from training.evaluation.testsets import open_testset
from training.models import build_model, list_models, model_info
from training.models.flops import model_gflops

log = logging.getLogger(__name__)


def _load(spec: str) -> tuple[str, torch.nn.Module]:
    if spec in list_models():
        if model_info(spec).kind != "generator":
            raise ValueError(f"{spec}: not a generator")
        return spec, build_model(spec, seed=0).eval()
    if Path(spec).exists():
        loaded = load_generator(spec)
        return f"{loaded.config.model.name} ({spec})", loaded.model
    raise ValueError(f"{spec}: neither a registered model ({', '.join(list_models())}) nor a checkpoint path")


def _utterances(testset: str | None, clips: int, limit: int | None):
    if testset is None:
        rng = np.random.default_rng(0)
        for i in range(clips + 1):
            yield f"synthetic{i}", (0.1 * rng.standard_normal(32000)).astype(np.float32)
        return
    for i, (key, noisy, _clean) in enumerate(open_testset(testset)):
        if limit is not None and i > limit:
            break
        yield key, noisy


def efficiency_row(spec: str, testset: str | None = None, clips: int = 3, limit: int | None = None,
                   chunk_seconds: float = 10.0) -> dict:
    """One row of the efficiency table for ``spec`` (model name or checkpoint path)."""
    name, model = _load(spec)
    row = {"model": name, "params": sum(p.numel() for p in model.parameters()), **model_gflops(model)}
    enhancer = Enhancer(model, chunk_seconds=chunk_seconds, overlap_seconds=0.0)
    seconds_audio = seconds_wall = 0.0
    files = 0
    timed = clips if testset is None else max(len(open_testset(testset)) - 1, 0)  # the first is the warm-up
    with FileProgress(f"report efficiency {name}", timed if limit is None else min(limit, timed),
                      logger=log) as meter:
        for i, (_key, wav) in enumerate(_utterances(testset, clips, limit)):
            if i == 0:
                enhancer.enhance(wav)  # warm-up (allocations, JIT); not timed
                continue
            t0 = time.perf_counter()
            enhancer.enhance(wav)
            seconds_wall += time.perf_counter() - t0
            seconds_audio += len(wav) / 16000
            files += 1
            meter.update(1, len(wav) / 16000)
    row.update(files=files, audio_s=seconds_audio, inference_s=seconds_wall,
               rtf=seconds_wall / seconds_audio if seconds_audio else float("nan"))
    return row


def _text_table(head: str, body: list[str], note: str) -> str:
    """A fixed-width table: the head, a rule as wide, the body lines, a footnote."""
    return "\n".join([head, "-" * len(head), *body, note])


def format_table(rows: list[dict]) -> str:
    head = f"{'model':34s} {'params':>10s} {'GFLOPs/2s':>10s} {'thop G':>8s} {'files':>6s} {'infer s':>9s} {'RTF':>7s}"
    body = [f"{r['model'][:34]:34s} {r['params'] / 1e6:9.3f}M {r['gflops']:10.2f} {r['gflops_thop']:8.2f} "
            f"{r['files']:6d} {r['inference_s']:9.2f} {r['rtf']:7.3f}" for r in rows]
    return _text_table(head, body, "GFLOPs/2s: every multiply-accumulate for 2 s of 16 kHz audio (G-MACs, the "
                       "papers' unit); thop G: the papers' thop convention on their input (RWSA-XS 9.22, "
                       "MambAttention 65.52).")


def training_seconds(points) -> float:
    """Wall seconds of training from a run's ``train/steps_per_s`` history (MLflow Metric objects or
    (step, rate) pairs): each point's window is (its step - the previous point's step) / its rate."""
    pairs = sorted((int(p.step), float(p.value)) if hasattr(p, "step") else (int(p[0]), float(p[1])) for p in points)
    total, prev = 0.0, 0
    for step, rate in pairs:
        if step > prev and rate > 0:
            total += (step - prev) / rate
        prev = max(prev, step)
    return total


def run_devices(params: dict[str, str]) -> tuple[int, str]:
    """(count, kind) of a run's devices from its ``launcher.*`` params: GPUs, else CPU processes."""
    nodes = int(params.get("launcher.nodes", 1) or 1)
    gpus = int(params.get("launcher.gpus_per_node", 0) or 0)
    return (nodes * gpus, "GPU") if gpus else (nodes * int(params.get("launcher.nproc", 1) or 1), "CPU")


def training_time_rows(sweep: str, *, tracking_uri: str | None = None, experiment: str | None = None,
                       root: str = "runs") -> list[dict]:
    """Table VI's "Training Time" of a finished sweep, one row per model (module docstring):
    {"model", "seeds", "devices", "device", "steps", "wall_h": {mean, std}, "gpu_h": {mean, std}}."""
    from orchestrator.compare import model_labels, summarize, sweep_runs

    ref, client, _parent, runs = sweep_runs(sweep, tracking_uri=tracking_uri, experiment=experiment, root=root)
    runs = [r for r in runs if r.info.status == "FINISHED"]
    if not runs:
        raise UserError(f"sweep {ref.name}: no FINISHED runs at {ref.tracking_uri}")
    labels = model_labels(runs)
    grouped: dict[str, list[tuple[float, int, str, int]]] = {}
    for r in runs:
        history = client.get_metric_history(r.info.run_id, "train/steps_per_s")
        devices, kind = run_devices(r.data.params)
        steps = max((int(m.step) for m in history), default=0)
        grouped.setdefault(labels[r.info.run_id], []).append((training_seconds(history), devices, kind, steps))
    rows = []
    for label in sorted(grouped):
        items = grouped[label]
        wall = summarize([s / 3600 for s, _, _, _ in items])
        gpu = summarize([s * d / 3600 for s, d, _, _ in items])
        rows.append({"model": label, "seeds": len(items), "devices": max(d for _, d, _, _ in items),
                     "device": items[0][2], "steps": max(n for _, _, _, n in items),
                     "wall_h": {"mean": wall.mean, "std": wall.std}, "gpu_h": {"mean": gpu.mean, "std": gpu.std}})
    return rows


def format_training_time(sweep: str, rows: list[dict]) -> str:
    def stat(d: dict) -> str:
        return f"{d['mean']:.2f} ± {d['std']:.2f}" if d["std"] is not None else f"{d['mean']:.2f} ± -"

    head = f"{'model':34s} {'seeds':>5s} {'devices':>9s} {'steps':>9s} {'wall h':>15s} {'GPU-h':>15s}"
    body = [f"{r['model'][:34]:34s} {r['seeds']:5d} {r['devices']:5d} {r['device']:3s} {r['steps']:9d} "
            f"{stat(r['wall_h']):>15s} {stat(r['gpu_h']):>15s}" for r in rows]
    return f"Training time of sweep {sweep} (Table VI): mean ± std over seeds\n" + _text_table(
        head, body, "wall h: the training windows (steps / logged steps_per_s; validation and checkpoints "
        "included, queueing and requeue gaps not); GPU-h = wall h x devices (CPU processes for a run without GPUs).")
