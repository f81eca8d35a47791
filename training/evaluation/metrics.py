"""Speech-enhancement metrics, one implementation for validation and evaluation.

Definitions as the field computes them (``docs``: /work/shared/reference/models.md):

- ``pesq``: wide-band PESQ, ITU-T P.862.2 (``pesq`` package, mode 'wb', 16 kHz), MOS-LQO in [1.04, 4.64].
- ``estoi``: extended STOI, ``pystoi.stoi(clean, enhanced, 16000, extended=True)``; ``stoi``: the classic one.
- ``si_sdr``: alpha = <s_hat, s> / ||s||^2; 10 log10(||alpha s||^2 / ||alpha s - s_hat||^2) dB.
- ``ssnr``: segmental SNR, 30 ms Hann-like frames (0.5 (1 - cos(2 pi n / (N + 1))), n = 1..N), hop N/4,
  per frame 10 log10(E_s / (E_err + eps) + eps) clipped to [-10, 35] dB, mean over frames (the frame
  count ``int(len / hop - N / hop)`` of the widely used Loizou-derived Python code).
- ``dnsmos_sig`` / ``dnsmos_bak`` / ``dnsmos_ovrl``: reference-free DNSMOS P.835, only when the optional
  ``speechmos`` package is installed (``pip install .[dnsmos]``); the name ``dnsmos`` selects all three.

A metric that cannot be computed for a file gives NaN plus a one-line reason in ``MetricResult.errors``;
it never stops the other metrics or files. Nothing here imports torch, so worker processes start quickly.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import threading
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

SAMPLE_RATE = 16000
COMPOSITE_METRICS = ("csig", "cbak", "covl")  # Hu & Loizou 2008 (training.evaluation.composite)
REFERENCE_METRICS = ("pesq", "estoi", "stoi", "si_sdr", "ssnr") + COMPOSITE_METRICS
DNSMOS_METRICS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
ALL_METRICS = REFERENCE_METRICS + DNSMOS_METRICS
METRIC_GROUPS = {"dnsmos": DNSMOS_METRICS, "composite": COMPOSITE_METRICS}
DEFAULT_METRICS = ("pesq", "estoi", "si_sdr", "ssnr")

SSNR_FRAME_MS = 30.0
SSNR_MIN_DB = -10.0
SSNR_MAX_DB = 35.0
SSNR_EPS = 1e-10
# Enhanced and reference may differ by a few samples (iSTFT padding); more than this is a pairing error.
MAX_LENGTH_MISMATCH = 1600


class MetricError(ValueError):
    """Bad metric request (unknown metric name, wrong rank): one line naming what was expected."""


@dataclass
class MetricResult:
    """Scores of one file: ``values[name]`` is a float (NaN when it failed), ``errors[name]`` says why."""

    values: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Single metrics (float64 math on 1-D arrays of equal length)


def si_sdr(clean: np.ndarray, enhanced: np.ndarray) -> float:
    """Scale-invariant SDR in dB. NaN for a silent reference; +inf when the estimate is a scaled copy."""
    s = np.asarray(clean, dtype=np.float64)
    e = np.asarray(enhanced, dtype=np.float64)
    energy = float(np.dot(s, s))
    if energy == 0.0:
        return math.nan
    target = (float(np.dot(e, s)) / energy) * s
    residual = target - e
    num, den = float(np.dot(target, target)), float(np.dot(residual, residual))
    if den == 0.0:
        return math.inf if num > 0 else math.nan
    if num == 0.0:
        return -math.inf
    return 10.0 * math.log10(num / den)


def ssnr_window(frame_len: int) -> np.ndarray:
    """0.5 (1 - cos(2 pi n / (N + 1))) for n = 1..N (float64 [N])."""
    n = np.arange(1, frame_len + 1, dtype=np.float64)
    return 0.5 * (1.0 - np.cos(2.0 * np.pi * n / (frame_len + 1)))


def ssnr_frames(clean: np.ndarray, enhanced: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Per-frame clipped segmental SNR in dB, float64 [num_frames] (empty when shorter than two frames)."""
    s = np.asarray(clean, dtype=np.float64)
    e = np.asarray(enhanced, dtype=np.float64)
    frame_len = int(round(SSNR_FRAME_MS * sr / 1000.0))
    hop = frame_len // 4
    num_frames = int(s.shape[0] / hop - frame_len / hop)
    if num_frames <= 0:
        return np.zeros(0)
    win = ssnr_window(frame_len)
    s_frames = np.lib.stride_tricks.sliding_window_view(s, frame_len)[::hop][:num_frames]
    e_frames = np.lib.stride_tricks.sliding_window_view(e, frame_len)[::hop][:num_frames]
    snr = np.empty(num_frames)
    block = 2048  # frames at a time: memory stays bounded for hour-long files
    for i in range(0, num_frames, block):
        sw = s_frames[i : i + block] * win
        ew = e_frames[i : i + block] * win
        sig = np.sum(sw**2, axis=1)
        err = np.sum((sw - ew) ** 2, axis=1)
        snr[i : i + block] = 10.0 * np.log10(sig / (err + SSNR_EPS) + SSNR_EPS)
    return np.clip(snr, SSNR_MIN_DB, SSNR_MAX_DB)


