"""One row per model for ``orchestrate models``: size, compute and CPU forward time."""

from __future__ import annotations

import time

import torch

from training.models.flops import flops_input, frames_per_2s, model_gflops
from training.models.registry import build_model, list_models, model_info


def describe_models(names: list[str] | None = None, time_forward: bool = True) -> list[dict]:
    """Rows ``{name, params, gflops, gflops_thop, cpu_forward_s, n_fft, hop, segment_samples, description}``.

    ``gflops``: full G-MACs per 2 s of 16 kHz audio (batch 1); ``gflops_thop``: the papers'
    convention on the papers' input (see ``training.models.flops``); ``cpu_forward_s``: wall time of
    one no-grad forward on 2 s at batch 1 in eval mode (None when ``time_forward`` is False).
    Unknown names raise ``UnknownModelError`` before any work.
    """
    names = list_models() if names is None else names
    infos = [model_info(n) for n in names]
    rows = []
    for name, info in zip(names, infos):
        model = build_model(name, seed=0).eval()
        row = {
            "name": name,
            "params": sum(p.numel() for p in model.parameters()),
            **model_gflops(model),
            "cpu_forward_s": None,
            "n_fft": info.stft.n_fft if info.stft else None,
            "hop": info.stft.hop if info.stft else None,
            "segment_samples": info.segment_samples,
            "description": info.description,
        }
        if time_forward:
            inputs = flops_input(model, frames_per_2s(model))
            with torch.no_grad():
                start = time.perf_counter()
                model(*inputs)
                row["cpu_forward_s"] = time.perf_counter() - start
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`describe_models` rows."""
    head = f"{'model':26s} {'params':>10s} {'GFLOPs/2s':>10s} {'GFLOPs(thop)':>13s} {'fwd CPU s':>10s}  stft"
    lines = [head, "-" * len(head)]
    for r in rows:
        t = "-" if r["cpu_forward_s"] is None else f"{r['cpu_forward_s']:.2f}"
        stft = f"{r['n_fft']}/{r['hop']}" if r["n_fft"] else "-"
        lines.append(
            f"{r['name']:26s} {r['params']:>10,d} {r['gflops']:>10.2f} {r['gflops_thop']:>13.2f} {t:>10s}  {stft}"
        )
    return "\n".join(lines)
