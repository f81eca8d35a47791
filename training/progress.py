"""Console progress, windowed training metrics, `progress.json`, validation artifacts, end-of-run summary.

`Meter` averages step metrics over `trainer.log_every` steps (over all ranks), logs them to the
tracker and the console: a tqdm bar (step, loss, steps/s, ETA) on an interactive terminal, a log
line per window otherwise. Its window is part of each rank's checkpoint, so a resumed run logs the
same numbers at the same steps as an uninterrupted one.

`WORKDIR/progress.json` (rank 0, atomic, rewritten at the start, every log window, checkpoint, stop
and end; its state set to `evaluating` during the end-of-run evaluation, training.evaluation.final_eval;
read by `orchestrate status` through `progress_rate` / `progress_eta`):
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

from common.rundir import PROGRESS_FILE

log = logging.getLogger(__name__)

# step metrics averaged over the window (per-step cumulative counters are logged separately)
WINDOW_KEYS = ("loss_g", "loss_d", "time", "magnitude", "complex", "phase", "consistency", "metric",
               "disc_real", "disc_fake", "grad_norm", "grad_norm_d", "pesq_target")


WINDOW_POINTS = 20


class ProgressFile:
    """Writer of `WORKDIR/progress.json` (see module docstring); keeps the previous attempts' window."""

    def __init__(self, workdir: Path, max_steps: int):
        from training.checkpoint import atomic_write_text

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


def read_progress(path: Path) -> dict:
    """A progress.json as a dict ({} when absent or unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def progress_rate(progress: dict) -> float | None:
    """Steps/s over the recent window (same-session sample pairs only); None without two samples."""
    window = progress.get("window") or []
    steps = seconds = 0.0
    for a, b in zip(window, window[1:]):
        try:
            if a[2] == b[2] and b[0] > a[0]:
                steps, seconds = steps + (b[1] - a[1]), seconds + (b[0] - a[0])
        except (TypeError, IndexError):
            return None
    return steps / seconds if seconds > 0 and steps > 0 else None


def progress_eta(progress: dict) -> float | None:
    """Seconds of compute left (remaining steps / `progress_rate`); 0 when done; None when unknown."""
    step, total = progress.get("step"), progress.get("max_steps")
    if not isinstance(step, int) or not isinstance(total, int):
        return None
    if step >= total or progress.get("state") == "done":
        return 0.0
    rate = progress_rate(progress)
    return (total - step) / rate if rate else None


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Meter:
    """Windowed metric averages + console progress for one Trainer (see module docstring)."""

    def __init__(self, trainer, total: int, start: int):
        self.tr, self.total = trainer, total
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._t = time.time()
        self._steps = 0
        self.bar = None
        if trainer.env.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=trainer.cfg.name, unit="step", dynamic_ncols=True)

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

    def log(self) -> dict[str, float]:
        """Collective: average the window over ranks, log it at the current step, reset the window."""
        import torch  # here, not at import: `orchestrate status` reads progress files on a torch-less login node

        from training import distributed

        tr = self.tr
        vec = torch.tensor([x for k in WINDOW_KEYS for x in (self.sums.get(k, 0.0), self.counts.get(k, 0))],
                           dtype=torch.float64, device=tr.device)
        stats = tr.stream.stats()
        stat_keys = sorted(k for k in stats if k != "batches")
        svec = torch.tensor([stats[k] for k in stat_keys], dtype=torch.float64, device=tr.device)
        vec, svec = distributed.all_reduce(vec).cpu(), distributed.all_reduce(svec).cpu()
        out = {f"train/{k}": float(vec[2 * i] / vec[2 * i + 1]) for i, k in enumerate(WINDOW_KEYS) if vec[2 * i + 1] > 0}
        out["train/lr"] = tr.opt_g.param_groups[0]["lr"]
        out["train/pesq_failed"] = float(tr.ctx.counters["pesq_failed"])
        out["train/nonfinite_skipped"] = float(tr.ctx.counters["nonfinite_skipped"])
        out |= {f"data/{k}": float(v) for k, v in zip(stat_keys, svec.tolist())}
        now = time.time()
        rate = self._steps / max(now - self._t, 1e-9)
        tr.tracker.log(out, tr.step)
        tr.tracker.log({"train/steps_per_s": rate}, tr.step)
        if tr.env.is_main and self.bar is None:
            eta = (self.total - tr.step) / rate if rate > 0 else math.inf
            log.info("step %d/%d  loss_g %.4f  loss_d %.4f  %.2f steps/s  ETA %s", tr.step, self.total,
                     out.get("train/loss_g", math.nan), out.get("train/loss_d", math.nan), rate, _fmt_eta(eta))
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


def summary_text(tr, start_step: int) -> str:
    """The one-screen end-of-run summary."""
    cfg, val, noisy = tr.cfg, tr.last_val, tr.noisy_val or {}
    lines = [
        "=" * 72,
        f"run {cfg.name}: {cfg.model.name}, seed {cfg.trainer.seed}, {tr.env.world_size} rank(s) on {tr.device}",
        f"steps {tr.step}/{cfg.trainer.max_steps} ({tr.step - start_step} this session), "
        f"segment {tr.segment} samples, global batch {cfg.data.batch_size}",
    ]
    if val:
        lines.append(f"{'validation':<12}" + "".join(f"{m:>10}" for m in ("pesq", "estoi", "si_sdr", "ssnr")))
        if noisy:
            lines.append(f"{'  noisy':<12}" + "".join(f"{noisy.get('noisy_' + m, math.nan):>10.3f}"
                                                        for m in ("pesq", "estoi", "si_sdr", "ssnr")))
        lines.append(f"{'  enhanced':<12}" + "".join(f"{val.get(m, math.nan):>10.3f}"
                                                      for m in ("pesq", "estoi", "si_sdr", "ssnr")))
    lines += [
        f"best PESQ {tr.best_pesq:.3f} at step {tr.best_step}" if math.isfinite(tr.best_pesq) else "no validation",
        f"skipped: non-finite steps {tr.ctx.counters['nonfinite_skipped']}, PESQ targets failed "
        f"{tr.ctx.counters['pesq_failed']}, data {dict((k, v) for k, v in tr.stream.stats().items() if k != 'batches')}",
        f"checkpoints {tr.ckpt.root}  MLflow run {tr.tracker.run_id or '-'}",
        "=" * 72,
    ]
    return "\n".join(lines)