def ssnr(clean: np.ndarray, enhanced: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Segmental SNR in dB: mean of :func:`ssnr_frames`; NaN when the signal is shorter than two frames."""
    frames = ssnr_frames(clean, enhanced, sr)
    return float(np.mean(frames)) if frames.size else math.nan


def pesq_wb(clean: np.ndarray, enhanced: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Wide-band PESQ (raises ``pesq.PesqError`` subclasses, e.g. NoUtterancesError, on failure)."""
    from pesq import pesq

    if sr != SAMPLE_RATE:
        raise MetricError(f"wide-band PESQ needs {SAMPLE_RATE} Hz audio, got {sr} Hz")
    return float(pesq(sr, np.asarray(clean), np.asarray(enhanced), "wb"))


def estoi(clean: np.ndarray, enhanced: np.ndarray, sr: int = SAMPLE_RATE, extended: bool = True) -> float:
    """Extended (or classic) STOI; raises ValueError when pystoi finds too few speech frames (where
    pystoi itself would warn and return 1e-5)."""
    from pystoi import stoi

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(np.asarray(clean), np.asarray(enhanced), sr, extended=extended))
    for w in caught:
        if "Not enough STFT frames" in str(w.message):
            raise ValueError("too few non-silent STFT frames for STOI")
    return value


def dnsmos_available() -> bool:
    """True when the optional ``speechmos`` package (DNSMOS ONNX models) can be imported."""
    try:
        import speechmos.dnsmos  # noqa: F401
    except Exception:
        return False
    return True


def dnsmos(enhanced: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, float]:
    """DNSMOS P.835 {'dnsmos_sig', 'dnsmos_bak', 'dnsmos_ovrl'} of one 16 kHz signal via ``speechmos``
    (ONNX models shipped in the package; clips under 9.01 s are repeated to that length, as DNSMOS does)."""
    from speechmos import dnsmos as _dnsmos

    # speechmos refuses samples outside [-1, 1]; clip as writing a 16-bit file would
    x = np.clip(np.asarray(enhanced, dtype=np.float32), -1.0, 1.0)
    out = _dnsmos.run(x, sr)
    return {"dnsmos_sig": float(out["sig_mos"]), "dnsmos_bak": float(out["bak_mos"]),
            "dnsmos_ovrl": float(out["ovrl_mos"])}


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
        from training.evaluation.composite import composite

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


def _watch_parent(parent_pid: int) -> None:
    """Worker side: exit when the parent dies (a killed trainer must not leave orphan workers)."""
    import time

    parent = mp.parent_process()
    if parent is not None and getattr(parent, "sentinel", None) is not None:
        parent.join()  # returns when the parent's sentinel pipe closes, i.e. the parent exited
        os._exit(1)
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(1)


def _worker_init(parent_pid: int, niceness: int = 0) -> None:
    import signal

    if niceness:
        os.nice(niceness)

    # The parent owns SIGINT and the preemption signals USR1/USR2/TERM (SLURM signals every process of
    # a step); a worker killed by them would break the pool in the middle of a step or an evaluation.
    # Workers exit when the parent closes the pool or dies.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def pool_context() -> mp.context.BaseContext:
    """'forkserver' on Linux (fork is unsafe once torch/CUDA threads exist in the parent), else 'spawn'."""
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def make_pool(num_workers: int, niceness: int = 0) -> ProcessPoolExecutor:
    """A process pool whose workers ignore SIGINT/SIGTERM and exit with their parent; ``niceness``
    lowers their CPU priority (background work that must not slow the process that feeds the GPU)."""
    return ProcessPoolExecutor(max_workers=num_workers, mp_context=pool_context(),
                               initializer=_worker_init, initargs=(os.getpid(), niceness))


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


