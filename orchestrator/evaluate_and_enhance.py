"""The library functions behind `orchestrate evaluate` and `orchestrate enhance`.

evaluate: checkpoint/run dir + test sets → per-file CSV + summary JSON under ``out_dir`` and the
metrics logged to the run's MLflow run (``eval/NAME/...``, see docs/contracts.md).
enhance: checkpoint + audio files/folders → 16 kHz (or input-rate) WAV files, with the real-time factor.
Both enhance with the run's protocol (``eval.mode``, overridable): `training.evaluation.protocol.enhancer_for`,
the function validation and the end-of-job evaluation use too.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from common.audio import (
    AUDIO_EXTENSIONS,
    AudioFileError,
    audio_info,
    fit_full_scale,
    read_audio,
    to_mono_16k,
    write_wav,
)
from common.progress import FileProgress
from common.rundir import (
    CHECKPOINTS_DIR,
    EXIT_SOME_FAILED,  # noqa: F401 (re-exported)
)
from orchestrator.errors import UserError
from training.config import ConfigError
from training.evaluation.evaluate import EnhancerSpec, evaluate_testset, unavailable_metrics_problem
from training.evaluation.file_record import evaluation_identity
from training.evaluation.inference import LoadedModel, load_generator
from training.evaluation.metrics import REFERENCE_METRICS, check_metric_names
from training.evaluation.protocol import enhancer_for
from training.evaluation.testsets import open_testset
from training.tracking import require_tracking

log = logging.getLogger(__name__)


FATAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def evaluate(
    checkpoint: str | Path,
    testsets: list[str],
    *,
    out_dir: str | Path | None = None,
    name: str | None = None,
    metrics: list[str] | None = None,
    num_workers: int = 2,
    chunk_seconds: float | None = None,
    overlap_seconds: float | None = None,
    tracking_uri: str | None = None,
    log_mlflow: bool = True,
    limit: int | None = None,
    save_audio: bool = False,
    eval_mode: str | None = None,
) -> list[dict]:
    """Evaluate one checkpoint on each test set; returns the summaries (training.evaluation.evaluate format).
    ``eval_mode``, ``chunk_seconds``, ``overlap_seconds`` (default: the run config's ``eval`` values) pick
    how files are enhanced (`training.evaluation.protocol.enhancer_for`). ``num_workers`` >= 2: that many
    processes each load the model and enhance and score whole files; 1: enhanced here, scored meanwhile in
    one metric process (no second model load); 0: all in this process. Per-file
    results go to ``<name>.files.jsonl`` as they finish: rerun the same evaluation after an interruption
    and only the files not yet done are enhanced (`training.evaluation.file_record`).

    UserError before any work for ``limit`` < 1, for a test set without clean references when every
    requested metric needs one, and for an ``out_dir`` that is a file.
    """
    if limit is not None and limit < 1:
        raise UserError(f"--limit: expected >= 1 files, got {limit}")
    if out_dir is not None:
        check_out_dir(Path(out_dir))
    loaded = load_generator(checkpoint)
    cfg = loaded.config
    metrics = check_metric_names(metrics or list(cfg.eval.metrics))
    problem = unavailable_metrics_problem(metrics)
    if problem:
        raise UserError(f"--metrics: {problem}")
    enhancer = _enhancer(loaded, eval_mode, chunk_seconds, overlap_seconds)
    if name is not None and len(testsets) > 1:
        raise UserError("--name: give one test set when naming it")
    opened = [open_testset(p, name=name) for p in testsets]  # fail on a bad folder before any work
    for ts in opened:
        if not ts.has_reference and all(m in REFERENCE_METRICS for m in metrics):
            raise UserError(f"{ts.path}: no clean/ references, and every metric asked for ({', '.join(metrics)}) "
                            f"needs one; add clean/ or ask for reference-free metrics (--metrics dnsmos)")
    if log_mlflow and cfg.mlflow.enabled and loaded.mlflow_run_id:  # one line now, not a traceback minutes later
        require_tracking(tracking_uri or cfg.mlflow.tracking_uri, run_id=loaded.mlflow_run_id,
                         keys=[f"eval/{ts.name}/n" for ts in opened], opt_out="--no-mlflow")
    out_dir = Path(out_dir) if out_dir else _default_eval_dir(loaded)
    check_out_dir(out_dir)
    summaries = []
    for ts in opened:
        log.info("evaluating %s on %s (%d files)", loaded.checkpoint, ts.name, len(ts))
        audio_dir = out_dir / f"{ts.name.replace('/', '_')}_enhanced" if save_audio else None
        identity = evaluation_identity(loaded.checkpoint, loaded.step, enhancer, ts.path)
        spec = asdict(EnhancerSpec(str(loaded.checkpoint), eval_mode, chunk_seconds, overlap_seconds))
        summary = evaluate_testset(enhancer.enhance, ts, out_dir, metrics=metrics, num_workers=num_workers,
                                   save_audio_dir=audio_dir, limit=limit, identity=identity,
                                   enhancer_spec=spec if num_workers > 1 else None)
        summary["mode"] = enhancer.mode
        summary["checkpoint"] = str(loaded.checkpoint)
        summary["step"] = loaded.step
        summaries.append(summary)
        if log_mlflow:
            _log_to_mlflow(loaded, summary, out_dir, tracking_uri)
    return summaries


def _enhancer(loaded: LoadedModel, mode: str | None, chunk_seconds: float | None, overlap_seconds: float | None):
    """`enhancer_for` the loaded run; a chunking it cannot take is a UserError naming the options given."""
    try:
        return enhancer_for(loaded.model, loaded.config, mode=mode, chunk_seconds=chunk_seconds,
                            overlap_seconds=overlap_seconds)
    except ConfigError as e:
        given = [f"--{k} {v:g}" for k, v in (("chunk-seconds", chunk_seconds), ("overlap-seconds", overlap_seconds))
                 if v is not None]
        raise UserError(f"{' '.join(given) or 'the run config'} (else the run's eval.*): {e}") from None


def _default_eval_dir(loaded: LoadedModel) -> Path:
    ckpt = loaded.checkpoint
    run_dir = ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS_DIR else ckpt
    return run_dir / "eval"


def _log_to_mlflow(loaded: LoadedModel, summary: dict, out_dir: Path, tracking_uri: str | None) -> None:
    from training.evaluation.final_eval import log_summary

    cfg = loaded.config
    if not cfg.mlflow.enabled or not loaded.mlflow_run_id:
        log.warning("no MLflow run recorded for %s: evaluation not logged to MLflow", loaded.checkpoint)
        return
    # every file from an earlier record (the job's own evaluation, an interrupted run): the same numbers,
    # already in MLflow unless that run stopped before logging them
    reused = summary.get("resumed") == summary.get("n")
    log_summary(tracking_uri or cfg.mlflow.tracking_uri, loaded.mlflow_run_id, summary, out_dir, loaded.step,
                once=reused)


def _walk_audio(folder: Path, out_dir: Path) -> tuple[list[Path], list[tuple[str, str]], set[Path]]:
    """(audio files under ``folder``, (path, reason) of audio names that cannot be read, folders read).

    Symlinked subfolders are followed (each real folder once: a link loop ends there); ``out_dir`` is
    skipped when it lies inside; a link whose target is missing is reported, never skipped silently."""
    out_real = os.path.realpath(out_dir)
    files: list[Path] = []
    broken: list[tuple[str, str]] = []
    folders: set[Path] = set()
    seen: set[str] = set()
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen or real == out_real or real.startswith(out_real + os.sep):
            dirs[:] = []
            continue
        seen.add(real)
        folders.add(Path(real))
        for name in sorted(names):
            f = Path(top) / name
            if f.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            if f.is_file():
                files.append(f)
            elif f.is_symlink():
                broken.append((str(f), f"{f}: dangling symlink (its target {os.readlink(f)} does not exist)"))
            else:
                broken.append((str(f), f"{f}: not a regular file"))
        dirs.sort()
    return sorted(files), broken, folders


def _collect_inputs(inputs: list[str], out_dir: Path) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """((input file, output path relative to ``out_dir``) for every input, (path, reason) of the audio
    names found that cannot be read); UserError before any work.

    A folder is walked for ``AUDIO_EXTENSIONS`` (`_walk_audio`: symlinked subfolders followed, dangling
    links reported, ``out_dir`` skipped when it lies inside) and keeps its subfolders (``DIR/sub/a.wav``
    -> ``OUT/sub/a.wav``); a named file goes to ``OUT/<stem>.wav``. Inputs that would share an output
    (``a.wav`` and ``a.flac``) are written as ``<name>.wav`` (``a.wav.wav``, ``a.flac.wav``); an output
    that would replace an input is refused, and so is one that would replace an existing file in a
    folder the inputs are read from (``--out`` = the input's folder holding an unrelated ``rec.wav``).
    """
    found: list[tuple[Path, Path]] = []
    broken: list[tuple[str, str]] = []
    read_from: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files, bad, folders = _walk_audio(p, out_dir)
            if not files and not bad:
                raise UserError(f"{p}: folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            found.extend((f, f.relative_to(p)) for f in files)
            broken += bad
            read_from |= folders
        elif p.is_file():
            found.append((p, Path(p.name)))
            read_from.add(p.resolve().parent)
        elif p.is_symlink():
            broken.append((str(p), f"{p}: dangling symlink (its target {os.readlink(p)} does not exist)"))
        else:
            raise UserError(f"{p}: no such file or folder")
    by_target: dict[Path, list[int]] = {}
    for i, (_, rel) in enumerate(found):
        by_target.setdefault(rel.with_suffix(".wav"), []).append(i)
    pairs = []
    for f, rel in found:
        shared = len(by_target[rel.with_suffix(".wav")]) > 1
        pairs.append((f, rel.with_name(rel.name + ".wav") if shared else rel.with_suffix(".wav")))
    seen: dict[Path, Path] = {}
    inputs_resolved = {f.resolve(): f for f, _ in pairs}
    for f, rel in pairs:
        target = (out_dir / rel).resolve()
        if target in seen:
            raise UserError(f"{f} and {seen[target]} would both be written to {out_dir / rel}; "
                            f"enhance them into different --out folders")
        seen[target] = f
        if target in inputs_resolved:
            raise UserError(f"--out {out_dir}: would overwrite the input {inputs_resolved[target]}; "
                            f"choose an output folder that is not the input's")
        if target.parent in read_from and os.path.lexists(target):
            raise UserError(f"--out {out_dir}: would overwrite {out_dir / rel}, an existing file in the folder "
                            f"{f} is read from; choose an output folder that is not the input's")
    return pairs, broken


def check_out_dir(out_dir: Path) -> None:
    """``--out`` must be a folder (or not exist yet); UserError otherwise."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: is a file, expected a folder")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out_dir}: {parent} is a file, expected a folder")
            break


