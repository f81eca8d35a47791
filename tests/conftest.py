"""Shared pytest fixtures."""

from __future__ import annotations

import json
from pathlib import Path

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
    with SlurmCluster(tmp_path_factory.mktemp("slurm")).as_default() as c:
        yield c


# ----- a run written by the real trainer (tests of every checkpoint reader) -------------------------------
TINY_RWSA = ["model.name=rwsa-xs", "model.options={hidden: 4, num_blocks: 1, level_heads: 2, middle_heads: 4}"]


@pytest.fixture(scope="session")
def journey_corpus(tmp_path_factory):
    """A tiny procedural demo corpus WITH a test split (train 8, valid 2, test 3 clips of 1-1.5 s)."""
    from sharding.recipes.demo import prepare_demo

    out = tmp_path_factory.mktemp("journey_corpus")
    prepare_demo(out, train_clips=8, valid_clips=2, test_clips=3, min_seconds=1.0, max_seconds=1.5,
                 speech="procedural", shard_samples=4)
    return out


def train_overrides(corpus, db, *extra: str) -> list[str]:
    """`orchestrate train` overrides for a 2-step tiny run on `corpus` logging to SQLite `db`."""
    return [*TINY_RWSA, f"data.train={corpus / 'train'}", f"data.valid={corpus / 'valid'}",
            "data.segment_samples=1800", "data.batch_size=2", "data.valid_limit=1", "trainer.max_steps=2",
            "trainer.val_every=1", "trainer.ckpt_every=1", "trainer.log_every=1", "trainer.pesq_workers=0",
            "trainer.num_threads=1", f"mlflow.tracking_uri=sqlite:///{db}", "mlflow.experiment=trained-run",
            *extra]


@pytest.fixture(scope="session")
def trained_run(journey_corpus, tmp_path_factory):
    """A run directory written by a real 2-step `orchestrate train` (checkpoints/step-1, step-2, best/,
    config.yaml, mlflow_run_id) with its SQLite MLflow store. Returns (run_dir, tracking_uri, corpus).
    Read-only for the tests: copy it (shutil.copytree) before changing anything."""
    from orchestrator.cli import main

    root = tmp_path_factory.mktemp("trained_run")
    db = root / "mlflow.db"
    rc = main(["train", "rwsa-xs", *train_overrides(journey_corpus, db), "--workdir", str(root / "run")])
    assert rc == 0, f"2-step training failed with exit code {rc}"
    return root / "run", f"sqlite:///{db}", journey_corpus


def write_sweep(folder, name: str, base: dict, **spec) -> Path:
    """A sweep file ``folder/NAME.yaml`` of tiny RWSA-XS cells on a demo corpus: ``base`` (dotted keys) over
    the local executor, seeds 0 and 1, one cell at a time; ``spec`` replaces any top-level entry
    (``grid``, ``resources``, ``overrides``, ``executor``)."""
    doc = {"name": name, "base": base, "grid": {"trainer.seed": [0, 1]}, "resources": {"max_parallel": 1},
           "executor": "local", **spec}
    path = Path(folder) / f"{name}.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path



def running_sweep(folder, name: str, seeds: int) -> tuple[Path, dict[str, Path]]:
    """A planned local sweep ``folder/runs/NAME`` of ``seeds`` cells (``s0``, ``s1``, ...; MLflow off) whose
    ledger says every cell is running (job ``local:1``), nothing trained: for status tests that then write
    the cells' progress files. Returns the sweep folder and each cell's workdir."""
    from orchestrator.ledger import Ledger, set_state
    from orchestrator.sweeps.plan import build_plan
    from orchestrator.sweeps.run import write_cells

    sweep = Path(folder) / f"{name}.yaml"
    sweep.write_text(f"name: {name}\ngrid: {{trainer.seed: {list(range(seeds))}}}\nexecutor: local\n")
    write_cells(build_plan(sweep, root=Path(folder) / "runs", overrides=["mlflow.enabled=false"]))
    sweep_dir = Path(folder) / "runs" / name
    with Ledger(sweep_dir).locked() as data:
        for rec in data["cells"].values():
            set_state(rec, "running", job_id="local:1")
        workdirs = {cid: sweep_dir / rec["workdir"] for cid, rec in data["cells"].items()}
    return sweep_dir, workdirs


def two_node_cluster(monkeypatch, env: dict[str, str], head_cpus: int = 1, node_cpus: int = 1):
    """A REAL two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and a second
    raylet, no dashboard); ``env`` is set first, so the raylets, their workers and the training processes
    they start inherit it. The caller shuts it down."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    cluster.add_node(num_cpus=node_cpus)
    cluster.wait_for_nodes()
    return cluster
