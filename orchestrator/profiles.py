"""Cluster profiles: data (``slurm/<name>.yaml``) loaded into a dataclass, never code.

A profile says how jobs run on one cluster: default resources (launcher.* keys, overridden by a
sweep's ``resources``), the srun CPU binding, environment, setup lines (``module load ...``), an
optional container and the preemption settings (signal before the time limit, requeue).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from common.config import ConfigError, build_config, load_yaml, option

PROFILE_DIR = Path(__file__).resolve().parent.parent / "slurm"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_KEYS = (
    "nodes", "nproc", "gpus_per_node", "cpus_per_task", "mem_gb", "time_min",
    "partition", "account", "qos", "max_parallel",
)


@dataclass
class ContainerConfig:
    image: Optional[str] = option(None, "container image (.sif); null = run on the host")
    exec: str = option("singularity exec", "the command that runs a program inside the image")
    binds: list[str] = option(help="bind mounts, each 'src[:dst]' (passed as -B)", factory=list)
    args: list[str] = option(help="extra arguments of the exec command (e.g. --rocm, --nv)", factory=list)


@dataclass
class ClusterProfile:
    name: str = option("local", "profile name")
    description: str = option("", "one line about the cluster")
    defaults: dict[str, Any] = option(help="default launcher.* resources; a sweep's `resources` wins", factory=dict)
    cpu_bind: Optional[str] = option(None, "srun --cpu-bind value (e.g. LUMI's mask_cpu:...)")
    cpu_bind_full_node_gpus: Optional[int] = option(
        None, "apply cpu_bind only to jobs holding this many GPUs per node (a whole node); null = always", ge=1)
    srun_args: list[str] = option(help="extra srun arguments", factory=list)
    sbatch_extra: list[str] = option(help="extra #SBATCH options, e.g. --exclusive", factory=list)
    setup: list[str] = option(help="shell lines run before srun (module load, source ...)", factory=list)
    env: dict[str, str] = option(help="exported before srun; values are shell words ($VAR expands)", factory=dict)
    task_env: dict[str, str] = option(help="exported inside each task ($SLURM_LOCALID expands per task)", factory=dict)
    container: ContainerConfig = option(help="optional container", factory=ContainerConfig)
    python: Optional[str] = option(
        None, "the Python that runs `-m training.run` (inside the container if any); null = the submitter's"
    )
    master_addr: Optional[str] = option(None, "override MASTER_ADDR (default: first node of the job)")
    signal_before_end_s: int = option(300, "ask SLURM for SIGUSR2 this many seconds before the time limit", ge=0)
    requeue: bool = option(True, "requeue the job when the run exits 75 (preempted / out of time)")
    array_parallel: Optional[int] = option(
        None, "at most this many array tasks at once (--array=...%N); a sweep's resources.max_parallel, if "
        "smaller, wins", ge=1)
    max_array_size: Optional[int] = option(
        None, "the cluster's MaxArraySize (tasks per job array; larger sweeps are split); null = ask "
        "`scontrol show config`, else SLURM's default 1001", ge=1)
    mlflow_host: Optional[str] = option(
        None, "address (of this, the submitting node) that the sweep's MLflow server binds and compute nodes "
        "reach; null = what the host name resolves to"
    )

    def __post_init__(self):
        for k in self.defaults:
            if k not in DEFAULT_KEYS:
                raise ConfigError(f"defaults.{k}: unknown resource (valid: {', '.join(DEFAULT_KEYS)})", f"defaults.{k}")
        for section in ("env", "task_env"):
            for k, v in getattr(self, section).items():
                if not _ENV_NAME.match(k):
                    raise ConfigError(f"{section}.{k}: not a valid environment variable name", f"{section}.{k}")
                if any(c in v for c in '"`\\\n'):
                    raise ConfigError(f"{section}.{k}: value may not contain '\"', '`', '\\' or newlines", f"{section}.{k}")

    def cpu_bind_for(self, gpus_per_node: int) -> Optional[str]:
        """The srun --cpu-bind of a job with `gpus_per_node` GPUs per node: per-GPU CPU masks are
        written for a whole node (LUMI-G: 8 GCDs); on part of a node the cores SLURM hands out are
        others, so no mask (SLURM's default binding) instead of a wrong one."""
        if self.cpu_bind_full_node_gpus is not None and gpus_per_node != self.cpu_bind_full_node_gpus:
            return None
        return self.cpu_bind


def profile_path(name_or_path: str) -> Path:
    """``lumi`` → ``slurm/lumi.yaml`` of this repository; a path is returned as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return PROFILE_DIR / f"{name_or_path}.yaml"


def load_profile(name_or_path: str) -> ClusterProfile:
    """Load and check a profile; errors (ConfigError) name the file and the key."""
    path = profile_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"{path}: cluster profile not found (known: {', '.join(known)})")
    return build_config(ClusterProfile, [(str(path), load_yaml(path))])


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
