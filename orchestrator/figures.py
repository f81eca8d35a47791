"""Figures, logged to MLflow: per checkpoint (`orchestrate analyze`: spectrograms, t-SNE) and per sweep
(`orchestrate compare --plot`: every cell's training and validation curves overlaid, one PNG per metric,
one colour per model row with its seeds as thin lines; the compare table as bars of mean ± std over
seeds per model and test set, one panel per metric).

Sweep figure files: `curves_<metric with / as _>.png` (e.g. `curves_val_pesq.png`) and `compare.png`,
written into one folder and logged under `figures/` of the sweep's parent run."""

from __future__ import annotations

import logging
from pathlib import Path

from orchestrator.errors import UserError
from training.evaluation.analysis import latent_vector, spectrogram_png, tsne_png
from training.evaluation.inference import LoadedModel, load_generator
from training.evaluation.protocol import enhancer_for
from training.evaluation.testsets import open_testset

log = logging.getLogger(__name__)

# the curves drawn by default, when present in at least one run (wall-clock and counter keys are not)
CURVE_KEYS = ("train/loss_g", "train/loss_d", "val/pesq", "val/estoi", "val/si_sdr", "val/ssnr")
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "tab:gray")


def spectrogram_figures(checkpoint, testset: str, out_dir, *, keys: list[str] | None = None, first: int = 2,
                        log_mlflow: bool = True) -> list[Path]:
    """One noisy/clean/enhanced PNG per chosen utterance (``keys``, else the first ``first``)."""
    loaded = load_generator(checkpoint)
    ts = open_testset(testset)
    enhancer = enhancer_for(loaded.model, loaded.config)  # the run's protocol (eval.mode)
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
    from orchestrator.mlflow_sweep import log_artifacts

    log_artifacts(loaded.config.mlflow.tracking_uri, run_id, paths, artifact_path="figures")


# ----------------------------------------------------------------------------------------- per sweep
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(labels: list[str]) -> dict[str, str]:
    return {lab: COLOURS[i % len(COLOURS)] for i, lab in enumerate(sorted(set(labels)))}


def curve_series(client, runs: list, key: str) -> dict[str, list[tuple[str, list[int], list[float]]]]:
    """What one curve figure draws: model row label -> [(seed, steps, values)] of `key`, runs without
    the key left out; rows sorted by label, seeds by seed."""
    from orchestrator.compare import _seed, model_labels

    labels = model_labels(runs)
    out: dict[str, list] = {}
    for r in sorted(runs, key=lambda r: (labels[r.info.run_id], _seed(r))):
        hist = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, key))
        if hist:
            out.setdefault(labels[r.info.run_id], []).append((_seed(r), [s for s, _ in hist], [v for _, v in hist]))
    return out


def curve_figures(client, runs: list, out_dir, *, keys: list[str] | None = None, title: str = "") -> list[Path]:
    """One PNG per metric key (`curve_series`): the metric against the step for every run, one colour
    per model row, one legend entry per row with its seed count. Returns the files."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    present = {k for r in runs for k in r.data.metrics}
    paths = []
    for key in [k for k in (keys or CURVE_KEYS) if k in present]:
        series = curve_series(client, runs, key)
        colours = _colours(list(series))
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for lab, lines in series.items():
            for i, (_seed, xs, ys) in enumerate(lines):
                ax.plot(xs, ys, color=colours[lab], lw=1.2, alpha=0.8, marker="o" if len(xs) < 15 else None, ms=3,
                        label=f"{lab} ({len(lines)} seed{'s' if len(lines) > 1 else ''})" if i == 0 else None)
        noisy = [r.data.metrics[f"val/noisy_{key[4:]}"] for r in runs if f"val/noisy_{key[4:]}" in r.data.metrics]
        if key.startswith("val/") and noisy:  # the validation input's own score, for reference
            ax.axhline(sum(noisy) / len(noisy), color="0.5", ls="--", lw=1, label="noisy input")
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{title}: {key}" if title else key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"curves_{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def table_figure(table, path) -> Path:
    """The compare table as a figure: one panel per metric, test sets on the x axis, one bar per
    model row (the noisy input in grey) at the mean, error bars ± the sample std over seeds."""
    import numpy as np

    from orchestrator.compare import METRIC_DIGITS, METRIC_LABELS

    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, ts = table.rows, table.testsets
    model_colours = _colours([r.model for r in rows if not r.noisy])
    n = len(table.metrics)
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, 1.2 + 0.55 * len(rows) * len(ts)) * n * 0.75 + 1, 4.2),
                             squeeze=False)
    width = 0.8 / max(1, len(rows))
    for ax, metric in zip(axes[0], table.metrics):
        for i, row in enumerate(rows):
            x = np.arange(len(ts)) + (i - (len(rows) - 1) / 2) * width
            stats = [row.stats.get((t, metric)) for t in ts]
            means = [s.mean if s else np.nan for s in stats]
            errs = [s.std if s and s.std is not None else 0.0 for s in stats]
            seeds = max((s.n for s in stats if s), default=0)
            label = "noisy input" if row.noisy else f"{row.model} (n={seeds})"
            ax.bar(x, means, width, yerr=errs, capsize=3, color="0.7" if row.noisy else model_colours[row.model],
                   edgecolor="black", linewidth=0.4, label=label)
            for xi, m, e in zip(x, means, errs):
                if np.isfinite(m):  # the mean, written past the end of the error bar
                    ax.annotate(f"{m:.{METRIC_DIGITS.get(metric, 3)}f}", (xi, m + e if m >= 0 else m - e),
                                ha="center", fontsize=6,
                                va="bottom" if m >= 0 else "top", xytext=(0, 2 if m >= 0 else -2),
                                textcoords="offset points")
        ax.set_xticks(np.arange(len(ts)), ts, rotation=15 if len(ts) > 2 else 0)
        ax.set_title(METRIC_LABELS.get(metric, metric))
        ax.axhline(0, color="black", lw=0.5)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"{table.sweep}: mean ± std over seeds")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def sweep_figures(sweep, table, out_dir, *, tracking_uri: str | None = None, experiment: str | None = None,
                  root="runs", log_mlflow: bool = True) -> list[Path]:
    """`orchestrate compare --plot`: the curves of every child run of the sweep (any state) and the
    table figure, in `out_dir`; logged under `figures/` of the sweep's parent run when known."""
    from orchestrator.compare import sweep_runs

    _ref, client, parent_id, runs = sweep_runs(sweep, tracking_uri=tracking_uri or table.tracking_uri,
                                               experiment=experiment, root=root)
    runs = [r for r in runs if r.data.tags.get("se.kind", "train") == "train"]
    paths = curve_figures(client, runs, out_dir, title=table.sweep)
    paths.append(table_figure(table, Path(out_dir) / "compare.png"))
    parent_id = table.parent_run_id or parent_id
    if log_mlflow and parent_id:
        for p in paths:
            client.log_artifact(parent_id, str(p), artifact_path="figures")
    return paths
