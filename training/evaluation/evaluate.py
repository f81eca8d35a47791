"""Evaluate an enhancer on a test set: enhance every file, score enhanced and noisy input, write reports.

Outputs in ``out_dir``: ``<name>.csv`` (one row per file: ``key``, ``status``, ``noisy_<metric>``,
``enhanced_<metric>``, ``errors``) and ``<name>.json`` (the summary below), both written atomically.

``status`` is ``ok`` (every metric defined on both sides: counted in every mean), ``excluded`` (scored,
but some metric is undefined for it, e.g. a silent clean reference: left out of *every* mean, so all
means are over the same files) or ``failed`` (could not be read, paired or enhanced; no scores).

Summary (also the return value)::

    {"testset": name, "n": files, "scored": ok files (the means' files), "excluded": count,
     "failed_files": count, "noisy": {metric: mean}, "enhanced": {metric: mean},
     "failed": {"noisy": {metric: count}, "enhanced": {metric: count}},   # undefined values per metric
     "problems": [{"key", "status", "reason"}, ...]}                      # every excluded/failed file

One bad file never stops the others; the caller reports ``failed_files`` (``orchestrate evaluate``
exits 3 then, see docs/contracts.md). With ``save_audio_dir``, each enhanced file is written as
``<key>.wav`` inside it; a key that would name a file outside it (absolute, ``..``: a hostile test set's
tar member; `common.safe_names`) or is too long for a file name is that file's failure: nothing written,
the reason in ``problems``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_text
from common.safe_names import safe_join
from training.evaluation.metrics import (
    DEFAULT_METRICS,
    DNSMOS_METRICS,
    check_metric_names,
    dnsmos_available,
    evaluate_pairs,
)
from training.evaluation.testsets import TestSet

EnhanceFn = Callable[[np.ndarray], np.ndarray]
log = logging.getLogger(__name__)


def _file_name(testset_name: str) -> str:
    return testset_name.replace("/", "_").replace(" ", "_") or "testset"


def unavailable_metrics_problem(metrics: Sequence[str]) -> str | None:
    """One line naming the optional package a requested metric needs and how to install it; None when
    every metric can be computed here. Checked before any work (job start, ``orchestrate evaluate``)."""
    if any(m in DNSMOS_METRICS for m in check_metric_names(metrics)) and not dnsmos_available():
        return ("dnsmos needs the optional DNSMOS models, not installed here: pip install 'se-orchestrator[dnsmos]' "
                "(speechmos, onnxruntime, librosa)")
    return None


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
    from common.audio import AudioFileError, write_wav

    out_dir = Path(out_dir)
    name = testset.name
    metrics = check_metric_names(metrics)
    order: list[tuple[str, str | None]] = []  # (key, failure reason or None), in test-set order

    def both_pairs() -> Iterator[tuple[str, np.ndarray | None, np.ndarray]]:
        """(noisy, enhanced) per utterance, interleaved: one pass, nothing kept for later."""
        for key, noisy, clean, error in testset.entries():
            if limit is not None and len(order) >= limit:
                break
            if error is None:
                try:
                    enhanced = enhance(noisy)
                    if not np.all(np.isfinite(enhanced)):
                        raise AudioFileError(f"{key}: the model produced non-finite output")
                    if save_audio_dir is not None:  # the key came from data: never a path out of the folder
                        write_wav(safe_join(save_audio_dir, f"{key}.wav", name, "sample key"), enhanced)
                except (ValueError, RuntimeError) as e:  # this file only; OSError (disk) stops the run
                    error = " ".join(str(e).split()) or type(e).__name__
            if error is not None:
                log.warning("%s: %s", key, error)
                order.append((key, error))
                continue
            order.append((key, None))
            yield key, clean, noisy
            yield key, clean, enhanced

    total = len(testset) if limit is None else min(limit, len(testset))
    rows = evaluate_pairs(both_pairs(), num_workers=num_workers, metrics=metrics, progress=progress,
                          total=2 * total)
    scored = iter(zip(rows[0::2], rows[1::2], strict=True))
    records = []  # (key, status, noisy row, enhanced row, reason)
    for key, error in order:
        if error is not None:
            records.append((key, "failed", {}, {}, error))
            continue
        noisy, enh = next(scored)
        undefined = {f"{side}_{m}": side_row.get("errors", {}).get(m, "non-finite value")
                     for side, side_row in (("noisy", noisy), ("enhanced", enh))
                     for m in metrics if m in side_row and not _finite(side_row[m])}
        status = "excluded" if undefined else "ok"
        reason = "; ".join(f"{k}: {v}" for k, v in undefined.items())
        records.append((key, status, noisy, enh, reason))
    ok = [(n, e) for _, status, n, e, _ in records if status == "ok"]
    names = [m for m in metrics if any(m in r for _, _, n, e, _ in records for r in (n, e))]
    summary = {
        "testset": name,
        "n": len(records),
        "scored": len(ok),
        "excluded": sum(1 for r in records if r[1] == "excluded"),
        "failed_files": sum(1 for r in records if r[1] == "failed"),
        "noisy": {m: _mean([n[m] for n, _ in ok if m in n]) for m in names},
        "enhanced": {m: _mean([e[m] for _, e in ok if m in e]) for m in names},
        "failed": {side: {m: sum(1 for r in records if r[1] != "failed" and m in r[i] and not _finite(r[i][m]))
                          for m in names} for side, i in (("noisy", 2), ("enhanced", 3))},
        "problems": [{"key": k, "status": st, "reason": why} for k, st, _, _, why in records if st != "ok"],
    }
    stem = _file_name(name)
    atomic_write_text(out_dir / f"{stem}.csv", _rows_csv(records, names))
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(_json_safe(summary), indent=2) + "\n")
    return summary


def _finite(value) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _rows_csv(records: list[tuple], names: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["key", "status"] + [f"noisy_{m}" for m in names] + [f"enhanced_{m}" for m in names]
                    + ["errors"])
    for key, status, noisy, enh, reason in records:
        writer.writerow([key, status] + [_fmt(noisy.get(m)) for m in names] + [_fmt(enh.get(m)) for m in names]
                        + [reason or ""])
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
    out: dict[str, float] = {f"eval/{name}/n": float(summary["n"]), f"eval/{name}/scored": float(summary["scored"]),
                             f"eval/{name}/failed_files": float(summary["failed_files"])}
    for side in ("noisy", "enhanced"):
        for metric, value in summary[side].items():
            if value is not None and math.isfinite(value):
                out[f"eval/{name}/{side}/{metric}"] = float(value)
    for metric, count in summary["failed"]["enhanced"].items():
        out[f"eval/{name}/failed/{metric}"] = float(count)
    return out
