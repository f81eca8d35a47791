"""Efficiency report (MambAttention paper Table VI): params, GFLOPs per 2 s, inference time per model.

For each model (a registered name, randomly initialised, or a checkpoint/run directory) the report
gives the parameter count, G-MACs for 2 s of 16 kHz audio counted two ways (``training.models.flops``:
``gflops`` every multiply-accumulate incl. the scan and attention; ``gflops_thop`` the papers'
thop convention), and the wall-clock inference time on a test set (or on ``clips`` synthetic 2 s
clips when no test set is given), with the real-time factor. Timing runs on this process's device
with ``torch.inference_mode``; the first utterance is a warm-up and not timed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from training.evaluation.inference import Enhancer, load_generator
from training.evaluation.testsets import open_testset
from training.models import build_model, list_models, model_info
from training.models.flops import model_gflops


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
    for i, (_key, wav) in enumerate(_utterances(testset, clips, limit)):
        if i == 0:
            enhancer.enhance(wav)  # warm-up (allocations, JIT); not timed
            continue
        t0 = time.perf_counter()
        enhancer.enhance(wav)
        seconds_wall += time.perf_counter() - t0
        seconds_audio += len(wav) / 16000
        files += 1
    row.update(files=files, audio_s=seconds_audio, inference_s=seconds_wall,
               rtf=seconds_wall / seconds_audio if seconds_audio else float("nan"))
    return row


def format_table(rows: list[dict]) -> str:
    head = f"{'model':34s} {'params':>10s} {'GFLOPs/2s':>10s} {'thop G':>8s} {'files':>6s} {'infer s':>9s} {'RTF':>7s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model'][:34]:34s} {r['params'] / 1e6:9.3f}M {r['gflops']:10.2f} {r['gflops_thop']:8.2f} "
                     f"{r['files']:6d} {r['inference_s']:9.2f} {r['rtf']:7.3f}")
    lines.append("GFLOPs/2s: every multiply-accumulate for 2 s of 16 kHz audio (G-MACs, the papers' unit); "
                 "thop G: the papers' thop convention on their input (RWSA-XS 9.22, MambAttention 65.52).")
    return "\n".join(lines)
