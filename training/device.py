"""What a run runs on: the numeric settings that fit its device, and the facts every run records.

- `numerics(device, deterministic, tf32)`: deterministic kernels ("auto": on for CPU, where they
  give bitwise resume; off on GPU, where they cost speed, NaN-fill every `torch.empty` and warn on
  cuBLAS calls; cuDNN autotuning then on for NVIDIA, MIOpen's left off); TF32 for fp32
  matmuls/convolutions on NVIDIA (a switch; ignored on CPU and ROCm).
- `runtime_facts(device, world_size)`: device, collective backend, world size, torch / CUDA / ROCm
  versions, the scan backend and the mamba-ssm / causal-conv1d versions, as `se.*` string tags for
  MLflow and one log line.
The device itself is chosen by `training.distributed.pick_device` (which refuses a GPU request
without a visible GPU).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def deterministic_for(device: torch.device, setting: bool | str) -> bool:
    """`trainer.deterministic` resolved: "auto" -> True on CPU, False on GPU."""
    if setting == "auto":
        return device.type == "cpu"
    return bool(setting)


def numerics(device: torch.device, deterministic: bool, tf32: bool) -> None:
    """Apply the process-wide kernel settings for `device` (call once, before building models)."""
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    nvidia = device.type == "cuda" and torch.version.hip is None
    # cuDNN autotuning only where results need not be reproducible, and not on ROCm: MIOpen's
    # benchmark mode searches exhaustively for every new shape (validation has many lengths) and
    # its results land in the job-local MIOPEN_USER_DB_PATH, i.e. are searched again every requeue
    torch.backends.cudnn.benchmark = nvidia and not deterministic
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32 and nvidia)
    torch.backends.cudnn.allow_tf32 = bool(tf32 and nvidia)
    if tf32 and not nvidia:
        log.info("trainer.tf32 has no effect on %s%s", device, " (ROCm)" if torch.version.hip else "")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def runtime_facts(device: torch.device, world_size: int, *, deterministic: bool | None = None,
                  tf32: bool | None = None, precision: str | None = None) -> dict[str, str]:
    """`se.*` tags describing where and with what this run trains (all values strings)."""
    from training.mamba import kernels, scan

    try:
        scan_backend = scan.choose_backend(device.type)
    except scan.ScanBackendError as e:
        scan_backend = f"unavailable ({e})"[:500]
    facts = {
        "se.device": _device_name(device),
        "se.backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else "none",
        "se.world_size": str(world_size),
        "se.torch": torch.__version__,
        "se.cuda": torch.version.cuda or "none",
        "se.rocm": torch.version.hip or "none",
        "se.scan_backend": scan_backend,
        "se.mamba_ssm": kernels.versions()["mamba_ssm"],
        "se.causal_conv1d": kernels.versions()["causal_conv1d"],
    }
    if device.type != "cpu" and scan_backend != "mamba_ssm":
        facts["se.mamba_kernels_error"] = str(kernels.load().error)[:500]
    for key, value in (("se.deterministic", deterministic), ("se.tf32", tf32), ("se.precision", precision)):
        if value is not None:
            facts[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return facts


def describe(facts: dict[str, str]) -> str:
    """One log line of `runtime_facts`."""
    return ", ".join(f"{k.removeprefix('se.')}={v}" for k, v in facts.items())
