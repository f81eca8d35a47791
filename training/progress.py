"""Console progress, windowed training metrics, `progress.json`, validation artifacts, end-of-run summary.

`Meter` averages step metrics over `trainer.log_every` steps (over all ranks) for the tracker and
shows them on the console: a tqdm bar (step, loss, steps/s, ETA) on an interactive terminal, a log
line per window otherwise. Its window is part of each rank's checkpoint, so a resumed run logs the
same numbers at the same steps as an uninterrupted one.

`WORKDIR/progress.json` (rank 0, atomic, rewritten at the start, every log window, checkpoint, stop
and end; its state set to `evaluating` during the end-of-run evaluation, training.evaluation.final_eval;
read by `orchestrate status` through `common.progress`, the format's one reader):
    {"step", "max_steps", "state": running|preempted|evaluating|done, "best_pesq", "last_val_pesq",
     "last_val_step", "updated" (unix s), "attempt_start_step",
     "window": [[unix s, step, session], ...]}   # the last WINDOW_POINTS samples, all attempts
A session is one process lifetime (a start or a requeue); the rate is steps/s over the window's
consecutive samples within the same session, so the time a job spends requeued never counts and
the rate survives a requeue. ETA = remaining steps / rate: compute time through any number of
requeues, queue waits excluded.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from common.progress import progress_line, read_progress
from common.rundir import PROGRESS_FILE

log = logging.getLogger(__name__)

# step metrics averaged over the window (per-step cumulative counters are logged separately)
WINDOW_KEYS = ("loss_g", "loss_d", "time", "magnitude", "complex", "phase", "consistency", "metric",
               "disc_real", "disc_fake", "grad_norm", "grad_norm_d", "pesq_target")


WINDOW_POINTS = 20


class ProgressFile:
    """Writer of `WORKDIR/progress.json` (see module docstring); keeps the previous attempts' window."""

    def __init__(self, workdir: Path, max_steps: int):
        from common.atomic import atomic_write_text

        self._write = atomic_write_text
        self.path, self.max_steps = Path(workdir) / PROGRESS_FILE, int(max_steps)
        old = read_progress(self.path)
        window = old.get("window") if isinstance(old.get("window"), list) else []
        self.window = [w for w in window if isinstance(w, list) and len(w) == 3]
        self.session = max((int(w[2]) for w in self.window), default=-1) + 1
        self.last_val = (old.get("last_val_pesq"), old.get("last_val_step"))
        self.start_step: int | None = None

    def update(self, step: int, state: str, best_pesq: float | None = None, val_pesq: float | None = None) -> None:
        now = time.time()
        if self.start_step is None:
            self.start_step = int(step)
        if val_pesq is not None and math.isfinite(val_pesq):
            self.last_val = (float(val_pesq), int(step))
        if not self.window or self.window[-1][1] != step or self.window[-1][2] != self.session:
            self.window = (self.window + [[round(now, 3), int(step), self.session]])[-WINDOW_POINTS:]
        best = best_pesq if best_pesq is not None and math.isfinite(best_pesq) else None
        data = {"step": int(step), "max_steps": self.max_steps, "state": state, "best_pesq": best,
                "last_val_pesq": self.last_val[0], "last_val_step": self.last_val[1], "updated": round(now, 3),
                "attempt_start_step": self.start_step, "window": self.window}
        self._write(self.path, json.dumps(data) + "\n")