def enhance_files(
    checkpoint: str | Path,
    inputs: list[str],
    out_dir: str | Path,
    *,
    eval_mode: str | None = None,
    chunk_seconds: float | None = None,
    overlap_seconds: float | None = None,
    keep_rate: bool = False,
) -> dict:
    """Enhance every audio file of ``inputs`` into ``out_dir`` (see ``_collect_inputs`` for the names) with
    the run's protocol; ``eval_mode``, ``chunk_seconds``, ``overlap_seconds`` override the run config's.

    A file that cannot be read or enhanced (undecodable, NaN/Inf samples, a dangling symlink, a name too
    long for its output, ...) is reported and skipped; the others go on. Output louder than 16-bit full scale (a float input above 1.0) is scaled down to
    fit, with a warning, instead of being clipped. Returns ``{"files": [written], "failed": [(input,
    reason)], "scaled": [(input, gain_db)], "seconds", "rtf"}``.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    files, broken = _collect_inputs(inputs, out_dir)
    loaded = load_generator(checkpoint)
    enhancer = _enhancer(loaded, eval_mode, chunk_seconds, overlap_seconds)
    written, failed, scaled = [], list(broken), []
    with FileProgress("enhance", len(files), logger=log) as meter:
        for f, rel in files:
            meter.update(1, _enhance_one(f, out_dir / rel, enhancer, keep_rate, written, failed, scaled))
    return {"files": [str(p) for p in written], "failed": failed, "scaled": scaled,
            "seconds": enhancer.seconds_audio, "rtf": enhancer.rtf, "mode": enhancer.mode}


def _enhance_one(f: Path, target: Path, enhancer, keep_rate: bool, written: list, failed: list,
                 scaled: list) -> float:
    """Enhance file ``f`` into ``target`` (`enhance_files`), appending to its lists; seconds of audio."""
    try:
        wav = read_audio(f)  # float32 mono 16 kHz; AudioFileError for NaN/Inf or undecodable audio
        enhanced = enhancer.enhance(wav)
        rate = 16000
        if keep_rate:
            info = audio_info(f)  # back at the input's rate and exact length
            rate = info.samplerate
            enhanced = to_mono_16k(enhanced, 16000, target_sr=rate, length=info.frames)
        if not np.all(np.isfinite(enhanced)):
            raise AudioFileError(f"{f}: the model produced non-finite output; nothing written")
        enhanced, gain = fit_full_scale(enhanced)
        if gain != 1.0:
            db = 20 * math.log10(gain)
            log.warning("%s: output above full scale (the input peaks above 1.0): scaled by %.1f dB "
                        "instead of clipping", f, db)
            scaled.append((str(f), db))
        write_wav(target, enhanced, sr=rate)
    except OSError as e:
        if e.errno in FATAL_ERRNOS:
            raise  # a full or read-only disk fails every later file too: stop (one-line error)
        failed.append((str(f), f"{f}: {e.strerror or e}"))
        return 0.0
    except Exception as e:  # one bad file must not stop the batch: reported at the end
        reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        log.debug("enhancing %s failed", f, exc_info=True)
        failed.append((str(f), " ".join(reason.split())))
        return 0.0
    written.append(target)
    log.info("%s -> %s (%.1f s)", f, target, wav.shape[0] / 16000)
    return wav.shape[0] / 16000
