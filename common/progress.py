"""The reader of a run's ``progress.json`` (written by `training.progress.ProgressFile`, rank 0).

Format (docs/contracts.md)::

    {"step", "max_steps", "state": running|preempted|evaluating|done, "best_pesq", "last_val_pesq",
     "last_val_step", "updated" (unix s), "attempt_start_step",
     "window": [[unix s, step, session], ...]}   # the last samples, all attempts

A session is one process lifetime (a start or a requeue): the rate is steps/s over the window's
consecutive samples within one session, so time spent requeued never counts. ETA = remaining steps /
rate: compute time through any number of requeues, queue waits excluded. Read by the trainer itself
(to keep the window across requeues), `orchestrate status`, the local/Ray progress line and tune.

The project's one progress-line format (`progress_line`): ``<unit> DONE/TOTAL  [extras]  RATES  ETA 5m03s``,
written by the training log line (steps) and by `FileProgress` (files: `orchestrate evaluate`/`enhance`,
the end-of-job evaluation, `orchestrate shard build`, `orchestrate report efficiency`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from pathlib import Path

from common.rundir import ATTEMPTS_FILE, PROGRESS_FILE


def read_progress(path: str | Path) -> dict:
    """``progress.json`` of a run folder (or the file itself) as a dict; {} when absent, partial or
    garbled (read defensively: it is rewritten while a run works)."""
    return read_progress_checked(path)[0]


def read_progress_checked(path: str | Path) -> tuple[dict, str | None]:
    """(`read_progress`'s dict, why the file is unreadable or None): a file that exists but is not a JSON
    object (binary, truncated, a list) gives ``({}, reason)``; values of a wrong type (``"step": "x"``) are
    dropped, so readers may trust ``step``/``max_steps`` (int), ``best_pesq``/``last_val_pesq`` (number),
    ``state`` (str)."""
    path = Path(path)
    if path.name != PROGRESS_FILE:
        path = path / PROGRESS_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}, None
    except OSError as e:
        return {}, f"{path}: unreadable ({e.strerror or e})"
    except ValueError:
        return {}, f"{path}: unreadable (not JSON)"
    if not isinstance(data, dict):
        return {}, f"{path}: unreadable (a JSON {type(data).__name__}, expected an object)"
    kinds = {"step": int, "max_steps": int, "best_pesq": (int, float), "last_val_pesq": (int, float),
             "last_val_step": int, "state": str, "window": list}
    clean = {k: v for k, v in data.items()
             if k not in kinds or v is None or (isinstance(v, kinds[k]) and not isinstance(v, bool))}
    return clean, None if len(clean) == len(data) else f"{path}: unreadable values ({', '.join(sorted(set(data) - set(clean)))})"


def read_attempts(cell_dir: str | Path) -> tuple[list[str], str | None]:
    """The lines of a cell's ``attempts.log`` ([] when absent) and why it is unreadable (not text) or None."""
    path = Path(cell_dir) / ATTEMPTS_FILE
    try:
        return path.read_bytes().decode("utf-8").splitlines(), None
    except FileNotFoundError:
        return [], None
    except OSError as e:
        return [], f"{path}: unreadable ({e.strerror or e})"
    except ValueError:
        return [], f"{path}: unreadable (not UTF-8 text)"


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


def shown_state(state: str, progress_state: str | None) -> str:
    """A cell's state as the user reads it: ``running (evaluating)`` while a running cell's
    progress.json state says its end-of-run evaluation is under way (training.evaluation.final_eval);
    ``<state> (progress unreadable)`` when its progress.json is garbled (`read_progress_checked`)."""
    if progress_state == "unreadable":  # progress.json garbled: the cell's state still shown
        return f"{state} (progress unreadable)"
    return f"{state} (evaluating)" if state == "running" and progress_state == "evaluating" else state


def format_duration(seconds: float | None) -> str:
    """``5m03s``, ``3h02m``, ``2d05h``; ``-`` when unknown (None, inf, NaN). The project's one duration
    text (status ETA, the training log's ETA, the cost plan's wall time)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    total = max(0, int(round(seconds)))
    d, rem = divmod(total // 60, 24 * 60)
    h, m = divmod(rem, 60)
    return f"{d}d{h:02d}h" if d else (f"{h}h{m:02d}m" if h else f"{m}m{total % 60:02d}s")


def progress_line(unit: str, done: int, total: int, rates: str, eta_s: float | None, extras: str = "") -> str:
    """The project's one progress line: ``files 3/16  4.1 audio s/s  0.52 files/s  ETA 0m25s`` (the
    training log's ``step 40/100  loss_g ...  2.00 steps/s  ETA 0m30s``); ``extras`` between count and rates."""
    return "  ".join(x for x in (f"{unit} {done}/{total}", extras, rates, f"ETA {format_duration(eta_s)}") if x)


class FileProgress:
    """Progress of a long command over files, as log lines when stderr is not a terminal (batch jobs, log
    files; a terminal has the commands' own bars or per-file lines): one line whenever another
    ``step_fraction`` of the files is done or ``interval_s`` passed since the last line (a heartbeat thread
    writes it even while one file takes long), and the final ``n/n`` line at `close`.

    Line: ``LABEL: files DONE/TOTAL  A audio s/s  F files/s  ETA 2m10s`` (`progress_line`); the rates count
    only this session's files (``done`` given at the start, e.g. resumed ones, do not), ETA = files left /
    files per second. ``lines`` keeps what was written. Use as a context manager or call `close`.
    """

    def __init__(self, label: str, total: int, *, done: int = 0, interval_s: float = 30.0,
                 step_fraction: float = 0.05, tty: bool | None = None, logger: logging.Logger | None = None):
        self.label, self.total, self.done = label, int(total), int(done)
        self.interval_s, self.step = interval_s, max(1, math.ceil(step_fraction * max(int(total), 1)))
        self.enabled = not (sys.stderr.isatty() if tty is None else tty)
        self.log = logger or logging.getLogger("progress")
        self.lines: list[str] = []
        self._start_done, self._audio, self._t0 = self.done, 0.0, time.monotonic()
        self._last_t, self._last_done = self._t0, self.done
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if self.enabled and interval_s > 0:
            self._thread = threading.Thread(target=self._heartbeat, name="FileProgress", daemon=True)
            self._thread.start()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        files = self.done - self._start_done
        per_s = files / elapsed
        eta = 0.0 if self.done >= self.total else ((self.total - self.done) / per_s if per_s > 0 else None)
        text = progress_line("files", self.done, self.total, f"{self._audio / elapsed:.2f} audio s/s  "
                             f"{per_s:.2f} files/s", eta)
        return f"{self.label}: {text}"

    def _emit(self) -> None:  # with the lock held
        text = self.line()
        self.lines.append(text)
        self.log.info("%s", text)
        self._last_t, self._last_done = time.monotonic(), self.done

    def update(self, files: int = 1, audio_s: float = 0.0) -> None:
        """``files`` more done, holding ``audio_s`` seconds of audio."""
        with self._lock:
            self.done += files
            self._audio += audio_s
            if self.enabled and (self.done - self._last_done >= self.step or self.done >= self.total
                                 or time.monotonic() - self._last_t >= self.interval_s):
                self._emit()

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(self.interval_s, 1.0)):
            with self._lock:
                if time.monotonic() - self._last_t >= self.interval_s:
                    self._emit()

    def close(self) -> None:
        """Stop the heartbeat; write the last line unless it was just written."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self.enabled and (self.done != self._last_done or not self.lines):
                self._emit()

    def __enter__(self) -> FileProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
