"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest


# ----- training engine fixtures (tests/test_training*.py, tests/test_ddp.py) -------------------------
@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """A small procedural demo corpus (train 24 clips of 1-1.5 s in 4 shards, valid 3), built once."""
    from sharding.recipes.demo import prepare_demo

    out = tmp_path_factory.mktemp("demo_corpus")
    prepare_demo(out, speech="procedural", train_clips=24, valid_clips=3, test_clips=0, shard_samples=6,
                 min_seconds=1.0, max_seconds=1.5)
    return out


# ----- sweep fixtures (tests/test_sweep_local.py, tests/test_slurm_sweep.py) ---------------------------
@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A tinier procedural demo corpus (train 8 clips of 1-1.5 s in 2 shards, valid 2), built once;
    the sweeps only read it."""
    from sharding.recipes.demo import prepare_demo

    out = tmp_path_factory.mktemp("demo")
    prepare_demo(out, train_clips=8, valid_clips=2, test_clips=0, min_seconds=1.0, max_seconds=1.5,
                 speech="procedural", shard_samples=4)
    return out


# ----- real SLURM (tests/test_sharding_slurm.py, tests/test_slurm_sweep.py) -----------------------------
@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """One real SLURM for the session (munged + slurmctld + two slurmd on this machine, see
    tests/slurm_cluster.py); SLURM_CONF points at it so in-process sbatch/squeue/scontrol use it."""
    from slurm_cluster import SlurmCluster, slurm_available

    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    old = os.environ.get("SLURM_CONF")
    with c:
        os.environ["SLURM_CONF"] = str(c.conf)
        yield c
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
