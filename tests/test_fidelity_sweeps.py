"""The paper sweep files expand to the papers' experiments (models, steps, schedule, evaluation)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.sweeper import plan_sweep
from training.config import load_run_config
from training.models import list_models

REPO = Path(__file__).resolve().parents[1]
PAPER_TESTSETS = ["data/vb_demandex_released/test", "data/dns2020/test_no_reverb",
                  "data/ears_wham_v2_official/test"]


def _plan(name, tmp_path):
    return plan_sweep(REPO / "sweeps" / f"{name}.yaml", root=tmp_path, dry_run=True)


def _common(plan, steps):
    for c in plan.cells:
        cfg = load_run_config(base=c.config)  # validates
        assert cfg.model.name in list_models()
        assert cfg.data.train == "data/vb_demandex/train" and cfg.data.batch_size == 8
        assert cfg.optim.epoch_steps is None  # the authors' epoch, derived from the manifest
        assert cfg.trainer.max_steps == steps
        assert cfg.eval.testsets == PAPER_TESTSETS


def test_rwsa_paper_sweep(tmp_path):
    plan = _plan("rwsa_paper", tmp_path)
    assert len(plan.cells) == 15
    assert {c.config["model"]["name"] for c in plan.cells} == {"rwsa-xs", "rwsa-s", "rwsa-m"}
    _common(plan, 400 * (10_842 // 8))  # 400 epochs of VB-DemandEx
    assert {c.config["eval"]["mode"] for c in plan.cells} == {"rwsa_segments"}
    sizes = _plan("rwsa_sizes", tmp_path)  # the user's experiment stays on DNS 2020
    assert {c.config["data"]["train"] for c in sizes.cells} == {"data/dns2020/train"}


def test_mambattention_tables_1_and_4(tmp_path):
    t1, t4 = _plan("mambattention_table1", tmp_path), _plan("mambattention_table4", tmp_path)
    assert {c.config["model"]["name"] for c in t1.cells} == {
        "xlstm-senet", "lstm-senet", "semamba", "mpsenet-official", "mambattention"}
    assert {c.config["model"]["name"] for c in t4.cells} == {"xlstm-attention", "lstm-attention"}
    assert len(t1.cells) == 25 and len(t4.cells) == 10
    for plan in (t1, t4):
        _common(plan, 550_000)
        for c in plan.cells:  # plain non-overlapping 10 s chunks
            assert c.config["eval"]["mode"] == "chunked"
            assert c.config["eval"]["chunk_seconds"] == 10.0 and c.config["eval"]["overlap_seconds"] == 0.0
