"""Metrics by name, one implementation for validation and evaluation: which exist, one file scored on
many of them (``compute_metrics``), many files in parallel (``evaluate_pairs``), means (``summarize``).

Names: ``pesq``, ``estoi``, ``stoi``, ``si_sdr``, ``ssnr`` (``training.evaluation.measures``), ``csig``,
``cbak``, ``covl`` (``training.evaluation.composite``; the name ``composite`` selects the three) and
``dnsmos_sig`` / ``dnsmos_bak`` / ``dnsmos_ovrl`` (the name ``dnsmos`` selects the three).

A metric that cannot be computed for a file gives NaN plus a one-line reason in ``MetricResult.errors``;
it never stops the other metrics or files. Nothing here imports torch, so worker processes start quickly.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from training.evaluation.composite import composite
from training.evaluation.measures import (
    SAMPLE_RATE,
    SSNR_FRAME_MS,
    MetricError,
    dnsmos,
    dnsmos_available,
    estoi,
    pesq_wb,
    si_sdr,
    ssnr,
)
from training.worker_pool import make_pool

COMPOSITE_METRICS = ("csig", "cbak", "covl")  # Hu & Loizou 2008 (training.evaluation.composite)
REFERENCE_METRICS = ("pesq", "estoi", "stoi", "si_sdr", "ssnr") + COMPOSITE_METRICS
DNSMOS_METRICS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
ALL_METRICS = REFERENCE_METRICS + DNSMOS_METRICS
METRIC_GROUPS = {"dnsmos": DNSMOS_METRICS, "composite": COMPOSITE_METRICS}
DEFAULT_METRICS = ("pesq", "estoi", "si_sdr", "ssnr")
# Enhanced and reference may differ by a few samples (iSTFT padding); more than this is a pairing error.
MAX_LENGTH_MISMATCH = 1600


@dataclass
class MetricResult:
    """Scores of one file: ``values[name]`` is a float (NaN when it failed), ``errors[name]`` says why."""

    values: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# One file, many metrics


def check_metric_names(metrics: Iterable[str]) -> tuple[str, ...]:
    """Validated metric names with groups expanded (``dnsmos`` -> the three DNSMOS scores), in order,
    without repeats: the keys the rows will have. Raises MetricError listing the known names."""
    names: list[str] = []
    unknown = []
    for m in metrics:
        for name in METRIC_GROUPS.get(m, (m,)):
            if name not in ALL_METRICS:
                unknown.append(name)
            elif name not in names:
                names.append(name)
    if unknown:
        raise MetricError(f"unknown metric(s) {unknown}; known: {list(ALL_METRICS) + list(METRIC_GROUPS)}")
    return tuple(names)


def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    from scipy.signal import resample_poly

    frac = Fraction(SAMPLE_RATE, int(sr))
    return resample_poly(x, frac.numerator, frac.denominator)


def _one_line(exc: BaseException) -> str:
    msg = exc.args[0] if exc.args else ""
    if isinstance(msg, bytes):
        msg = msg.decode(errors="replace")
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return " ".join(str(text).split())


def _as_1d(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise MetricError(f"{what} must be 1-D [N], got shape {tuple(a.shape)}")
    return a.astype(np.float64, copy=False)


class _Undefined(Exception):
    """The metric is not defined for this input (the message says why)."""


def _reference_metric(name: str, ref: np.ndarray, enh: np.ndarray, silent: bool, cache: dict | None = None) -> float:
    if silent and name in ("estoi", "stoi", "si_sdr") + COMPOSITE_METRICS:
        raise _Undefined("silent reference")
    if name in COMPOSITE_METRICS:  # the three share one computation per pair
        cache = {} if cache is None else cache
        if "composite" not in cache:
            cache["composite"] = composite(ref, enh)
        return cache["composite"][name]
    if name == "pesq":
        return pesq_wb(ref, enh)
    if name in ("estoi", "stoi"):
        return estoi(ref, enh, extended=name == "estoi")
    if name == "si_sdr":
        value = si_sdr(ref, enh)
        if value == math.inf:
            raise _Undefined("infinite: the estimate is an exact scaled copy of the reference")
        if value == -math.inf:
            raise _Undefined("-infinite: the estimate is orthogonal to the reference")
        return value
    value = ssnr(ref, enh)
    if math.isnan(value):
        raise _Undefined(f"too short: SSNR needs at least {5 * SSNR_FRAME_MS / 4:g} ms")
    return value


def compute_metrics(
    clean: np.ndarray | None,
    enhanced: np.ndarray,
    sr: int = SAMPLE_RATE,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> MetricResult:
    """Score one ``enhanced`` [N] signal against ``clean`` [N] (or None: reference metrics are skipped).

    Audio at another rate is resampled to 16 kHz first. Lengths may differ by up to
    ``MAX_LENGTH_MISMATCH`` samples (both are cut to the shorter); a larger mismatch, a silent reference
    or a library failure gives NaN with a reason for the metrics concerned.
    """
    names = check_metric_names(metrics)
    enh = _as_1d(enhanced, "enhanced")
    ref = None if clean is None else _as_1d(clean, "clean")
    if sr != SAMPLE_RATE:
        enh = _resample(enh, sr)
        ref = None if ref is None else _resample(ref, sr)
    result = MetricResult()

    def fail(name: str, reason: str) -> None:
        result.values[name] = math.nan
        result.errors[name] = reason

    ref_names = [m for m in names if m in REFERENCE_METRICS]
    pair_problem = None
    silent, enh_ref = False, enh
    if ref_names and ref is not None:
        if abs(ref.shape[0] - enh.shape[0]) > MAX_LENGTH_MISMATCH:
            pair_problem = f"length mismatch: clean {ref.shape[0]} vs enhanced {enh.shape[0]} samples"
        else:
            n = min(ref.shape[0], enh.shape[0])
            ref, enh_ref = ref[:n], enh[:n]
            if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(enh_ref))):
                pair_problem = "non-finite samples in clean or enhanced audio"
            silent = not np.any(ref)
    cache: dict = {}
    for name in ref_names:
        if ref is None:
            continue  # not applicable without a reference: the metric is left out, not failed
        if pair_problem:
            fail(name, pair_problem)
            continue
        try:
            value = _reference_metric(name, ref, enh_ref, silent, cache)
        except _Undefined as exc:
            fail(name, str(exc))
        except Exception as exc:  # a failing library call must not stop the other metrics
            fail(name, _one_line(exc))
        else:
            result.values[name] = value

    dns_names = [m for m in names if m in DNSMOS_METRICS]
    if dns_names:
        if not dnsmos_available():
            for name in dns_names:
                fail(name, "unavailable: the optional 'speechmos' package is not installed")
        else:
            try:
                scores = dnsmos(enh.astype(np.float32))
                for name in dns_names:
                    result.values[name] = scores[name]
            except Exception as exc:
                for name in dns_names:
                    fail(name, _one_line(exc))
    return result


# ----------------------------------------------------------------------------------------------------
# Many files, in parallel


def _score_row(key: str, clean: np.ndarray | None, enhanced: np.ndarray, sr: int,
               metrics: Sequence[str]) -> dict:
    res = compute_metrics(clean, enhanced, sr, metrics)
    return {"key": key, **res.values, "errors": res.errors}


def evaluate_pairs(
    pairs: Iterable[tuple[str, np.ndarray | None, np.ndarray]],
    num_workers: int = 0,
    metrics: Sequence[str] = DEFAULT_METRICS,
    sr: int = SAMPLE_RATE,
    progress: bool = True,
    total: int | None = None,
    executor: ProcessPoolExecutor | None = None,
) -> list[dict]:
    """Score ``(key, clean | None, enhanced)`` pairs; rows come back in input order.

    Each row is ``{"key": key, <metric>: float, ..., "errors": {metric: reason}}``. ``num_workers`` 0
    scores in this process; otherwise a process pool (``executor`` if given, e.g. ``PesqPool.executor``
    during validation, else a new one), with at most ``2 * num_workers`` pairs in flight so memory stays
    flat for long test sets. A progress bar is shown when ``progress`` and stderr is a tty.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    from tqdm import tqdm

    names = check_metric_names(metrics)
    if total is None and hasattr(pairs, "__len__"):
        total = len(pairs)  # type: ignore[arg-type]
    bar = tqdm(total=total, desc="metrics", unit="file", disable=not (progress and sys.stderr.isatty()))
    try:
        if num_workers <= 0 and executor is None:
            rows = []
            for key, clean, enh in pairs:
                rows.append(_score_row(key, clean, enh, sr, names))
                bar.update(1)
            return rows
        pool = executor if executor is not None else make_pool(num_workers)
        max_in_flight = 2 * max(num_workers, getattr(pool, "_max_workers", 1))
        results: dict[int, dict] = {}
        in_flight: dict[Future, int] = {}
        try:
            for index, (key, clean, enh) in enumerate(pairs):
                in_flight[pool.submit(_score_row, key, clean, enh, sr, names)] = index
                while len(in_flight) >= max_in_flight:
                    done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                    for fut in done:
                        results[in_flight.pop(fut)] = fut.result()
                        bar.update(1)
            for fut, index in in_flight.items():
                results[index] = fut.result()
                bar.update(1)
        finally:
            if executor is None:
                pool.shutdown(wait=True, cancel_futures=True)
        return [results[i] for i in range(len(results))]
    finally:
        bar.close()


