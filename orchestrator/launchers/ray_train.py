"""A cell on Ray: a Ray Train ``TorchTrainer`` group of ``launcher.nodes × launcher.nproc`` workers
(one for a one-process cell).

Each worker runs the cell's module command (``python -m training.run``, `base.cell_command`) as
a child process, in a DDP group with a torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), so the run is the same code as under SLURM or locally: the same checkpoints in the
cell folder, the same MLflow run (re-opened by id), the same preemption protocol (the child's
signal handlers, all ranks agree at a step boundary, exit 75). Ray Train's own process group
(gloo) is used once, to agree on the training's rendezvous (rank 0's node address and a free
port); the training's group is gloo on CPU and NCCL/RCCL on GPU (`training.distributed`).

Failures: a worker whose training process dies raises, Ray Train tears the group down
(the children die with their workers: ``PR_SET_PDEATHSIG``) and restarts it up to
``MAX_FAILURES`` times (``FailureConfig``); the new group's training resumes from the newest
complete checkpoint in the cell folder. Exit 75 (preempted) and 2 (bad config) are not retried:
the exit code reaches the ledger as with the other launchers.

Progress: every ``REPORT_EVERY_S`` the workers report rank 0's ``progress.json`` figures and the
latest metrics of the cell's MLflow run to Ray (`_follow`, ``ray.train.report``); the last report
is kept in ``CELL/.ray-ranks/reported.json``.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from common import procid
from common.atomic import atomic_write_text
from common.rundir import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_PREEMPTED,
    PROGRESS_FILE,
    RUN_ID_FILE,
)
from orchestrator.launchers.base import cell_command

MAX_FAILURES = 3
PID_DIR = ".ray-ranks"  # CELL/.ray-ranks/<rank>.pid: "<ray node id> <pid>" of each rank's training process
REPORTED_FILE = "reported.json"  # CELL/.ray-ranks/reported.json: the last metrics reported to Ray (Result.metrics)
REPORT_EVERY_S = 2.0  # how often the workers report a cell's progress to Ray
REPORTED = ("step", "max_steps", "best_pesq", "last_val_pesq", "last_val_step")  # from progress.json


class WorkerFailed(RuntimeError):
    """A rank's training process died: Ray Train restarts the group (FailureConfig)."""


def die_with_parent() -> None:
    """In the child: SIGKILL when the Ray worker that started it dies (Linux prctl)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _rendezvous() -> tuple[str, int]:
    """Rank 0's node address and a free port there, agreed through Ray Train's gloo group."""
    import ray
    import torch.distributed as dist

    obj: list = [None]
    if dist.get_rank() == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            obj = [(ray.util.get_node_ip_address(), s.getsockname()[1])]
    dist.broadcast_object_list(obj, src=0)
    return obj[0]


def _progress_metrics(cell_dir: Path, last: dict) -> dict:
    """What rank 0 reports to Ray: the step and validation figures of ``progress.json`` and the latest
    value of each metric of the cell's MLflow run (losses, validation; asked only when those figures
    changed since ``last``), numbers only; {} before the first."""
    from common.progress import read_progress

    p = read_progress(cell_dir)
    out = {k: p[k] for k in REPORTED if isinstance(p.get(k), (int, float)) and not isinstance(p.get(k), bool)}
    if "step" not in out:
        return {}
    if all(last.get(k) == v for k, v in out.items()):
        return last
    return {**out, **_mlflow_latest(cell_dir)}


@functools.lru_cache(maxsize=4)
def _mlflow_client(uri: str):
    import mlflow.tracking

    return mlflow.tracking.MlflowClient(tracking_uri=uri)


def _mlflow_latest(cell_dir: Path) -> dict:
    """The latest value of every metric of the cell's MLflow run ({} without one or when unreachable)."""
    try:
        from common.config import load_yaml

        run_id = (cell_dir / RUN_ID_FILE).read_text().strip()
        uri = (load_yaml(cell_dir / CONFIG_FILE).get("mlflow") or {}).get("tracking_uri")
        if not run_id or not uri:
            return {}
        return {k: float(v) for k, v in _mlflow_client(uri).get_run(run_id).data.metrics.items()}
    except Exception:  # best effort: progress for the dashboard, never a reason to fail the cell
        return {}