class Meter:
    """Windowed averages of the step metrics + console progress of one rank (see module docstring).

    Given values only: `update(metrics)` after each step, `log(step, extras, data_stats)` at the end
    of a window. `state_dict()` is the open window (a part of each rank's checkpoint)."""

    def __init__(self, total: int, device, *, is_main: bool, name: str):
        self.total, self.device, self.is_main, self.name = int(total), device, is_main, name
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._t = time.time()
        self._steps = 0
        self.bar = None

    def start(self, step: int) -> None:
        """Begin timing at `step`; on rank 0 at an interactive terminal, show the bar from there."""
        self._t, self._steps = time.time(), 0
        if self.is_main and sys.stderr.isatty() and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=step, desc=self.name, unit="step", dynamic_ncols=True)

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {str(k): float(v) for k, v in state.get("sums", {}).items()}
        self.counts = {str(k): int(v) for k, v in state.get("counts", {}).items()}

    def update(self, metrics: dict[str, float]) -> None:
        for k in WINDOW_KEYS:
            v = metrics.get(k)
            if v is not None and math.isfinite(v):
                self.sums[k] = self.sums.get(k, 0.0) + v
                self.counts[k] = self.counts.get(k, 0) + 1
        self._steps += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss_g=f"{metrics.get('loss_g', math.nan):.3f}", refresh=False)

    def log(self, step: int, extras: dict[str, float], data_stats: dict[str, float]) -> dict[str, float]:
        """Collective: the window averaged over ranks (`train/<key>`), then `extras` as given, the
        `data_stats` counts summed over ranks (`data/<key>`) and `train/steps_per_s` of this rank; a
        console line on rank 0 without a bar. Resets the window."""
        import torch  # here, not at import: `orchestrate status` reads progress files on a torch-less login node

        from training import distributed

        vec = torch.tensor([x for k in WINDOW_KEYS for x in (self.sums.get(k, 0.0), self.counts.get(k, 0))],
                           dtype=torch.float64, device=self.device)
        stat_keys = sorted(data_stats)
        svec = torch.tensor([data_stats[k] for k in stat_keys], dtype=torch.float64, device=self.device)
        vec, svec = distributed.all_reduce(vec).cpu(), distributed.all_reduce(svec).cpu()
        out = {f"train/{k}": float(vec[2 * i] / vec[2 * i + 1]) for i, k in enumerate(WINDOW_KEYS) if vec[2 * i + 1] > 0}
        out |= extras
        out |= {f"data/{k}": float(v) for k, v in zip(stat_keys, svec.tolist())}
        now = time.time()
        rate = self._steps / max(now - self._t, 1e-9)
        out["train/steps_per_s"] = rate
        if self.is_main and self.bar is None:
            eta = (self.total - step) / rate if rate > 0 else math.inf
            extras = f"loss_g {out.get('train/loss_g', math.nan):.4f}  loss_d {out.get('train/loss_d', math.nan):.4f}"
            log.info("%s", progress_line("step", step, self.total, f"{rate:.2f} steps/s", eta, extras))
        self.sums, self.counts, self._t, self._steps = {}, {}, now, 0
        return out

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def write_clip_artifacts(clips, folder: Path) -> list[Path]:
    """WAVs (noisy/clean/enhanced) of the kept validation clips and one spectrogram PNG."""
    from common.audio import write_wav

    written: list[Path] = []
    if not clips:
        return written
    folder.mkdir(parents=True, exist_ok=True)
    for key, noisy, clean, enh in clips:
        for name, wav in (("noisy", noisy), ("clean", clean), ("enhanced", enh)):
            written.append(write_wav(folder / f"{key}_{name}.wav", np.clip(wav, -1.0, 1.0)))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no spectrogram artifact")
        return written
    key, noisy, clean, enh = clips[0]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, (name, wav) in zip(axes, (("noisy", noisy), ("clean", clean), ("enhanced", enh))):
        ax.specgram(wav.astype(np.float64) + 1e-9, NFFT=512, Fs=16000, noverlap=384, cmap="magma")
        ax.set_title(f"{key}: {name}")
        ax.set_ylabel("Hz")
    axes[-1].set_xlabel("s")
    fig.tight_layout()
    png = folder / "spectrogram.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    written.append(png)
    return written


def summary_text(cfg, *, world_size: int, device, step: int, start_step: int, segment: int,
                 val: dict[str, float], noisy: dict[str, float], best_pesq: float, best_step: int,
                 counters: dict[str, int], data_stats: dict[str, float], checkpoints: Path,
                 run_id: str | None) -> str:
    """The one-screen end-of-run summary of run `cfg` (a RunConfig) from the values given."""
    lines = [
        "=" * 72,
        f"run {cfg.name}: {cfg.model.name}, seed {cfg.trainer.seed}, {world_size} rank(s) on {device}",
        f"steps {step}/{cfg.trainer.max_steps} ({step - start_step} this session), "
        f"segment {segment} samples, global batch {cfg.data.batch_size}",
    ]
    if val:
        lines.append(f"{'validation':<12}" + "".join(f"{m:>10}" for m in ("pesq", "estoi", "si_sdr", "ssnr")))
        if noisy:
            lines.append(f"{'  noisy':<12}" + "".join(f"{noisy.get('noisy_' + m, math.nan):>10.3f}"
                                                        for m in ("pesq", "estoi", "si_sdr", "ssnr")))
        lines.append(f"{'  enhanced':<12}" + "".join(f"{val.get(m, math.nan):>10.3f}"
                                                      for m in ("pesq", "estoi", "si_sdr", "ssnr")))
    lines += [
        f"best PESQ {best_pesq:.3f} at step {best_step}" if math.isfinite(best_pesq) else "no validation",
        f"skipped: non-finite steps {counters['nonfinite_skipped']}, PESQ targets failed "
        f"{counters['pesq_failed']}, data {data_stats}",
        f"checkpoints {checkpoints}  MLflow run {run_id or '-'}",
        "=" * 72,
    ]
    return "\n".join(lines)
