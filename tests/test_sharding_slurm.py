"""Shard build as a REAL SLURM array (local munged + slurmctld + 2 slurmd): same bytes as a local build."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from slurm_cluster import slurm_available

from sharding.writer import build

pytestmark = pytest.mark.slurm
_reason = slurm_available()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

OPTS = dict(speech="procedural", train_clips=8, valid_clips=2, test_clips=2, min_seconds=0.5, max_seconds=1.0)


def shas(out: Path) -> dict[str, str]:
    return {f"{s}/{sh['name']}": sh["sha256"] for s in ("train", "valid", "test")
            for sh in json.loads((out / s / "manifest.json").read_text())["shards"]}


def test_slurm_array_builds_identical_shards(cluster, tmp_path):
    local = tmp_path / "local"
    build("demo", local, OPTS, shard_samples=3)
    out = tmp_path / "slurm"
    res = build("demo", out, OPTS, shard_samples=3, executor="slurm",
                slurm={"array_tasks": 2, "mem_gb": 1, "time_min": 10})
    assert res["array_tasks"] == 2 and res["array_job_id"].isdigit()
    deadline = time.monotonic() + 240
    while not all((out / s / "manifest.json").exists() for s in ("train", "valid", "test")):
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text()[-2000:] for p in (out / ".build" / "logs").glob("*"))
            raise AssertionError(f"SLURM build did not finish:\n{logs}\n{cluster.log_tail(10)}")
        time.sleep(1.0)
    assert shas(out) == shas(local)
    assert len(list((out / ".build" / "logs").glob("build-*_*.log"))) == 2
