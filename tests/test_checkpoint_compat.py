"""A run whose checkpoints were written by the trainer before its parts owned their state (issue 22)
still resumes, and resumes exactly.

`tests/fixtures/checkpoint_v1/` holds `step-000001/` and `step-000002/` of a real 2-step run written
by that trainer (`tests/fixtures/make_checkpoint_v1.py` says how). Here today's trainer resumes a copy
of the run folder holding only `step-000001/` and trains on to step 3; its `step-000002/` must match
the old one: weights and optimizer moments to 1e-6 (bitwise on the machine that wrote the fixture; a
lost piece of state, e.g. the data position or the RNG, changes them by ~1e-4 in one Adam step),
step, best, counters, data position, meter window and the python/torch RNG states exactly, and the
training window it logs at step 2 (half of it carried over in the old rank file) as the old trainer
logged it. And a fresh run of today's trainer writes the old trainer's step-1 and step-2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from fixtures.make_checkpoint_v1 import OUT as FIXTURE
from fixtures.make_checkpoint_v1 import build_corpus, run_config, small_discriminator

from training.checkpoint import load_file


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("checkpoint_v1_corpus"))


def assert_close_tensors(a, b, where: str) -> None:
    """Nested dicts/lists of tensors and numbers: tensors to 1e-6, everything else equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=1e-6), f"{where}: {(a - b).abs().max()}"
    else:
        assert a == b, (where, a, b)


def assert_same_checkpoint(old: Path, new: Path, *, numpy_rng: bool, pending: bool = True) -> None:
    """`new` holds what the old trainer wrote in `old` (see the module docstring for the tolerances);
    numpy's RNG only with `numpy_rng` (pystoi draws from it in every validation, and a session's first
    validation also scores the noisy input; nothing in training draws from it). ``pending=False``: the
    tracker's unconfirmed points are not compared (with a live store they depend on when its background
    sender last returned; the caller checks the store instead)."""
    old_state, new_state = load_file(old / "state.pt"), load_file(new / "state.pt")
    assert sorted(new_state) == sorted(old_state)  # the same format
    for key in ("step", "epoch", "best_step", "world_size", "counters") + (("pending_metrics",) if pending else ()):
        assert new_state[key] == old_state[key], key
    assert new_state["best_pesq"] == pytest.approx(old_state["best_pesq"], abs=1e-9)
    for key in ("generator", "discriminator", "opt_g", "opt_d", "sched_g", "sched_d"):
        assert_close_tensors(new_state[key], old_state[key], key)
    old_rank, new_rank = load_file(old / "rank-0.pt"), load_file(new / "rank-0.pt")
    assert sorted(new_rank) == sorted(old_rank)
    # the exact data position; the stream's state changed by design since: `remix` (always False) and its
    # counters went with on-the-fly mixing, `shuffle_window` came with sequential reading (an old state resumes with
    # the whole-shard permutation it was written with: tests/test_stream.py)
    old_loader = {k: v for k, v in old_rank["loader"].items() if k != "remix"}
    old_loader["stats"] = {k: v for k, v in old_loader["stats"].items() if not k.startswith("remix")}
    new_loader = {k: v for k, v in new_rank["loader"].items() if k != "shuffle_window"}
    assert new_loader == old_loader
    assert new_rank["meter"].keys() == old_rank["meter"].keys()
    assert_close_tensors(new_rank["meter"], old_rank["meter"], "meter")
    for gen in ("python", "torch", "numpy") if numpy_rng else ("python", "torch"):  # integers: exact
        assert_close_tensors(new_rank["rng"][gen], old_rank["rng"][gen], gen)


def run_config_file(folder: Path, corpus: Path, max_steps: int, db: Path | None = None) -> Path:
    raw = run_config(corpus, max_steps=max_steps)
    if db is not None:
        raw["mlflow"] = {"enabled": True, "tracking_uri": f"sqlite:///{db}", "experiment": "checkpoint-v1"}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_fresh_run_writes_what_the_previous_trainer_wrote(corpus, tmp_path, monkeypatch):
    """Same config, same corpus, from scratch: today's step-1 and step-2 equal the old ones (the seeded
    order of building the parts, the data order, the format)."""
    from training.config import load_run_config
    from training.run import train

    monkeypatch.setenv("SE_SCAN_BACKEND", "torch")
    small_discriminator(monkeypatch.setitem)
    assert train(load_run_config(run_config_file(tmp_path, corpus, 2)), tmp_path / "run") == 0
    for step in ("step-000001", "step-000002"):
        assert_same_checkpoint(FIXTURE / step, tmp_path / "run" / "checkpoints" / step, numpy_rng=True)


def test_checkpoint_of_the_previous_trainer_resumes_exactly(corpus, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from training.config import load_run_config
    from training.run import train

    monkeypatch.setenv("SE_SCAN_BACKEND", "torch")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    small_discriminator(monkeypatch.setitem)
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "step-000001", run / "checkpoints" / "step-000001")
    db = tmp_path / "mlflow.db"
    assert train(load_run_config(run_config_file(tmp_path, corpus, 3, db)), run) == 0

    assert_same_checkpoint(FIXTURE / "step-000002", run / "checkpoints" / "step-000002", numpy_rng=False,
                           pending=False)
    assert (run / "checkpoints" / "step-000003" / "COMPLETE").is_file()  # and it trains on

    expected = json.loads((FIXTURE / "expected.json").read_text())["train_window"]
    expected = {k: v for k, v in expected.items() if not k.startswith("data/remix")}  # gone with remixing
    client = MlflowClient(f"sqlite:///{db}")
    run_id = (run / "mlflow_run_id").read_text().strip()
    logged = {k: [m.value for m in client.get_metric_history(run_id, k) if m.step == 2] for k in expected}
    for key, value in expected.items():
        assert logged[key] == [pytest.approx(value, rel=1e-5, abs=1e-9)], key
