"""Launchers: where a sweep's cells run -- SLURM (submitit job arrays), local processes, or Ray.

One interface (`base.Launcher`: submit / refresh / cancel / describe); `get` picks the
implementation by executor name, importing it only then (the SLURM one needs submitit, the Ray one
ray). Every launcher runs the same plain module command per cell (`base.cell_command`) and leaves
the same files in the cell folder (`base.EXIT_CODE_FILE`, `base.ATTEMPTS_FILE`), which is how the
orchestrator learns what happened without importing anything into the job.
"""

from __future__ import annotations

import importlib

EXECUTORS = {"slurm": ("orchestrator.launchers.slurm", "SlurmLauncher"),
             "local": ("orchestrator.launchers.local", "LocalLauncher"),
             "ray": ("orchestrator.launchers.ray", "RayLauncher")}


def get(executor: str, sweep_dir, **kwargs):
    """The launcher for ``executor`` (slurm, local, ray) over ``sweep_dir``."""
    try:
        module, cls = EXECUTORS[executor]
    except KeyError:
        raise ValueError(f"unknown executor {executor!r} (expected {', '.join(EXECUTORS)})") from None
    return getattr(importlib.import_module(module), cls)(sweep_dir, **kwargs)


def executor_of(data: dict) -> str:
    """The executor a ledger was written for (old ledgers: guessed from the job ids)."""
    if data.get("executor") in EXECUTORS:
        return data["executor"]
    jobs = [r.get("job_id") or "" for r in data.get("cells", {}).values()]
    if any(j.startswith("ray:") for j in jobs):
        return "ray"
    if any(j.startswith("local:") for j in jobs):
        return "local"
    return "slurm"
