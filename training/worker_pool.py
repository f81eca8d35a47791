"""Process pools for CPU-bound side work (metric scoring, the discriminator's PESQ targets).

``make_pool(num_workers, niceness)``: workers start with 'forkserver' (or 'spawn': fork is unsafe once
torch/CUDA threads exist in the parent), ignore SIGINT and the preemption signals (only the rank's
main process handles them), exit when their parent dies, and optionally run at a lower CPU priority.
Functions sent to them must live in torch-free modules, so workers start quickly.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from concurrent.futures import ProcessPoolExecutor

from common.signals import STOP_SIGNALS


def _watch_parent(parent_pid: int) -> None:
    """Worker side: exit when the parent dies (a killed trainer must not leave orphan workers)."""
    import time

    parent = mp.parent_process()
    if parent is not None and getattr(parent, "sentinel", None) is not None:
        parent.join()  # returns when the parent's sentinel pipe closes, i.e. the parent exited
        os._exit(1)
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(1)


def _worker_init(parent_pid: int, niceness: int = 0, setup=None, setup_args: tuple = ()) -> None:
    import signal

    if niceness:
        os.nice(niceness)

    # The parent owns SIGINT and the preemption signals USR1/USR2/TERM (SLURM signals every process of
    # a step); a worker killed by them would break the pool in the middle of a step or an evaluation.
    # Workers exit when the parent closes the pool or dies.
    for s in (*STOP_SIGNALS, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if setup is not None:
        setup(*setup_args)


def pool_context() -> mp.context.BaseContext:
    """'forkserver' on Linux (fork is unsafe once torch/CUDA threads exist in the parent), else 'spawn'."""
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def make_pool(num_workers: int, niceness: int = 0, setup=None, setup_args: tuple = ()) -> ProcessPoolExecutor:
    """A process pool whose workers ignore SIGINT/SIGTERM and exit with their parent; ``niceness``
    lowers their CPU priority (background work that must not slow the process that feeds the GPU);
    ``setup(*setup_args)`` runs once in each worker after that (e.g. load a model)."""
    return ProcessPoolExecutor(max_workers=num_workers, mp_context=pool_context(),
                               initializer=_worker_init, initargs=(os.getpid(), niceness, setup, setup_args))
