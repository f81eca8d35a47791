"""`orchestrate evaluate` and `orchestrate enhance` as library functions.

evaluate: checkpoint/run dir + test sets → per-file CSV + summary JSON under ``out_dir`` and the
metrics logged to the run's MLflow run (``eval/NAME/...``, see docs/contracts.md).
enhance: checkpoint + audio files/folders → 16 kHz (or input-rate) WAV files, with the real-time factor.
"""

from __future__ import annotations

import logging
from pathlib import Path

from orchestrator.errors import UserError
from training.audio_io import AUDIO_EXTENSIONS, audio_info, read_audio, to_mono_16k, write_wav
from training.evaluate import evaluate_testset, mlflow_metrics
from training.inference import Enhancer, LoadedModel, load_generator
from training.segment_eval import SegmentEnhancer, resolve_mode
from training.testsets import open_testset

log = logging.getLogger(__name__)


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
    """Evaluate one checkpoint on each test set; returns the summaries (training.evaluate format).
    ``eval_mode`` (default: the run config's ``eval.mode``) picks how files are enhanced
    (`training.segment_eval`)."""
    loaded = load_generator(checkpoint)
    cfg = loaded.config
    metrics = metrics or list(cfg.eval.metrics)
    mode = resolve_mode(eval_mode or cfg.eval.mode, cfg.model.name, validation=False)
    if mode == "rwsa_segments":
        enhancer = SegmentEnhancer(loaded.model)
    elif mode == "whole":
        enhancer = Enhancer(loaded.model, chunk_seconds=1e9, overlap_seconds=0.0)
    else:
        enhancer = Enhancer(
            loaded.model,
            chunk_seconds=chunk_seconds if chunk_seconds is not None else cfg.eval.chunk_seconds,
            overlap_seconds=overlap_seconds if overlap_seconds is not None else cfg.eval.overlap_seconds,
        )
    if name is not None and len(testsets) > 1:
        raise UserError("--name: give one test set when naming it")
    opened = [open_testset(p, name=name) for p in testsets]  # fail on a bad folder before any work
    out_dir = Path(out_dir) if out_dir else _default_eval_dir(loaded)
    summaries = []
    for ts in opened:
        log.info("evaluating %s on %s (%d files)", loaded.checkpoint, ts.name, len(ts))
        audio_dir = out_dir / f"{ts.name.replace('/', '_')}_enhanced" if save_audio else None
        summary = evaluate_testset(enhancer.enhance, ts, out_dir, metrics=metrics, num_workers=num_workers,
                                   save_audio_dir=audio_dir, limit=limit)
        summary["rtf"] = enhancer.rtf
        summary["checkpoint"] = str(loaded.checkpoint)
        summary["step"] = loaded.step
        summaries.append(summary)
        if log_mlflow:
            _log_to_mlflow(loaded, summary, out_dir, tracking_uri)
    return summaries


def _default_eval_dir(loaded: LoadedModel) -> Path:
    ckpt = loaded.checkpoint
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt
    return run_dir / "eval"


def _log_to_mlflow(loaded: LoadedModel, summary: dict, out_dir: Path, tracking_uri: str | None) -> None:
    cfg = loaded.config
    run_id = loaded.mlflow_run_id
    run_dir = loaded.checkpoint.parent.parent
    if run_id is None and (run_dir / "mlflow_run_id").is_file():
        run_id = (run_dir / "mlflow_run_id").read_text().strip()
    if not cfg.mlflow.enabled or not run_id:
        log.warning("no MLflow run recorded for %s: evaluation not logged to MLflow", loaded.checkpoint)
        return
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri or cfg.mlflow.tracking_uri)
    client.log_batch(run_id, metrics=[
        mlflow.entities.Metric(k, v, _now_ms(), loaded.step) for k, v in mlflow_metrics(summary).items()
    ])
    stem = summary["testset"].replace("/", "_")
    for suffix in ("csv", "json"):
        client.log_artifact(run_id, str(out_dir / f"{stem}.{suffix}"), artifact_path="eval")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _collect_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise UserError(f"{p}: folder holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return files


def enhance_files(
    checkpoint: str | Path,
    inputs: list[str],
    out_dir: str | Path,
    *,
    chunk_seconds: float = 10.0,
    overlap_seconds: float = 0.5,
    keep_rate: bool = False,
) -> dict:
    """Enhance every audio file of ``inputs`` into ``out_dir``; returns {"files", "seconds", "rtf"}."""
    files = _collect_inputs(inputs)
    loaded = load_generator(checkpoint)
    enhancer = Enhancer(loaded.model, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds)
    out_dir = Path(out_dir)
    written = []
    for f in files:
        wav = read_audio(f)  # float32 mono 16 kHz
        enhanced = enhancer.enhance(wav)
        rate = 16000
        if keep_rate:
            rate = audio_info(f).samplerate
            enhanced = to_mono_16k(enhanced, 16000, target_sr=rate)
        target = out_dir / (f.stem + ".wav")
        write_wav(target, enhanced, sr=rate)
        written.append(target)
        log.info("%s -> %s (%.1f s)", f, target, wav.shape[0] / 16000)
    return {"files": [str(p) for p in written], "seconds": enhancer.seconds_audio, "rtf": enhancer.rtf}

