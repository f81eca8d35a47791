"""Shard build as a REAL SLURM array (local munged + slurmctld + 2 slurmd), submitted by the
orchestrator's SLURM launcher (submitit, cluster profile `local`): same bytes as a local build."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import slurm_available

from sharding.writer import build

pytestmark = pytest.mark.slurm
_reason = slurm_available()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
OPTS = dict(speech="procedural", train_clips=8, valid_clips=2, test_clips=2, min_seconds=0.5, max_seconds=1.0)


def shas(out: Path) -> dict[str, str]:
    return {f"{s}/{sh['name']}": sh["sha256"] for s in ("train", "valid", "test")
            for sh in json.loads((out / s / "manifest.json").read_text())["shards"]}


def test_slurm_array_builds_identical_shards(cluster, tmp_path):
    local = tmp_path / "local"
    build("demo", local, OPTS, shard_samples=3)
    out = tmp_path / "slurm"
    argv = [sys.executable, "-m", "orchestrator.cli", "shard", "build", "demo", "--out", str(out),
            *(f"{k}={v}" for k, v in OPTS.items()), "--shard-samples", "3", "--executor", "slurm",
            "--profile", "local", "--slurm", "array_tasks=2", "--slurm", "mem_gb=1", "--slurm", "time_min=10"]
    r = subprocess.run(argv, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout[r.stdout.index("{"):])
    assert res["array_tasks"] == 2 and res["array_job_id"].isdigit() and res["finalize_job_id"].isdigit()
    deadline = time.monotonic() + 240
    while not all((out / s / "manifest.json").exists() for s in ("train", "valid", "test")):
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text()[-2000:] for p in (out / ".build" / "logs").glob("*.out"))
            raise AssertionError(f"SLURM build did not finish:\n{logs}\n{cluster.log_tail(10)}")
        time.sleep(1.0)
    assert shas(out) == shas(local)
    logs = out / ".build" / "logs"
    assert len(list(logs.glob(f"{res['array_job_id']}_*_0_log.out"))) == 2  # two array tasks, via submitit
    assert len(list(logs.glob(f"{res['finalize_job_id']}_0_log.out"))) == 1
