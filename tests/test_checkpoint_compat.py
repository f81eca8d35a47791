"""A run whose checkpoints were written by the trainer before its parts owned their state (issue 22)
still resumes, and resumes exactly.

`tests/fixtures/checkpoint_v1/` holds `step-000001/` and `step-000002/` of a real 2-step run written
by that trainer (`tests/fixtures/make_checkpoint_v1.py` says how). Here today's trainer resumes a copy
of the run folder holding only `step-000001/` and trains on to step 3; its `step-000002/` must match
the old one: weights and optimizer moments to 1e-6 on a CPU with the fixture's float path (see ATOL; bitwise there; a
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


# Float tolerances. On a CPU with the fixture writer's float path (ATen's vector ISA, recorded in
# expected.json) everything matches to 1e-6. On another one (e.g. AVX2 where the fixture saw AVX-512) the
# convolutions round differently, and AdamW turns that noise, in gradients that are mathematically zero
# (conv biases in front of InstanceNorm), into updates of up to ~lr a step: measured on an AVX2 AMD EPYC,
# weights 1.3e-3, optimizer moments 2.8e-6, logged losses up to REL_OTHER_ISA apart after 2 steps. There the
# weights are only checked to be the resumed ones (a lost or fresh generator is O(0.1) away), and the
# exactness rests on what no float path changes: step, counters, data position, RNG states.
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
SAME_FLOAT_PATH = torch.backends.cpu.get_cpu_capability() == EXPECTED["cpu_capability"]
LR, STEPS = 5e-4, 2  # the fixture's AdamW learning rate (the default) and steps
ATOL = {"generator": 1e-6, "discriminator": 1e-6, "moments": 1e-6, "rel_logged": 1e-5} if SAME_FLOAT_PATH else \
    {"generator": 3 * LR * STEPS, "discriminator": 3 * LR * STEPS, "moments": 5e-5, "rel_logged": 5e-2}


def assert_close_tensors(a, b, where: str, atol: float = 1e-6) -> None:
    """Nested dicts/lists of tensors and numbers: tensors to `atol`, everything else equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close_tensors(a[k], b[k], f"{where}.{k}", atol)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_tensors(x, y, f"{where}[{i}]", atol)
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, where
        if a.is_floating_point():
            assert torch.allclose(a.double(), b.double(), rtol=0, atol=atol), f"{where}: {(a - b).abs().max()}"
        else:  # integers (RNG states, step counts): exact on any machine
            assert torch.equal(a, b), where
    elif isinstance(a, float) and not SAME_FLOAT_PATH:
        assert a == pytest.approx(b, rel=ATOL["rel_logged"], abs=1e-9), (where, a, b)
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
    assert new_state["best_pesq"] == pytest.approx(old_state["best_pesq"], abs=1e-9 if SAME_FLOAT_PATH else 1e-2)
    for key in ("generator", "discriminator", "opt_g", "opt_d", "sched_g", "sched_d"):
        assert_close_tensors(new_state[key], old_state[key], key, ATOL.get(key, ATOL["moments"]))
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
    assert_close_tensors(new_rank["meter"], old_rank["meter"], "meter", 1e-6 if SAME_FLOAT_PATH else ATOL["rel_logged"])
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

    expected = EXPECTED["train_window"]
    expected = {k: v for k, v in expected.items() if not k.startswith("data/remix")}  # gone with remixing
    client = MlflowClient(f"sqlite:///{db}")
    run_id = (run / "mlflow_run_id").read_text().strip()
    logged = {k: [m.value for m in client.get_metric_history(run_id, k) if m.step == 2] for k in expected}
    for key, value in expected.items():
        assert logged[key] == [pytest.approx(value, rel=ATOL["rel_logged"], abs=1e-9)], key
