"""Local executor: cells as child processes of this command (torchrun when ``launcher.nproc > 1``),
``launcher.max_parallel`` at a time (default one), blocking, with a progress line; the same files
and ledger as SLURM (`cell_loop.run_cells`). Ctrl-C sends SIGTERM to the runs (they checkpoint and
exit 75 → ``preempted``; rerun to resume).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

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
        return Running(cell, cell_dir, proc, f"local:{proc.pid}")

    def describe(self, r: Running) -> str:
        return f"started {r.cell.id} (pid {r.handle.pid}): {' '.join(r.handle.args)}"

    def ended(self, running: list[Running], timeout_s: float) -> list[tuple[Running, int]]:
        time.sleep(timeout_s)
        return [(r, rc) for r in running if (rc := r.handle.poll()) is not None]

    def signal(self, running: list[Running], sig: int) -> None:
        for r in running:
            if (r.handle.pid, sig) not in self.signalled:
                self.signalled.add((r.handle.pid, sig))
                try:
                    os.killpg(r.handle.pid, sig)
                except ProcessLookupError:
                    pass


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
        done = []
        for rec in records:
            job = rec.get("job_id") or ""
            if rec["state"] in ACTIVE and job.startswith("local:"):  # the run's process group
                try:
                    os.killpg(int(job.split(":")[1]), signal.SIGTERM)
                    done.append(job)
                except (ProcessLookupError, ValueError):
                    pass
        return done
