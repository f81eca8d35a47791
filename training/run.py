"""Entry point of one training run, whatever started it (laptop, torchrun, SLURM srun, submitit, Ray).

    python -m training.run --config run.yaml --workdir runs/x [key=value ...]    # one process
    torchrun --nproc_per_node 2 -m training.run --config run.yaml --workdir runs/x
    srun python -m training.run --workdir runs/x          # config defaults to WORKDIR/config.yaml

Rank/world/master come from the environment (`training.distributed`). A workdir holding a
complete checkpoint resumes from it. Exit codes: 0 done, 2 bad config (before any work),
75 (`EXIT_PREEMPTED`) checkpointed after a signal / near the SLURM time limit: requeue and rerun
the same command.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import faults
from common.errors import InputError
from common.rundir import CHECKPOINTS_DIR, CONFIG_FILE, EXIT_OK
from common.rundir import EXIT_BAD_INPUT as EXIT_BAD_CONFIG
from common.signals import STOP_SIGNALS
from training import distributed
from training.config import RunConfig, load_run_config, save_config
from training.preempt import EXIT_PREEMPTED

log = logging.getLogger("training.run")



def train(cfg: RunConfig, workdir: Path, on_validation=None) -> int:
    """Train (or resume) the run in `workdir` on this process's rank, then (rank 0, when
    `eval.testsets` is set) evaluate its best checkpoint on them (`training.evaluation.final_eval`); returns
    the exit code. ``on_validation(step, metrics)``: called on rank 0 after each validation
    (``orchestrate tune``).

    Rank 0 holds `WORKDIR/run.lock` for the whole run: a second trainer on the same folder exits 2
    naming the holder (host, pid); a lock left by a dead process is taken over."""
    env = distributed.env_from()
    workdir = Path(workdir)
    faults.set_cell(workdir.resolve().name)  # SE_FAULTS rules aimed at one cell (`cell=`) match this run
    problem = _workdir_problem(workdir)
    if problem:
        log.error("error: %s", problem)
        return EXIT_BAD_CONFIG
    lock = _lock_run_folder(cfg, workdir, env.rank)
    if lock is None:
        return EXIT_BAD_CONFIG
    try:
        return _train_and_evaluate(cfg, workdir, env, on_validation)
    finally:
        lock.release()


def _workdir_problem(workdir: Path) -> str | None:
    """One line when ``workdir`` (or a parent) exists but is not a folder, else None."""
    for p in (workdir, *workdir.parents):
        if p.exists():
            return None if p.is_dir() else f"--workdir {workdir}: {p} is a file, expected a folder"
    return None


def _lock_run_folder(cfg: RunConfig, workdir: Path, rank: int):
    """Rank 0: the run folder's lock (one trainer per folder) and a resumable newest checkpoint
    (readable, same model); None after logging a one-line error. Other ranks: a no-op lock."""
    from common.config import to_container
    from common.runlock import RunLock, RunLockError
    from training.checkpoint import CheckpointError, check_resume

    lock = RunLock(workdir)
    if rank != 0:
        return lock
    try:
        lock.acquire()
    except RunLockError as e:
        log.error("error: %s", e)
        return None
    try:
        check_resume(workdir / CHECKPOINTS_DIR, to_container(cfg)["model"])
    except CheckpointError as e:
        log.error("error: %s", e)
        lock.release()
        return None
    return lock


def _train_and_evaluate(cfg: RunConfig, workdir: Path, env: distributed.DistEnv, on_validation=None) -> int:
    try:  # once per run: training and the evaluation after it run on the same device
        device = distributed.pick_device(cfg.trainer.device, env, cfg.launcher.gpus_per_node)
    except InputError as e:
        log.error("error: %s", e)
        return EXIT_BAD_CONFIG
    if cfg.eval.testsets:  # a metric the end-of-job evaluation cannot compute here fails now, not after training
        from training.evaluation.evaluate import unavailable_metrics_problem

        problem = unavailable_metrics_problem(cfg.eval.metrics)
        if problem:
            log.error("error: eval.metrics: %s", problem)
            return EXIT_BAD_CONFIG
    if env.is_main and cfg.eval.testsets:  # installed first: the trainer's handler restores it, no gap
        from training.preempt import from_environment

        stop = from_environment(cfg.trainer.time_limit_margin_s).install()
        try:
            code = _train(cfg, workdir, env, device, on_validation)
            if code != EXIT_OK:
                if code == EXIT_PREEMPTED:  # the trainer's agreed stop: late stop signals are dropped here too
                    stop.reason = stop.reason or "the training stopped for requeue"
                return code
            from training.evaluation.final_eval import evaluate_after_training

            return evaluate_after_training(cfg, workdir, device, stop)
        except InputError as e:
            log.error("error: evaluation after training: %s", e)
            return EXIT_BAD_CONFIG
        finally:
            stop.uninstall()
    return _train(cfg, workdir, env, device, on_validation)


_exit_kill_registered = False


def kill_daemonic_children() -> None:
    """SIGKILL the daemonic multiprocessing children still alive (DataLoader and PESQ workers). They
    ignore the stop signals (`start_mp_helpers`), so multiprocessing's own exit step, which ends them
    with SIGTERM and then waits for them, would wait forever for one a crash or a caller left running.
    Registered at exit by `start_mp_helpers` (it runs before multiprocessing's step)."""
    import multiprocessing as mp

    for p in mp.active_children():
        if p.daemon:
            p.kill()


def start_mp_helpers() -> None:
    """Start multiprocessing's resource tracker and forkserver now, with the stop signals ignored: they
    inherit SIG_IGN (as do the DataLoader and PESQ workers forked from the forkserver), so USR1/USR2/TERM
    sent to every process of a SLURM step (or a process group) leaves them alive. Outside the main
    thread (a Ray Tune trial) the handlers cannot be changed: the helpers start with the process's own."""
    import multiprocessing as mp
    import threading
    from multiprocessing import forkserver, resource_tracker

    global _exit_kill_registered
    if not _exit_kill_registered:
        atexit.register(kill_daemonic_children)
        _exit_kill_registered = True
    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS} if in_main else {}
    try:
        resource_tracker.ensure_running()
        if "forkserver" in mp.get_all_start_methods():
            from sharding.stream import preload_in_forkserver

            preload_in_forkserver()  # DataLoader workers then start without importing torch again
            forkserver.ensure_running()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _train(cfg: RunConfig, workdir: Path, env: distributed.DistEnv, device, on_validation=None) -> int:
    from training.build import build_trainer

    try:
        start_mp_helpers()
        distributed.init(env, device)
        trainer = build_trainer(cfg, workdir, env, device)
        trainer.on_validation = on_validation
    except InputError as e:
        log.error("error: %s", e)
        distributed.shutdown()
        return EXIT_BAD_CONFIG
    status, code = "FAILED", 1
    try:
        try:
            trainer.resume()
        except InputError as e:
            log.error("error: %s", e)
            return EXIT_BAD_CONFIG
        trainer.open_tracker()
        try:
            code = trainer.fit()
        except InputError as e:  # e.g. a bad sample with data.skip_bad=false
            log.error("error: %s", e)
            return EXIT_BAD_CONFIG
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
                raise
            log.error("error: %s: %s (the newest complete checkpoint is intact; free space and rerun to resume)",
                      e.filename or workdir, e.strerror)
            return EXIT_BAD_CONFIG
        status = "FINISHED" if code == EXIT_OK else "KILLED"
    finally:
        trainer.close(status)
        del trainer  # the DDP model holds the process group and its buckets
        distributed.leave(ok=status != "FAILED")
    return code


