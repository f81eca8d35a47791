"""Evaluate an enhancer on a test set: enhance every file, score enhanced and noisy input, write reports.

Outputs in ``out_dir``: ``<name>.csv`` (one row per file: ``key``, ``noisy_<metric>``,
``enhanced_<metric>``, ``errors``) and ``<name>.json`` (the summary below), both written atomically.

Summary (also the return value)::

    {"testset": name, "n": files, "noisy": {metric: mean}, "enhanced": {metric: mean},
     "failed": {"noisy": {metric: count}, "enhanced": {metric: count}}, "rtf": processing s / audio s}

A metric that cannot be computed for a file is NaN in the CSV with its reason, is counted in
``failed`` and left out of the mean; the other files and metrics go on.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from training.configtools import atomic_write_text
from training.metrics import DEFAULT_METRICS, check_metric_names, evaluate_pairs, summarize
from training.testsets import TestSet

EnhanceFn = Callable[[np.ndarray], np.ndarray]


def _file_name(testset_name: str) -> str:
    return testset_name.replace("/", "_").replace(" ", "_") or "testset"


def evaluate_testset(
    enhance: EnhanceFn,
    testset: TestSet,
    out_dir: str | Path,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    num_workers: int = 2,
    save_audio_dir: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> dict:
    """Enhance and score every utterance of ``testset``; returns the summary (module docstring)."""
    from training.audio_io import write_wav

    out_dir = Path(out_dir)
    name = testset.name
    metrics = check_metric_names(metrics)
    keys: list[str] = []

    def both_pairs() -> Iterator[tuple[str, np.ndarray | None, np.ndarray]]:
        """(noisy, enhanced) per utterance, interleaved: one pass, nothing kept for later."""
        for i, (key, noisy, clean) in enumerate(testset):
            if limit is not None and i >= limit:
                break
            enhanced = enhance(noisy)
            if save_audio_dir is not None:
                write_wav(Path(save_audio_dir) / f"{key}.wav", enhanced)
            keys.append(key)
            yield key, clean, noisy
            yield key, clean, enhanced

    total = len(testset) if limit is None else min(limit, len(testset))
    rows = evaluate_pairs(both_pairs(), num_workers=num_workers, metrics=metrics, progress=progress,
                          total=2 * total)
    noisy_rows, enhanced_rows = rows[0::2], rows[1::2]
    noisy_sum, enh_sum = summarize(noisy_rows), summarize(enhanced_rows)
    summary = {
        "testset": name,
        "n": len(keys),
        "noisy": noisy_sum.means,
        "enhanced": enh_sum.means,
        "failed": {"noisy": noisy_sum.failed, "enhanced": enh_sum.failed},
    }
    stem = _file_name(name)
    atomic_write_text(out_dir / f"{stem}.csv", _rows_csv(noisy_rows, enhanced_rows, metrics))
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(_json_safe(summary), indent=2) + "\n")
    return summary


def _rows_csv(noisy_rows: list[dict], enhanced_rows: list[dict], metrics: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    names = [m for m in metrics if any(m in r for r in enhanced_rows + noisy_rows)]
    writer.writerow(["key"] + [f"noisy_{m}" for m in names] + [f"enhanced_{m}" for m in names] + ["errors"])
    for noisy, enh in zip(noisy_rows, enhanced_rows, strict=True):
        errors = {f"noisy_{k}": v for k, v in noisy.get("errors", {}).items()}
        errors.update({f"enhanced_{k}": v for k, v in enh.get("errors", {}).items()})
        writer.writerow(
            [enh["key"]]
            + [_fmt(noisy.get(m)) for m in names]
            + [_fmt(enh.get(m)) for m in names]
            + ["; ".join(f"{k}: {v}" for k, v in errors.items())]
        )
    return buf.getvalue()


def _fmt(value) -> str:
    if value is None:
        return ""
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.6g}"


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def mlflow_metrics(summary: dict) -> dict[str, float]:
    """The summary under the MLflow naming contract: ``eval/NAME/{noisy,enhanced}/<metric>``."""
    name = summary["testset"]
    out: dict[str, float] = {f"eval/{name}/n": float(summary["n"])}
    for side in ("noisy", "enhanced"):
        for metric, value in summary[side].items():
            if value is not None and math.isfinite(value):
                out[f"eval/{name}/{side}/{metric}"] = float(value)
    for metric, count in summary["failed"]["enhanced"].items():
        out[f"eval/{name}/failed/{metric}"] = float(count)
    return out
