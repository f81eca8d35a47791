"""A DDP cell on Ray: a Ray Train ``TorchTrainer`` group of ``launcher.nodes × launcher.nproc`` workers.

Each worker runs the cell's module command (``python -m training.run``, `base.cell_command`) as
a child process with a torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), so the run is the same code as under SLURM or locally: the same checkpoints in the
cell folder, the same MLflow run (re-opened by id), the same preemption protocol (the child's
signal handlers, all ranks agree at a step boundary, exit 75). Ray Train's own process group
(gloo) is used once, to agree on the training's rendezvous (rank 0's node address and a free
port); the training's group is gloo on CPU and NCCL/RCCL on GPU (`training.distributed`).

Failures: a worker whose training process dies raises, Ray Train tears the group down
(the children die with their workers: ``PR_SET_PDEATHSIG``) and restarts it up to
``MAX_FAILURES`` times (``FailureConfig``); the new group's training resumes from the newest
complete checkpoint in the cell folder. Exit 75 (preempted) and 2 (bad config) are not retried:
the exit code reaches the ledger as with the other launchers.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

from common import procid
from common.atomic import atomic_write_text
from common.rundir import EXIT_BAD_INPUT, EXIT_OK, EXIT_PREEMPTED
from orchestrator.launchers.base import cell_command

MAX_FAILURES = 3
PID_DIR = ".ray-ranks"  # CELL/.ray-ranks/<rank>.pid: "<ray node id> <pid>" of each rank's training process


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


def ddp_worker(config: dict) -> None:
    """One Ray Train worker (``train_loop_per_worker``): rank ``world_rank`` of the cell's run."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world, local = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
    addr, port = _rendezvous()
    cell_dir = Path(config["cell_dir"])
    env = {**os.environ, **config.get("env", {}), "RANK": str(rank), "WORLD_SIZE": str(world),
           "LOCAL_RANK": str(local), "MASTER_ADDR": addr, "MASTER_PORT": str(port)}
    with open(cell_dir / "launcher.log", "ab") as logf:
        proc = subprocess.Popen(cell_command(cell_dir), stdout=logf, stderr=subprocess.STDOUT, env=env,
                                cwd=config["cwd"], preexec_fn=die_with_parent)
    write_pid(cell_dir, rank, proc.pid)
    pids = cell_dir / PID_DIR
    rc = proc.wait()
    if rc not in (EXIT_OK, EXIT_PREEMPTED, EXIT_BAD_INPUT):
        raise WorkerFailed(f"rank {rank}: training process exited {rc}")
    if rank == 0:  # the group's outcome, for fit_cell (the training's own ranks agreed on it)
        (pids / "exit_code").write_text(f"{rc}\n")


def fit_cell(cell_dir: Path, launcher, *, cwd: str, env: dict[str, str] | None = None) -> int:
    """Run one DDP cell (``launcher``: its `LauncherConfig`) as a TorchTrainer group; returns its exit code
    (0, 75, 2 or 1 = failed)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    workers = launcher.nodes * launcher.nproc
    gpus = launcher.gpus_per_node > 0
    resources = {"CPU": launcher.cpus_per_task, **({"GPU": 1} if gpus else {})}
    trainer = TorchTrainer(
        ddp_worker,
        train_loop_config={"cell_dir": str(cell_dir), "cwd": cwd, "env": dict(env or {})},
        torch_config=TorchConfig(backend="gloo"),  # only the rendezvous; training picks its own backend
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus, resources_per_worker=resources,
                                     placement_strategy="SPREAD" if launcher.nodes > 1 else "PACK"),
        run_config=RunConfig(name="ray-train", storage_path=str(Path(cell_dir).resolve() / "ray"),
                             failure_config=FailureConfig(max_failures=MAX_FAILURES)),
    )
    outcome = Path(cell_dir) / PID_DIR / "exit_code"
    outcome.unlink(missing_ok=True)
    clear_pids(cell_dir)
    try:
        trainer.fit()
    except Exception as e:  # the group failed more than MAX_FAILURES times
        with open(Path(cell_dir) / "launcher.log", "a") as f:
            f.write(f"ray train: {e}\n")
        return 1
    try:
        return int(outcome.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 1


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
    remote = ray.remote(_kill).options(num_cpus=0)
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
