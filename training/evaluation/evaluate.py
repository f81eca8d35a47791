"""Evaluate an enhancer on a test set: enhance every file, score enhanced and noisy input, write reports.

Outputs in ``out_dir``: ``<name>.csv`` (one row per file: ``key``, ``status``, ``noisy_<metric>``,
``enhanced_<metric>``, ``errors``) and ``<name>.json`` (the summary below), both written atomically, and
with an ``identity`` the per-file record ``<name>.files.jsonl`` (`training.evaluation.file_record`) that
lets an interrupted evaluation resume.

``status`` is ``ok`` (every metric defined on both sides: counted in every mean), ``excluded`` (scored,
but some metric is undefined for it, e.g. a silent clean reference: left out of *every* mean, so all
means are over the same files) or ``failed`` (could not be read, paired or enhanced; no scores).

Summary (also the return value)::

    {"testset": name, "n": files, "scored": ok files (the means' files), "excluded": count,
     "failed_files": count, "noisy": {metric: mean}, "enhanced": {metric: mean},
     "failed": {"noisy": {metric: count}, "enhanced": {metric: count}},   # undefined values per metric
     "problems": [{"key", "status", "reason"}, ...],                      # every excluded/failed file
     "rtf": enhancement s per audio s, "resumed": files taken from the per-file record}

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
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import faults
from common.atomic import atomic_write_text
from common.safe_names import safe_join
from training.evaluation.metrics import (
    DEFAULT_METRICS,
    DNSMOS_METRICS,
    check_metric_names,
    dnsmos_available,
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
    enhance: EnhanceFn | None,
    testset: TestSet,
    out_dir: str | Path,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    num_workers: int = 2,
    save_audio_dir: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
    identity: dict | None = None,
    enhancer_spec: dict | None = None,
) -> dict:
    """Enhance and score every utterance of ``testset``; returns the summary (module docstring) plus
    ``rtf`` (enhancement seconds per second of audio, over this and any resumed session) and ``resumed``.

    Two ways to run: ``enhancer_spec`` (`EnhancerSpec` fields as a dict) starts ``num_workers`` processes
    that each load the model and enhance *and* score whole files, so enhancement and metrics overlap
    and use every core; else ``enhance`` runs here (a GPU, a stop check between files) and
    ``num_workers`` metric processes score (0: here). Either way the numbers are the same per file (to
    float rounding: the enhancement does not depend on the thread count, `training.stft.inverse_rms`).
    ``identity`` (what is evaluated: checkpoint, step, mode, ...) turns on the per-file record
    ``<stem>.files.jsonl`` (`training.evaluation.file_record`): finished files are kept as they finish
    and a rerun of the same evaluation enhances only the others. Progress: a bar on a terminal
    (``progress``), else `common.progress.FileProgress` log lines."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from tqdm import tqdm

    from common.progress import FileProgress
    from training.evaluation.file_record import FileRecord
    from training.worker_pool import make_pool

    out_dir = Path(out_dir)
    name = testset.name
    metrics = check_metric_names(metrics)
    stem = _file_name(name)
    total = len(testset) if limit is None else min(limit, len(testset))
    record = None
    if identity is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        record = FileRecord(out_dir / f"{stem}.files.jsonl", {**identity, "metrics": list(metrics)})
    resumed = dict(record.done) if record else {}
    if resumed:
        log.info("%s: %d file(s) already evaluated in %s; evaluating the rest", name, len(resumed), record.path)
    audio_dir = None if save_audio_dir is None else str(save_audio_dir)
    pool = None
    if enhancer_spec is not None:
        threads = max(1, len(os.sched_getaffinity(0)) // max(num_workers, 1))
        pool = make_pool(max(num_workers, 1), setup=_load_worker_enhancer, setup_args=(enhancer_spec, threads))
    elif num_workers > 0:
        pool = make_pool(num_workers)
    max_in_flight = 2 * max(num_workers, 1)
    entries: list[dict | None] = []  # per utterance, in test-set order
    in_flight: dict = {}
    reused = 0
    start_done = min(len(resumed), total)
    bar = tqdm(total=total, initial=start_done, desc=f"evaluate {name}", unit="file",
               disable=not (progress and sys.stderr.isatty()))
    meter = FileProgress(f"evaluate {name}", total, done=start_done, logger=log)

    def finish(index: int, entry: dict) -> None:
        entries[index] = entry
        if entry["error"] is not None:
            log.warning("%s: %s", entry["key"], entry["error"])
        if record is not None:
            record.add(entry)
            faults.point("eval.file_recorded")
        bar.update(1)
        meter.update(1, entry["seconds"])

    def collect(block_until: int) -> None:
        while len(in_flight) > block_until:
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for fut in done:
                finish(in_flight.pop(fut), fut.result())

    try:
        for key, noisy, clean, error in testset.entries():
            if limit is not None and len(entries) >= limit:
                break
            entries.append(resumed.get(key))
            index = len(entries) - 1
            if entries[index] is not None:
                reused += 1
                continue
            if error is not None:
                finish(index, _entry(key, error=error))
            elif enhancer_spec is not None:
                in_flight[pool.submit(_enhance_and_score, key, noisy, clean, metrics, audio_dir)] = index
            else:
                try:
                    t0 = time.perf_counter()
                    enhanced = _checked(key, enhance(noisy), audio_dir)
                    spent = time.perf_counter() - t0
                except (ValueError, RuntimeError) as e:  # this file only; OSError (disk) stops the run
                    finish(index, _entry(key, error=" ".join(str(e).split()) or type(e).__name__))
                    continue
                if pool is None:
                    finish(index, _score_file(key, clean, noisy, enhanced, metrics, spent))
                else:
                    in_flight[pool.submit(_score_file, key, clean, noisy, enhanced, metrics, spent)] = index
            collect(max_in_flight - 1)
        collect(0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if record is not None:
            record.close()
        bar.close()
        meter.close()
    records = []  # (key, status, noisy row, enhanced row, reason)
    for entry in entries:
        key, error = entry["key"], entry["error"]
        if error is not None:
            records.append((key, "failed", {}, {}, error))
            continue
        noisy, enh = entry["noisy"], entry["enhanced"]
        undefined = {f"{side}_{m}": side_row.get("errors", {}).get(m, "non-finite value")
                     for side, side_row in (("noisy", noisy), ("enhanced", enh))
                     for m in metrics if m in side_row and not _finite(side_row[m])}
        status = "excluded" if undefined else "ok"
        reason = "; ".join(f"{k}: {v}" for k, v in undefined.items())
        records.append((key, status, noisy, enh, reason))
    ok = [(n, e) for _, status, n, e, _ in records if status == "ok"]
    names = [m for m in metrics if any(m in r for _, _, n, e, _ in records for r in (n, e))]
    seconds = sum(e["seconds"] for e in entries if e["error"] is None)
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
        "rtf": sum(e["enhance_s"] for e in entries if e["error"] is None) / seconds if seconds else math.nan,
        "resumed": reused,
    }
    atomic_write_text(out_dir / f"{stem}.csv", _rows_csv(records, names))
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(_json_safe(summary), indent=2) + "\n")
    return summary


