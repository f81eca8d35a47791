"""The loop that runs a sweep's cells from this command (the blocking launchers: local processes, Ray).

    run_cells(sweep_dir, [(cell, cell_dir), ...], backend)   # 0 when every cell ended done, else 1

Cells start in order while the backend admits the next one (`Backend.admits`: by default fewer than
``launcher.max_parallel`` running; a backend may weigh resources instead); each start is claimed and
recorded in the ledger and the cell's files (`claim`, `record_start`), each end likewise
(`record_end`: exit code → state); every ``report_every_s`` a progress line names the running cells
(an unchanged line again only after ``REPEAT_UNCHANGED_S``).

Ctrl-C (SIGINT) or SIGTERM to this command (main thread): no further cell starts, the running cells get SIGTERM through the
backend (they checkpoint at a step boundary and exit 75 → ``preempted``), the loop waits for them
(SIGKILL after ``STOP_GRACE_S``), then raises KeyboardInterrupt (the CLI exits 130); a second Ctrl-C
abandons them at once.

A backend (`LocalBackend` in `local`, `RayBackend` in `ray`) knows only how to start a cell, see which
running cells ended, and signal them.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import procid
from common.progress import read_progress, shown_state
from orchestrator.launchers import base
from orchestrator.ledger import ACTIVE, Ledger, set_state

STOP_GRACE_S = 120.0  # after Ctrl-C, running cells get this long to checkpoint before SIGKILL
REPEAT_UNCHANGED_S = 60.0  # an unchanged progress line is printed again only after this long


@dataclass(eq=False)
class Running:
    """A started cell: its backend handle (a process, a Ray task, ...) and its ledger job id."""

    cell: Any
    cell_dir: Path
    handle: Any
    job_id: str
    identity: dict | None = None  # `common.procid.identify` of a local process (recorded as the ledger's ``process``)


# ------------------------------------------------------------------------------ the ledger's side


def _attempt_line(cell_dir: Path, text: str) -> None:
    with open(cell_dir / base.ATTEMPTS_FILE, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def cell_alive(rec: dict, cell_dir: Path) -> bool:
    """Whether a cell recorded as active still has a live process on this machine.

    True when the run folder's lock is held (a trainer works in it, whoever started it), or when the
    recorded ``local:PID`` is alive and still runs this cell (its command line names the cell folder,
    so a reused pid does not count), or when ``local-claim:PID`` (a sweep process about to start the
    cell) is alive.
    """
    from common.runlock import is_locked

    if is_locked(cell_dir):
        return True
    job = str(rec.get("job_id") or "")
    kind, _, pid_text = job.partition(":")
    if kind not in ("local", "local-claim") or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if not _pid_alive(pid):
        return False
    if kind == "local-claim" or procid.is_zombie(pid):  # a zombie: ended, its sweep command has not recorded it yet
        return True
    if isinstance(rec.get("process"), dict):  # recorded identity: pid, boot, start time, command line
        return procid.is_same(rec["process"])
    cmd = procid.cmdline(pid)
    return not cmd or str(cell_dir) in cmd or Path(cell_dir).name in cmd


def claim(sweep_dir: Path, cell_id: str, cell_dir: Path) -> str | None:
    """Under the ledger lock: mark the cell as being started by this process; None when claimed.

    Otherwise the reason it is left alone: a live process (another sweep command, or a trainer left
    running by a killed one) has it, or another sweep command finished it after this one planned.
    """
    with Ledger(sweep_dir).locked() as data:
        rec = data["cells"][cell_id]
        if rec["state"] in ACTIVE and cell_alive(rec, cell_dir):
            return "already running in another process"
        if rec["state"] == "done":
            return "finished meanwhile by another process"
        set_state(rec, "running", job_id=f"local-claim:{os.getpid()}")
    return None


def record_start(sweep_dir: Path, cell_id: str, cell_dir: Path, job_id: str, identity: dict | None = None) -> None:
    """The ledger's record of a started cell: ``job_id`` and, for a local process, ``process`` (its
    identity, `common.procid`: what `LocalLauncher.cancel` checks before any signal)."""
    base.clear_exit_code(cell_dir)
    _attempt_line(cell_dir, f"start {job_id}")
    with Ledger(sweep_dir).locked() as data:
        rec = data["cells"][cell_id]
        set_state(rec, "running", job_id=job_id, job_ids=[*rec.get("job_ids", []), job_id],
                  submissions=rec.get("submissions", 0) + 1, attempts=rec.get("attempts", 0) + 1,
                  exit_code=None, reason=None, process=identity)


def record_end(sweep_dir: Path, cell_id: str, cell_dir: Path, rc: int) -> str:
    base.write_exit_code(cell_dir, rc)
    _attempt_line(cell_dir, f"end rc={rc}")
    state = base.state_from_exit_code(rc)
    with Ledger(sweep_dir).locked() as data:
        rec = data["cells"][cell_id]
        set_state(rec, state, exit_code=rc, mlflow_run_id=base.read_run_id(cell_dir) or rec.get("mlflow_run_id"))
    return state


# ------------------------------------------------------------------------------ the loop


class Backend(abc.ABC):
    """How cells run under `run_cells`."""

    def __init__(self, cells: list):
        configured = [c.config.launcher.max_parallel for c, _ in cells if c.config.launcher.max_parallel]
        self.max_parallel = min(configured, default=1)  # launcher.max_parallel null: one at a time

    def admits(self, cell, running: list[Running]) -> bool:
        """Whether ``cell`` may start now, beside ``running``."""
        return len(running) < self.max_parallel

    @abc.abstractmethod
    def start(self, cell, cell_dir: Path) -> Running:
        """Start a cell (without waiting for it)."""

    @abc.abstractmethod
    def ended(self, running: list[Running], timeout_s: float) -> list[tuple[Running, int]]:
        """The running cells that ended and their exit codes, waiting at most about ``timeout_s``."""

    @abc.abstractmethod
    def signal(self, running: list[Running], sig: int) -> None:
        """Send ``sig`` to the training processes of ``running`` (each at most once per signal)."""

    def release(self, r: Running) -> None:
        """After ``r``'s end is in the ledger: free what the backend still holds for it (a local process
        is reaped only then; see `LocalBackend.ended`). Nothing by default."""
        return None

    def describe(self, r: Running) -> str:
        return f"started {r.cell.id} ({r.job_id})"


def progress_line(running: dict[str, Path], finished: int, total: int) -> str:
    """``[1/4 finished] s1 20/60; s2 60/60 (evaluating)`` from the running cells' progress.json."""
    parts = []
    for cid, cdir in running.items():
        p = read_progress(cdir)
        step = f"{p.get('step', 0)}/{p.get('max_steps', '?')}" if p else "starting"
        if shown_state("running", p.get("state")) != "running":
            step += " (evaluating)"  # the end-of-run evaluation on the test sets
        parts.append(f"{cid} {step}")
    return f"[{finished}/{total} finished] " + "; ".join(parts)