def _follow(proc: subprocess.Popen, rank: int, cell_dir: Path) -> int:
    """Wait for this rank's training process while the group reports rank 0's progress to Ray
    (`ray.train.report`, a barrier: every rank calls it equally often, so the ranks agree each
    ``REPORT_EVERY_S`` through Ray Train's gloo group on what to report and on whether all ended).
    A rank whose process failed returns at once (Ray Train then tears the group down)."""
    import torch.distributed as dist

    last: dict = {}
    while True:
        rc = proc.poll()
        if rc is None:
            try:
                rc = proc.wait(timeout=REPORT_EVERY_S)
            except subprocess.TimeoutExpired:
                rc = None
        if rc is not None and rc not in (EXIT_OK, EXIT_PREEMPTED, EXIT_BAD_INPUT):
            return rc
        mine = (rc is not None, _progress_metrics(cell_dir, last) if rank == 0 else None)
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        metrics = everyone[0][1]
        if metrics and metrics != last:
            _report(metrics, cell_dir if rank == 0 else None)
            last = metrics
        if all(ended for ended, _m in everyone):
            return rc


def _report(metrics: dict, cell_dir: Path | None) -> None:
    """``ray.train.report`` of ``metrics``; rank 0 (``cell_dir`` given) attaches a small Ray checkpoint:
    those metrics (``progress.json``) and the path of the cell's newest complete checkpoint
    (``cell_checkpoint``); Ray Train V2 keeps metrics only with a checkpoint (Result.metrics, the
    metrics dataframe, the dashboard's run)."""
    import ray.train

    if cell_dir is None:
        ray.train.report(metrics)
        return
    from training.checkpoint import CheckpointManager

    with tempfile.TemporaryDirectory(dir=cell_dir / PID_DIR) as tmp:
        (Path(tmp) / PROGRESS_FILE).write_text(json.dumps(metrics) + "\n")
        newest = CheckpointManager(cell_dir / CHECKPOINTS_DIR).latest()
        (Path(tmp) / "cell_checkpoint").write_text(f"{newest or ''}\n")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def ddp_worker(config: dict) -> None:
    """One Ray Train worker (``train_loop_per_worker``): rank ``world_rank`` of the cell's run."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world, local = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
    addr, port = _rendezvous()
    cell_dir = Path(config["cell_dir"])
    env = {**os.environ, **config.get("env", {})}
    if world > 1:  # one worker: the same environment as a one-process run anywhere else
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local), MASTER_ADDR=addr,
                   MASTER_PORT=str(port))
    with open(cell_dir / "launcher.log", "ab") as logf:
        proc = subprocess.Popen(cell_command(cell_dir), stdout=logf, stderr=subprocess.STDOUT, env=env,
                                cwd=config["cwd"], preexec_fn=die_with_parent)
    write_pid(cell_dir, rank, proc.pid)
    rc = _follow(proc, rank, cell_dir)
    if rc not in (EXIT_OK, EXIT_PREEMPTED, EXIT_BAD_INPUT):
        raise WorkerFailed(f"rank {rank}: training process exited {rc}")
    if rank == 0:  # the group's outcome, for fit_cell (the training's own ranks agreed on it)
        atomic_write_text(cell_dir / PID_DIR / "exit_code", f"{rc}\n")


def fit_cell(cell_dir: Path, launcher, *, cwd: str, env: dict[str, str] | None = None) -> int:
    """Run one cell (``launcher``: its `LauncherConfig`) as a TorchTrainer group of ``nodes × nproc``
    workers; returns its exit code (0, 75, 2 or 1 = failed)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    workers = launcher.nodes * launcher.nproc
    gpus = launcher.gpus_per_node > 0
    per_worker_gpus = launcher.gpus_per_node if workers == 1 else 1  # a one-process cell: all its GPUs
    resources = {"CPU": launcher.cpus_per_task, **({"GPU": per_worker_gpus} if gpus else {})}
    trainer = TorchTrainer(
        ddp_worker,
        train_loop_config={"cell_dir": str(cell_dir), "cwd": cwd, "env": dict(env or {})},
        torch_config=TorchConfig(backend="gloo"),  # only the rendezvous; training picks its own backend
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus, resources_per_worker=resources,
                                     placement_strategy="SPREAD" if launcher.nodes > 1 else "PACK"),
        run_config=RunConfig(name="ray-train", storage_path=str(Path(cell_dir).resolve() / "ray"),
                             failure_config=FailureConfig(max_failures=MAX_FAILURES),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    outcome = Path(cell_dir) / PID_DIR / "exit_code"
    outcome.unlink(missing_ok=True)
    clear_pids(cell_dir)
    try:
        result = trainer.fit()
    except Exception as e:  # the group failed more than MAX_FAILURES times
        with open(Path(cell_dir) / "launcher.log", "a") as f:
            f.write(f"ray train: {e}\n")
        return 1
    if result.metrics is not None:
        atomic_write_text(Path(cell_dir) / PID_DIR / REPORTED_FILE, json.dumps(result.metrics, default=str) + "\n")
    try:
        return int(outcome.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 1


def fit_cell_task(cell_dir: str, launcher, cwd: str, env: dict[str, str]) -> int:
    """`fit_cell` as a Ray task (``num_cpus=0``: the workers hold the cell's resources), so the sweep
    command's own loop keeps running beside it: other cells start and end meanwhile, and its Ctrl-C /
    SIGTERM handler stays the one in force. ``fit`` runs in a thread: Ray Train installs its own
    SIGINT handler (abort the run, no checkpoint) only from a main thread."""
    box: list[int] = [1]

    def run() -> None:
        box[0] = fit_cell(Path(cell_dir), launcher, cwd=cwd, env=env)

    thread = threading.Thread(target=run, name=f"fit {Path(cell_dir).name}")
    thread.start()
    thread.join()
    return box[0]


def write_pid(cell_dir: Path, rank: int, pid: int) -> None:
    """Inside a Ray worker: record the training process of ``rank``, the Ray node it runs on and, on a
    second line, its identity (`common.procid`, JSON), which every signal checks first."""
    import ray

    folder = Path(cell_dir) / PID_DIR
    folder.mkdir(exist_ok=True)
    ident = json.dumps(procid.identify(pid))  # Popen returned after the exec: the training command
    atomic_write_text(folder / f"{rank}.pid", f"{ray.get_runtime_context().get_node_id()} {pid}\n{ident}\n")


def read_pid_records(cell_dir: Path) -> dict[int, tuple[str, int, dict | None]]:
    """``{rank: (ray node id, pid, identity or None)}`` of the training processes the workers started."""
    out = {}
    for f in (Path(cell_dir) / PID_DIR).glob("*.pid"):  # (exit_code is rank 0's outcome)
        try:
            first, _, rest = f.read_text().partition("\n")
            node, pid = first.split()
            ident = json.loads(rest) if rest.strip() else None
            out[int(f.stem)] = (node, int(pid), ident if isinstance(ident, dict) else None)
        except (OSError, ValueError):
            continue
    return out


def read_pid_files(cell_dir: Path) -> dict[int, tuple[str, int]]:
    """``{rank: (ray node id, pid)}`` of the training processes the workers started."""
    return {rank: (node, pid) for rank, (node, pid, _ident) in read_pid_records(cell_dir).items()}


def read_pids(cell_dir: Path) -> dict[int, int]:
    """``{rank: pid}`` of the training processes the workers started (for tests and cancel)."""
    return {rank: pid for rank, (_node, pid) in read_pid_files(cell_dir).items()}


def _kill(pid: int, sig: int, identity: dict | None = None) -> None:
    """Signal a rank's training process, on its node, only while it still is that process (its recorded
    identity; a pid file without one, from an older version: the pid as before)."""
    if identity is not None:
        procid.signal_if_same(identity, sig)
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def clear_pids(cell_dir: Path) -> None:
    """Before an attempt starts: forget the previous attempt's processes (their pids may be reused)."""
    for f in (Path(cell_dir) / PID_DIR).glob("*.pid"):
        f.unlink(missing_ok=True)


def signal_cell(cell_dir: Path, sig: int = signal.SIGTERM, skip: set | None = None) -> set:
    """Send ``sig`` to every rank's training process of a cell running on Ray, on whichever node it runs
    (this process's node directly, another node through a Ray task pinned there), except the
    ``(node, pid)`` in ``skip``; returns the ``(node, pid)`` signalled."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    remote = ray.remote(num_cpus=0)(_kill)
    waits = []
    records = {(node, pid): ident for node, pid, ident in read_pid_records(cell_dir).values()}
    procs = {x for x in records if x not in (skip or set())}
    for node, pid in procs:
        if node == here:
            _kill(pid, sig, records[node, pid])
        else:
            strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
            waits.append(remote.options(scheduling_strategy=strategy).remote(pid, int(sig), records[node, pid]))
    if waits:
        ray.get(waits, timeout=30)
    return procs
