"""The local executor ends what is left of a cell's process group once its training process exited:
a trainer killed by SIGKILL must not leave its loader workers (here: a grandchild) running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

from orchestrator.launchers.cell_loop import Running
from orchestrator.launchers.local import LocalBackend


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_ended_cell_leaves_no_process_of_its_group(tmp_path):
    pidfile = tmp_path / "worker.pid"
    # the "trainer" starts a worker in its group, then dies by SIGKILL as a killed job does
    code = ("import os, signal, subprocess, sys, time; "
            f"w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(pidfile)!r}, 'w').write(str(w.pid)); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    backend = LocalBackend([])
    r = Running(SimpleNamespace(id="c0"), tmp_path, proc, f"local:{proc.pid}")
    done = []
    for _ in range(100):
        done = backend.ended([r], 0.1)
        if done:
            break
    assert done == [(r, -9)]
    worker = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(worker):
            break
        time.sleep(0.1)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)  # not left behind by the failing test
    assert not alive, "the killed trainer's worker still runs"