def _entry(key: str, *, error: str | None = None, noisy: dict | None = None, enhanced: dict | None = None,
           seconds: float = 0.0, enhance_s: float = 0.0) -> dict:
    """One file's result: a line of the per-file record (`training.evaluation.file_record`)."""
    return {"key": key, "error": error, "noisy": noisy or {}, "enhanced": enhanced or {}, "seconds": seconds,
            "enhance_s": enhance_s}


def _checked(key: str, enhanced: np.ndarray, audio_dir: str | None) -> np.ndarray:
    from common.audio import AudioFileError, write_wav

    if not np.all(np.isfinite(enhanced)):
        raise AudioFileError(f"{key}: the model produced non-finite output")
    if audio_dir is not None:  # the key came from data: never a path out of the folder
        write_wav(safe_join(audio_dir, f"{key}.wav", audio_dir, "sample key"), enhanced)
    return enhanced


def _score_file(key: str, clean: np.ndarray | None, noisy: np.ndarray, enhanced: np.ndarray,
                metrics: Sequence[str], enhance_s: float) -> dict:
    """Score one file's noisy input and enhanced output (a metric worker's task); its entry."""
    from training.evaluation.metrics import SAMPLE_RATE, _score_row

    return _entry(key, noisy=_score_row(key, clean, noisy, SAMPLE_RATE, metrics),
                  enhanced=_score_row(key, clean, enhanced, SAMPLE_RATE, metrics),
                  seconds=len(noisy) / SAMPLE_RATE, enhance_s=enhance_s)


_WORKER_ENHANCER = None  # an enhancement worker's enhancer (`_load_worker_enhancer`)


@dataclass(frozen=True)
class EnhancerSpec:
    """What an enhancement worker loads: `orchestrate evaluate`'s checkpoint and protocol overrides
    (`training.evaluation.protocol.enhancer_for`); passed to `evaluate_testset` as ``asdict(spec)``."""

    checkpoint: str
    mode: str | None = None
    chunk_seconds: float | None = None
    overlap_seconds: float | None = None


def _load_worker_enhancer(spec: dict, threads: int) -> None:
    """Worker setup: ``threads`` torch threads, the model of ``spec`` on the CPU."""
    import torch

    from training.evaluation.inference import load_generator
    from training.evaluation.protocol import enhancer_for

    global _WORKER_ENHANCER
    torch.set_num_threads(threads)
    loaded = load_generator(spec["checkpoint"])
    _WORKER_ENHANCER = enhancer_for(loaded.model, loaded.config, mode=spec.get("mode"),
                                    chunk_seconds=spec.get("chunk_seconds"),
                                    overlap_seconds=spec.get("overlap_seconds"))


def _enhance_and_score(key: str, noisy: np.ndarray, clean: np.ndarray | None, metrics: Sequence[str],
                       audio_dir: str | None) -> dict:
    """An enhancement worker's task: enhance one file, then score it; its entry."""
    try:
        t0 = time.perf_counter()
        enhanced = _checked(key, _WORKER_ENHANCER.enhance(noisy), audio_dir)
        spent = time.perf_counter() - t0
    except (ValueError, RuntimeError) as e:
        return _entry(key, error=" ".join(str(e).split()) or type(e).__name__)
    return _score_file(key, clean, noisy, enhanced, metrics, spent)


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