# ----------------------------------------------------------------------------------------------------
# PESQ targets for the metric discriminator


def _pesq_many(clean: np.ndarray, est: np.ndarray) -> list[float]:
    """Worker: wb-PESQ of each row of clean/est [b, N]; NaN where PESQ fails."""
    from pesq import pesq

    out = []
    for c, e in zip(clean, est):
        try:
            out.append(float(pesq(SAMPLE_RATE, c, e, "wb")))
        except Exception:
            out.append(math.nan)
    return out


PESQ_NICENESS = 10  # PesqPool workers run below the training loop (bench_pesq_overlap.py --niceness)


class PesqPool:
    """A persistent process pool for per-step normalised PESQ, (PESQ - 1) / 3.5, of a batch.

    Create it once per training run and ``close()`` it at the end, or use it as a context manager;
    ``num_workers=0`` computes in this process. Workers start with 'forkserver' (or 'spawn'), so the
    program's main module must be import-safe (``if __name__ == "__main__":``), as for any such pool.
    """

    def __init__(self, num_workers: int | None = None):
        if num_workers is None:  # the CPUs this process may use (SLURM's allocation, not the node's)
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            num_workers = min(8, max(1, cpus))
        self.num_workers = int(num_workers)
        self._pool: ProcessPoolExecutor | None = None
        if self.num_workers > 0:
            self._pool = make_pool(self.num_workers, PESQ_NICENESS)
            for _ in range(self.num_workers):  # start the workers now, not during the first training step
                self._pool.submit(math.sqrt, 1.0)

    def _check(self, clean: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.ascontiguousarray(np.asarray(clean, dtype=np.float32))
        e = np.ascontiguousarray(np.asarray(est, dtype=np.float32))
        if c.ndim != 2 or c.shape != e.shape:
            raise MetricError(f"PesqPool expects clean and est of equal shape [B, N], got {c.shape} and {e.shape}")
        return c, e

    def submit(self, clean_batch: np.ndarray, est_batch: np.ndarray) -> PesqJob:
        """Start scoring [B, N] batches; ``.result()`` gives (scores [B], ok [B]). Lets PESQ overlap GPU work."""
        c, e = self._check(clean_batch, est_batch)
        if self._pool is None:
            return PesqJob([_done(_pesq_many(c, e))], c.shape[0])
        groups = np.array_split(np.arange(c.shape[0]), min(self.num_workers, c.shape[0]))
        try:
            futures = [self._pool.submit(_pesq_many, c[g], e[g]) for g in groups if g.size]
        except BrokenProcessPool:
            self._restart()
            return PesqJob([_done(_pesq_many(c, e))], c.shape[0])
        return PesqJob(futures, c.shape[0], fallback=(self, c, e))

    @property
    def executor(self) -> ProcessPoolExecutor | None:
        """The worker pool (None when ``num_workers=0``), e.g. for ``evaluate_pairs`` during validation."""
        return self._pool

    def normalized_pesq(self, clean_batch: np.ndarray, est_batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [B] = (PESQ - 1) / 3.5, NaN where not ok; ok bool [B]) for [B, N] batches."""
        return self.submit(clean_batch, est_batch).result()

    def _restart(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = make_pool(self.num_workers, PESQ_NICENESS)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> PesqPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _done(value: list[float]) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


class PesqJob:
    """Pending PESQ scores of one batch (see :meth:`PesqPool.submit`)."""

    def __init__(self, futures: list[Future], batch: int, fallback=None):
        self._futures = futures
        self._batch = batch
        self._fallback = fallback

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            raw = [v for fut in self._futures for v in fut.result()]
        except BrokenProcessPool:  # a worker died (OOM kill): restart the pool, score this batch here
            pool, c, e = self._fallback
            pool._restart()
            raw = _pesq_many(c, e)
        pesq_values = np.asarray(raw, dtype=np.float64)
        assert pesq_values.shape == (self._batch,)
        ok = np.isfinite(pesq_values)
        scores = np.where(ok, (pesq_values - 1.0) / 3.5, np.nan).astype(np.float32)
        return scores, ok