class _Interrupt:
    """Ctrl-C (or SIGTERM) while cells run: the first sets ``stop``, the second ``abandon``. The handler
    only records them (it runs wherever the main thread is, e.g. inside a Ray call, where a nested Ray
    call fails); the loop relays SIGTERM to the cells (``relay()``, every turn, so also to cells that
    started after it) and, on ``abandon``, raises KeyboardInterrupt."""

    def __init__(self, running: Callable[[], list[Running]], backend: Backend, out: Callable[[str], None]):
        self.running, self.backend, self.out = running, backend, out
        self.stop = self.abandon = False
        self.since = 0.0

    def relay(self) -> None:
        if self.abandon:
            raise KeyboardInterrupt
        if not self.stop:
            return
        running = self.running()
        self.backend.signal(running, signal.SIGTERM)
        if running and time.monotonic() - self.since > STOP_GRACE_S:
            self.out(f"cells still running {STOP_GRACE_S:.0f} s after SIGTERM: SIGKILL")
            self.backend.signal(running, signal.SIGKILL)

    def on_sigint(self, signum, frame) -> None:
        if self.stop:
            self.abandon = True
            return
        self.stop, self.since = True, time.monotonic()
        self.out("interrupted: asking the running cells to checkpoint (SIGTERM); Ctrl-C again to abandon them")


@contextlib.contextmanager
def _handle_sigint(state: _Interrupt) -> Iterator[_Interrupt]:
    """``state`` handles SIGINT and SIGTERM while the block runs (only in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {sig: signal.signal(sig, state.on_sigint) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_cells(sweep_dir: Path, cells: list, backend: Backend, *, out: Callable[[str], None] = print,
              poll_s: float = 1.0, report_every_s: float = 10.0) -> int:
    """Run ``[(Cell, cell_dir), ...]`` through ``backend``; 0 when every cell ended done, else 1."""
    sweep_dir = Path(sweep_dir)
    queue = list(cells)
    total = len(queue)
    running: list[Running] = []
    states: dict[str, str] = {}
    last_report, last_line = 0.0, ""
    with _handle_sigint(_Interrupt(lambda: list(running), backend, out)) as interrupt:
        while (queue and not interrupt.stop) or running:
            while queue and not interrupt.stop and backend.admits(queue[0][0], running):
                cell, cdir = queue.pop(0)
                cdir.mkdir(parents=True, exist_ok=True)
                busy = claim(sweep_dir, cell.id, cdir)
                if busy:
                    out(f"{cell.id}: {busy} (left alone)")
                    total -= 1
                    continue
                r = backend.start(cell, cdir)
                record_start(sweep_dir, cell.id, cdir, r.job_id, r.identity)
                running.append(r)
                out(backend.describe(r))
            for r, rc in backend.ended(list(running), poll_s):
                running.remove(r)
                states[r.cell.id] = record_end(sweep_dir, r.cell.id, r.cell_dir, rc)
                backend.release(r)
                out(f"{r.cell.id}: {states[r.cell.id]} (exit {rc}; log {r.cell_dir / 'launcher.log'})")
            interrupt.relay()
            if running and time.monotonic() - last_report >= report_every_s:
                line = progress_line({r.cell.id: r.cell_dir for r in running}, len(states), total)
                if line != last_line or time.monotonic() - last_report >= REPEAT_UNCHANGED_S:
                    last_report, last_line = time.monotonic(), line
                    out(line)
    if interrupt.stop:
        raise KeyboardInterrupt
    return 0 if all(s == "done" for s in states.values()) else 1
