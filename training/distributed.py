"""Distributed setup: the ONE module that reads the launcher's environment.

Sources, first match wins:
- torchrun / `orchestrate train --nproc N`: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
- SLURM `srun` tasks: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR = first host of
  SLURM_JOB_NODELIST (`scontrol show hostnames`, else a built-in parser); MASTER_PORT derived from
  SLURM_JOB_ID. MASTER_ADDR / MASTER_PORT in the environment override both;
- otherwise one process.

Gradients are averaged by an explicit, bucketed all-reduce (`average_gradients`) instead of the
DDP wrapper: the metric discriminator is called several times per step on different inputs,
which DDP's one-forward-one-backward reducer does not allow without extra flags.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank in [0, world_size), local_rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # "single" | "torchrun" | "slurm"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list: "a[01-03,7],b" -> ["a01", "a02", "a03", "a7", "b"]."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            for i in range(int(lo), int(hi) + 1):
                hosts.append(f"{prefix}{str(i).zfill(len(lo))}{suffix}")
    return hosts


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return expand_nodelist(nodelist)[0]


def env_from(environ: dict[str, str] | None = None) -> DistEnv:
    """Read rank/world/master from the environment (torchrun, SLURM srun or nothing)."""
    env = os.environ if environ is None else environ
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            master_addr=addr or "127.0.0.1",
            master_port=int(port or 29500),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        if not addr:
            nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
            addr = _first_slurm_host(nodelist)
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            master_addr=addr,
            master_port=int(port or 20000 + job % 20000),
            source="slurm",
        )
    return DistEnv()


def slurm_job_id(environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get("SLURM_JOB_ID") or None


def slurm_end_time(environ: dict[str, str] | None = None) -> float | None:
    """The job's end as a unix time: SLURM_JOB_END_TIME, else `squeue -o %L` (time left) + now."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_END_TIME"):
        return float(env["SLURM_JOB_END_TIME"])
    job = slurm_job_id(env)
    if not job:
        return None
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        # the first task's SLURM_JOB_ID is the array's id, which squeue expands to every task
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%L"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    left = parse_slurm_duration(lines[0]) if out.returncode == 0 and lines else None
    return None if left is None else time.time() + left


def parse_slurm_duration(text: str) -> float | None:
    """SLURM time ("days-hh:mm:ss", "hh:mm:ss", "mm:ss", "UNLIMITED") -> seconds or None."""
    text = text.strip()
    if not text or text.upper() in {"UNLIMITED", "INVALID", "NOT_SET"}:
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts[-3:]
    return float(((days * 24 + h) * 60 + m) * 60 + s)


def hostname() -> str:
    return socket.gethostname()


def gpu_visibility() -> str:
    """Why torch sees the GPUs it sees: its build and the visibility variables (for error messages)."""
    build = (f"ROCm {torch.version.hip}" if torch.version.hip else
             f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build")
    names = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "SLURM_JOB_GPUS",
             "SLURM_STEP_GPUS")
    env = ", ".join(f"{n}={os.environ[n]!r}" for n in names if n in os.environ) or "no *_VISIBLE_DEVICES set"
    count = torch.cuda.device_count() if torch.version.cuda or torch.version.hip else 0
    return f"torch {torch.__version__} ({build}) sees {count} GPU(s); {env}"


def pick_device(requested: str, env: DistEnv, gpus_per_node: int = 0) -> torch.device:
    """The device of this rank. "auto" -> its GPU (local_rank modulo the visible count) when one is
    visible, else CPU; otherwise torch.device(requested) ("cuda" gets this rank's index).

    A GPU request without a visible GPU is a ConfigError naming the reason, never a silent CPU run:
    `requested` "cuda[:N]", or "auto" with `gpus_per_node` > 0 (the launcher asked for GPUs)."""
    from common.config import ConfigError

    wants_gpu = requested.startswith("cuda") or (requested == "auto" and gpus_per_node > 0)
    if wants_gpu and not torch.cuda.is_available():
        key = "trainer.device" if requested != "auto" else "launcher.gpus_per_node"
        what = f"trainer.device={requested}" if requested != "auto" else f"launcher.gpus_per_node={gpus_per_node}"
        raise ConfigError(f"{what} but no GPU is visible to this process: {gpu_visibility()}; a broken "
                          "container or GPU binding? (trainer.device=cpu trains on CPU on purpose)", key)
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", env.local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
    return dev


def init(env: DistEnv, device: torch.device, timeout_s: int = 600) -> None:
    """Join the process group (gloo on CPU, NCCL/RCCL on GPU); a no-op for one process."""
    if not env.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=_dt.timedelta(seconds=timeout_s),
    )


def shutdown(barrier: bool = False) -> None:
    """Leave the process group; with `barrier`, first wait until every rank got here."""
    if dist.is_initialized():
        if barrier and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def leave(ok: bool) -> None:
    """Leave the process group at the end of a rank's work, the way every caller must.

    Call it after dropping the references to models, optimisers and pending collective handles:
    gloo objects still alive when the interpreter finalises can abort a process after a successful
    run ("terminate called without an active exception", SIGABRT). It collects them while the
    interpreter is fully alive, then leaves together with the other ranks when `ok` (a failed
    rank's peers must not wait for it in a barrier).
    """
    gc.collect()
    shutdown(barrier=ok)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum | max | min) across ranks; identity for one process."""
    if _active():
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(t, op=ops[op])
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on any rank (all-reduce MAX)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce(t, "max").item() > 0)


def average_gradients(params, world_size: int) -> None:
    """Average `.grad` of `params` across ranks with one flat all-reduce per dtype/device."""
    if world_size <= 1 or not _active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    groups: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.dtype, g.device), []).append(g)
    for group in groups.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world_size)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def average_batchnorm_stats(module: torch.nn.Module) -> None:
    """Average the BatchNorm running mean/var of `module` across ranks (one all-reduce; no-op for one
    process or a module without BatchNorm). Gradients are averaged explicitly (no DDP wrapper, see
    above), so without this each rank's running statistics would drift apart with its own data
    (MP-SENet's Conformer), and validation and checkpoints would depend on the rank."""
    if not _active():
        return
    stats = [b for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             for b in (m.running_mean, m.running_var) if b is not None]
    if not stats:
        return
    flat = torch.cat([b.reshape(-1) for b in stats])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(dist.get_world_size())
    offset = 0
    for b in stats:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from `src` to every rank (identity for one process)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
