"""Local executor: cells as child processes of this command (torchrun when ``launcher.nproc > 1``),
``launcher.max_parallel`` at a time (default one), blocking, with a progress line; the same files
and ledger as SLURM (`cell_loop.run_cells`). Ctrl-C sends SIGTERM to the runs (they checkpoint and
exit 75 → ``preempted``; rerun to resume). A cell's process group is SIGKILLed when its training process
has exited (the leftovers of a killed trainer, e.g. loader workers, do not outlive it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from common import procid
from orchestrator.launchers import base
from orchestrator.launchers.cell_loop import Backend, Running, cell_alive, run_cells
from orchestrator.ledger import ACTIVE, set_state


class LocalBackend(Backend):
    """Each cell a process group of its own (so the terminal's Ctrl-C reaches this command only)."""

    def __init__(self, cells: list):
        super().__init__(cells)
        self.env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY=os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"))
        self.signalled: set[tuple[int, int]] = set()

    def start(self, cell, cell_dir: Path) -> Running:
        cmd = base.cell_command(cell_dir, nproc=cell.config.launcher.nproc)
        with open(cell_dir / "launcher.log", "ab") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        # Popen returns after the exec: the identity holds the training command, not this fork
        return Running(cell, cell_dir, proc, f"local:{proc.pid}", procid.identify(proc.pid))

    def describe(self, r: Running) -> str:
        return f"started {r.cell.id} (pid {r.handle.pid}): {' '.join(r.handle.args)}"

    def ended(self, running: list[Running], timeout_s: float) -> list[tuple[Running, int]]:
        """The ended cells, not reaped yet (`release` reaps them once their end is in the ledger: until then
        a cell's pid is a zombie, which `cell_loop.cell_alive` counts as running, so another sweep command
        cannot claim and start the cell again in between). What is left of each one's process group is
        SIGKILLed first, as SLURM ends a job's cgroup (a trainer killed by SIGKILL leaves its loader
        workers and their forkserver behind)."""
        time.sleep(timeout_s)
        done = []
        for r in running:
            rc = _exit_status(r.handle)
            if rc is None:
                continue
            if r.handle.returncode is None:  # not reaped: its pid, so its group id, is still ours
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.handle.pid, signal.SIGKILL)
            done.append((r, rc))
        return done

    def release(self, r: Running) -> None:
        r.handle.wait()

    def signal(self, running: list[Running], sig: int) -> None:
        for r in running:
            if (r.handle.pid, sig) not in self.signalled:
                self.signalled.add((r.handle.pid, sig))
                if r.handle.returncode is not None:
                    continue  # reaped (`release`): its pid may be anyone's
                try:  # not reaped (alive, or ended and a zombie), so the pid is still our child's: its group is the cell's
                    os.killpg(r.handle.pid, sig)
                except ProcessLookupError:
                    pass


def _exit_status(proc: subprocess.Popen) -> int | None:
    """``proc``'s exit code (negative: killed by that signal, as ``Popen.returncode``) once it has ended,
    else None; without reaping it (WNOWAIT)."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped elsewhere
        return proc.poll()
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


class LocalLauncher(base.Launcher):
    """Cells as child processes of this command (blocking); ``job_id`` is ``local:<pid>``."""

    name = "local"

    def recover(self, data: dict) -> None:
        for rec in data["cells"].values():  # an interrupted local sweep: 'running' cells without a live process
            if rec["state"] in ACTIVE and not cell_alive(rec, self.cell_dir(rec)):
                set_state(rec, "preempted", reason="interrupted (no live process)")

    def submit(self, cells: list, out: Callable[[str], None] = print) -> int:
        return run_cells(self.sweep_dir, cells, LocalBackend(cells), out=out)

    def refresh(self, data: dict) -> None:
        self.refresh_from_exit_codes(data)

    def cancel(self, records: list[dict]) -> list[str]:
        """SIGTERM to the process group of each active ``local:<pid>`` cell, only after checking that the
        pid still is the cell's process: its recorded identity (``process``: boot id, start time, command
        line; `common.procid`), or, in a ledger written before identities were recorded, a command line
        that is the cell's training command. Any other process is left alone, one line in ``notes``."""
        done = []
        for rec in records:
            job = rec.get("job_id") or ""
            kind, _, pid = job.partition(":")
            if rec["state"] not in ACTIVE or kind != "local" or not pid.isdigit():
                continue
            ident = rec.get("process") if isinstance(rec.get("process"), dict) else self._old_record(rec, int(pid))
            if ident is not None and int(ident.get("pid", -1)) == int(pid) and procid.signal_if_same(
                    ident, signal.SIGTERM, group=True):
                done.append(job)
                continue
            now = procid.identify(int(pid))
            if now is not None:
                self.notes.append(f"{job}: pid {pid} is not this cell's training process any more (it runs "
                                  f"`{now['cmdline'][:80]}`): not signalled")
        return done

    def _old_record(self, rec: dict, pid: int) -> dict | None:
        """A ledger without ``process``: the live pid's identity when its command line is this cell's
        training command (`base.cell_command`: ``training.run ... --workdir CELL``), else None."""
        now = procid.identify(pid)
        cmd = f" {now['cmdline']} " if now else ""
        cell_dir = str(self.cell_dir(rec))
        ok = " training.run " in cmd and (f" --workdir {cell_dir} " in cmd
                                          or f" --workdir {os.path.abspath(cell_dir)} " in cmd)
        return now if ok else None
