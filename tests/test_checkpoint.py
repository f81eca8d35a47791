"""Checkpoint directories: atomic, complete-or-absent, keep-last-K, best, weights_only-safe RNG state."""

from __future__ import annotations

import random

import numpy as np
import torch

from training.checkpoint import MARKER, CheckpointManager, load_file
from training.seeding import rng_state, set_rng_state


def _state(step):
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "config": "a: 1\n", "run_id": "abc"}


def test_save_load_roundtrip_with_marker_and_weights_only(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=2)
    path = mgr.save(10, _state(10), {"rng": rng_state(), "loader": {"pos": 5}})
    assert path.name == "step-000010" and (path / MARKER).read_text().strip() == "10"
    assert not list((tmp_path / "ck").glob(".tmp-*"))
    shared, mine = mgr.load(mgr.latest())
    assert shared["step"] == 10 and torch.equal(shared["model"]["w"], torch.full((3,), 10.0))
    assert mine["loader"] == {"pos": 5}
    load_file(path / "rank-0.pt")  # weights_only=True must accept the RNG state


def test_keep_last_and_incomplete_are_ignored_and_cleaned(tmp_path):
    root = tmp_path / "ck"
    mgr = CheckpointManager(root, keep_last=2)
    for s in (1, 2, 3):
        mgr.save(s, _state(s), {})
    assert mgr.complete_steps() == [2, 3]
    # a killed save: a temp folder and a step folder without marker
    (root / ".tmp-step-000004").mkdir()
    (root / "step-000005").mkdir()
    (root / "step-000005" / "state.pt").write_bytes(b"garbage")
    assert mgr.latest().name == "step-000003"
    removed = mgr.clean_incomplete()
    assert {p.name for p in removed} == {".tmp-step-000004", "step-000005"}
    assert sorted(p.name for p in root.iterdir()) == ["step-000002", "step-000003"]


def test_best_is_replaced_atomically_and_survives_pruning(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=2)
    mgr.save_best(_state(1) | {"metric": 1.5})
    mgr.save_best(_state(7) | {"metric": 2.5})
    for s in (8, 9, 10):
        mgr.save(s, _state(s), {})
    best = load_file(tmp_path / "ck" / "best" / "state.pt")
    assert best["step"] == 7 and best["metric"] == 2.5
    assert mgr.complete_steps() == [9, 10]


def test_rng_state_roundtrip_reproduces_all_generators():
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    st = rng_state()
    a = (random.random(), np.random.standard_normal(2).tolist(), torch.rand(2).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(st)
    b = (random.random(), np.random.standard_normal(2).tolist(), torch.rand(2).tolist())
    assert a == b