def setup_logging(workdir: Path, rank: int) -> None:
    """Console (rank 0: INFO, others: WARNING) and WORKDIR/logs/rank-R.log (INFO)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(fmt)
    root.addHandler(console)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(logs / f"rank-{rank}.log")
    fh.setFormatter(fmt)
    root.addHandler(fh)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cfg: RunConfig, workdir: Path, nproc: int) -> int:
    """Run `nproc` local DDP processes (`python -m training.run`, torchrun-style environment).

    Signals to this process are forwarded to the children (they checkpoint and exit 75). If one
    child fails, the others are terminated. Returns 0, 75 when the run was preempted, else the
    first failing exit code."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = save_config(cfg, workdir / CONFIG_FILE)
    port = free_port()
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env.setdefault("OMP_NUM_THREADS", threads)
        cmd = [sys.executable, "-m", "training.run", "--config", str(config), "--workdir", str(workdir)]
        procs.append(subprocess.Popen(cmd, env=env))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        codes: list[int | None] = [None] * nproc
        while any(c is None for c in codes):
            for i, p in enumerate(procs):
                codes[i] = p.poll()
            failed = [c for c in codes if c not in (None, EXIT_OK, EXIT_PREEMPTED)]
            if failed:
                log.error("rank exit codes %s: stopping the other ranks", codes)
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                for p in procs:
                    p.wait()
                return failed[0]
            time.sleep(0.2)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return EXIT_PREEMPTED if EXIT_PREEMPTED in codes else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run config YAML (default: WORKDIR/config.yaml when it exists)")
    parser.add_argument("--workdir", required=True, help="run directory (checkpoints, logs, mlflow_run_id)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if _workdir_problem(workdir):
        print(f"error: {_workdir_problem(workdir)}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    setup_logging(workdir, distributed.env_from().rank)
    config = args.config
    if config is None and (workdir / CONFIG_FILE).is_file():
        config = workdir / CONFIG_FILE
    try:
        cfg = load_run_config(config, args.overrides)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return train(cfg, workdir)


def ignore_stop_signals() -> None:
    """Ignore the stop signals for the rest of this process: its exit code is decided. The interpreter's
    finalisation puts the default action back for Python-level handlers (not for SIG_IGN), so a late
    stop signal (the launchers' relay reaching a rank after its peers agreed, a second ``scancel``)
    arriving during the teardown after ``main`` would kill the process: exit -15, a preempted or
    finished rank counted as failed. (Blocking would not do: other threads would take the signal.)
    Nothing is started afterwards, so no program inherits the ignored signals."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


if __name__ == "__main__":
    code = main()
    ignore_stop_signals()
    sys.exit(code)
