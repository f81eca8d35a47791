"""Library side of `orchestrate analyze`: figure files from a checkpoint and test sets, logged to MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

from orchestrator.errors import UserError
from training.analysis import latent_vector, spectrogram_png, tsne_png
from training.inference import Enhancer, LoadedModel, load_generator
from training.testsets import open_testset

log = logging.getLogger(__name__)


def spectrogram_figures(checkpoint, testset: str, out_dir, *, keys: list[str] | None = None, first: int = 2,
                        log_mlflow: bool = True) -> list[Path]:
    """One noisy/clean/enhanced PNG per chosen utterance (``keys``, else the first ``first``)."""
    loaded = load_generator(checkpoint)
    ts = open_testset(testset)
    enhancer = Enhancer(loaded.model, loaded.config.eval.chunk_seconds, loaded.config.eval.overlap_seconds)
    wanted = set(keys) if keys else None
    paths: list[Path] = []
    found: set[str] = set()
    for key, noisy, clean in ts:
        if wanted is not None and key not in wanted:
            continue
        signals = {"noisy": noisy}
        if clean is not None:
            signals["clean"] = clean
        signals["enhanced"] = enhancer.enhance(noisy)
        found.add(key)
        paths.append(spectrogram_png(Path(out_dir) / f"spectrogram_{ts.name.replace('/', '_')}_{key}.png", signals,
                                     title=f"{key} ({loaded.config.model.name}, step {loaded.step})"))
        if wanted is None and len(paths) >= first:
            break
    if wanted is not None and wanted - found:
        raise UserError(f"{testset}: no utterance named {', '.join(sorted(wanted - found))}")
    _log(loaded, paths, log_mlflow)
    return paths


def tsne_figure(checkpoint, testsets: list[str], out_dir, *, limit: int = 200, with_clean: bool = False,
                log_mlflow: bool = True) -> Path:
    """t-SNE of the last block's time-averaged features, one colour per test set (and noisy/clean)."""
    loaded = load_generator(checkpoint)
    opened = [open_testset(t) for t in testsets]
    groups: dict[str, list] = {}
    for ts in opened:
        for i, (_key, noisy, clean) in enumerate(ts):
            if i >= limit:
                break
            groups.setdefault(f"{ts.name} noisy" if with_clean else ts.name, []).append(
                latent_vector(loaded.model, noisy))
            if with_clean and clean is not None:
                groups.setdefault(f"{ts.name} clean", []).append(latent_vector(loaded.model, clean))
    name = "tsne_" + "_".join(ts.name.replace("/", "_") for ts in opened) + ("_clean" if with_clean else "")
    path = tsne_png(Path(out_dir) / f"{name}.png", groups, title=f"{loaded.config.model.name}, step {loaded.step}")
    _log(loaded, [path], log_mlflow)
    return path


def _log(loaded: LoadedModel, paths: list[Path], enabled: bool) -> None:
    run_id = loaded.mlflow_run_id
    if not (enabled and run_id and loaded.config.mlflow.enabled):
        return
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=loaded.config.mlflow.tracking_uri)
    for p in paths:
        client.log_artifact(run_id, str(p), artifact_path="figures")