@dataclass
class Summary:
    """Means over finite values, and per metric how many files were scored and how many failed."""

    means: dict[str, float]
    counts: dict[str, int]
    failed: dict[str, int]
    first_errors: dict[str, str]

    def flat(self, prefix: str = "") -> dict[str, float]:
        """{prefix+metric: mean, prefix+metric+'_failed': count} for a metrics logger."""
        out: dict[str, float] = {}
        for m, mean in self.means.items():
            out[f"{prefix}{m}"] = mean
            out[f"{prefix}{m}_failed"] = float(self.failed[m])
        return out


def summarize(rows: Iterable[dict]) -> Summary:
    """Mean of each metric over the rows where it is finite; failures are counted, not averaged."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    failed: dict[str, int] = {}
    first: dict[str, str] = {}
    for row in rows:
        errors = row.get("errors", {})
        for name, value in row.items():
            if name in ("key", "errors"):
                continue
            counts.setdefault(name, 0)
            failed.setdefault(name, 0)
            if isinstance(value, float | int) and math.isfinite(value):
                sums[name] = sums.get(name, 0.0) + float(value)
                counts[name] += 1
            else:
                failed[name] += 1
                first.setdefault(name, f"{row.get('key')}: {errors.get(name, 'non-finite value')}")
    means = {m: (sums[m] / counts[m] if counts[m] else math.nan) for m in counts}
    return Summary(means=means, counts=counts, failed=failed, first_errors=first)
