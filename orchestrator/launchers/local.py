"""Local executor: cells as child processes (torchrun when ``launcher.nproc > 1``), at most
``launcher.max_parallel`` at a time, blocking, with a progress line; same files and ledger as SLURM.
Ctrl-C sends SIGTERM to the runs (they checkpoint and exit 75 → ``preempted``; rerun to resume).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.launchers import base
from orchestrator.ledger import ACTIVE, Ledger, set_state


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


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cell_alive(rec: dict, cell_dir: Path) -> bool:
    """Whether a local cell recorded as active still has a live process on this machine.

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
    if kind == "local-claim":
        return True
    cmd = _cmdline(pid)
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


def record_start(sweep_dir: Path, cell_id: str, cell_dir: Path, job_id: str) -> None:
    base.clear_exit_code(cell_dir)
    _attempt_line(cell_dir, f"start {job_id}")
    with Ledger(sweep_dir).locked() as data:
        rec = data["cells"][cell_id]
        set_state(rec, "running", job_id=job_id, job_ids=[*rec.get("job_ids", []), job_id],
                  submissions=rec.get("submissions", 0) + 1, attempts=rec.get("attempts", 0) + 1,
                  exit_code=None, reason=None)


def record_end(sweep_dir: Path, cell_id: str, cell_dir: Path, rc: int) -> str:
    base.write_exit_code(cell_dir, rc)
    _attempt_line(cell_dir, f"end rc={rc}")
    state = base.state_from_exit_code(rc)
    with Ledger(sweep_dir).locked() as data:
        rec = data["cells"][cell_id]
        set_state(rec, state, exit_code=rc, mlflow_run_id=base.read_run_id(cell_dir) or rec.get("mlflow_run_id"))
    return state


def progress_line(running: dict[str, Path], finished: int, total: int) -> str:
    parts = []
    for cid, cdir in running.items():
        p = base.read_progress(cdir)
        step = f"{p.get('step', 0)}/{p.get('max_steps', '?')}" if p else "starting"
        if p.get("state") == "evaluating":  # the end-of-run evaluation on the test sets
            step += " (evaluating)"
        parts.append(f"{cid} {step}")
    return f"[{finished}/{total} finished] " + ("; ".join(parts) if parts else "")


def run_local(
    sweep_dir: Path,
    cells: list,
    *,
    out: Callable[[str], None] = print,
    poll_s: float = 1.0,
    report_every_s: float = 10.0,
) -> int:
    """Run ``[(Cell, cell_dir), ...]``; returns 0 when every cell ended done, else 1."""
    sweep_dir = Path(sweep_dir)
    queue = list(cells)
    total = len(queue)
    max_parallel = max(1, min(c.config["launcher"]["max_parallel"] for c, _ in cells)) if cells else 1
    running: dict[str, tuple[subprocess.Popen, Path]] = {}
    states: dict[str, str] = {}
    last_report = 0.0
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY=os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"))
    try:
        while queue or running:
            while queue and len(running) < max_parallel:
                cell, cdir = queue.pop(0)
                cdir.mkdir(parents=True, exist_ok=True)
                busy = claim(sweep_dir, cell.id, cdir)
                if busy:
                    out(f"{cell.id}: {busy} (left alone)")
                    total -= 1
                    continue
                cmd = base.cell_command(cdir, nproc=cell.config["launcher"]["nproc"])
                logf = open(cdir / "launcher.log", "ab")  # noqa: SIM115 (closed with the process)
                proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
                logf.close()
                record_start(sweep_dir, cell.id, cdir, f"local:{proc.pid}")
                running[cell.id] = (proc, cdir)
                out(f"started {cell.id} (pid {proc.pid}): {' '.join(cmd)}")
            time.sleep(poll_s)
            for cid, (proc, cdir) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[cid]
                states[cid] = record_end(sweep_dir, cid, cdir, rc)
                out(f"{cid}: {states[cid]} (exit {rc}; log {cdir / 'launcher.log'})")
            if time.monotonic() - last_report >= report_every_s and running:
                last_report = time.monotonic()
                out(progress_line({k: v[1] for k, v in running.items()}, len(states), total))
    except KeyboardInterrupt:
        out("interrupted: asking the running cells to checkpoint (SIGTERM) ...")
        for proc, _cdir in running.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for cid, (proc, cdir) in running.items():
            try:
                rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            states[cid] = record_end(sweep_dir, cid, cdir, rc)
        raise
    return 0 if all(s == "done" for s in states.values()) else 1


class LocalLauncher(base.Launcher):
    """Cells as child processes of this command (blocking); ``job_id`` is ``local:<pid>``."""

    name = "local"

    def recover(self, data: dict) -> None:
        for rec in data["cells"].values():  # an interrupted local sweep: 'running' cells without a live process
            if rec["state"] in ACTIVE and not cell_alive(rec, self.cell_dir(rec)):
                set_state(rec, "preempted", reason="interrupted (no live process)")

    def submit(self, cells: list, out: Callable[[str], None] = print) -> int:
        return run_local(self.sweep_dir, cells, out=out)

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
