"""The reader of a run's ``progress.json`` (written by `training.progress.ProgressFile`, rank 0).

Format (docs/contracts.md)::

    {"step", "max_steps", "state": running|preempted|evaluating|done, "best_pesq", "last_val_pesq",
     "last_val_step", "updated" (unix s), "attempt_start_step",
     "window": [[unix s, step, session], ...]}   # the last samples, all attempts

A session is one process lifetime (a start or a requeue): the rate is steps/s over the window's
consecutive samples within one session, so time spent requeued never counts. ETA = remaining steps /
rate: compute time through any number of requeues, queue waits excluded. Read by the trainer itself
(to keep the window across requeues), `orchestrate status`, the local/Ray progress line and tune.
"""

from __future__ import annotations

import json
import math
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
