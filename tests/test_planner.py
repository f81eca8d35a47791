"""`orchestrate plan`: the cost formulas, rwsa_sizes on LUMI (48-hour chains), measured vs estimated
throughput, real shard manifests, and the head of `sweep --dry-run`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from common.config import build_config
from orchestrator import planner
from orchestrator.cli import main as cli_main
from orchestrator.sweeps.plan import build_plan
from training.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def run_config(sections: dict) -> RunConfig:
    """A RunConfig with ``sections`` over the defaults (what a sweep cell carries)."""
    return build_config(RunConfig, [("test", sections)])


def test_cell_cost_formulas(demo_data):
    # semamba: 32,000 samples (2 s) is a crop it takes (rwsa-xs needs a frame count that is a multiple of 4)
    cfg = {"model": {"name": "semamba", "options": {}},
           "trainer": {"max_steps": 100_000, "val_every": 0, "log_every": 100, "keep_last": 3, "precision": "fp32"},
           "data": {"train": str(demo_data / "train"), "valid": None, "segment_samples": 32000, "batch_size": 8},
           "launcher": {"nodes": 2, "gpus_per_node": 4, "nproc": 4, "time_min": 600},
           "mlflow": {"system_metrics_s": 10}, "loss": {"discriminator": True}}
    c = planner.cell_cost("x", run_config(cfg), device="a100", signal_before_end_s=300, gmacs=lambda name, opts: 10.0)
    rate = 8 * 19.5e12 * planner.ASSUMED_MFU / (2 * 10e9 * 1.0 * 8 * 3)
    assert c.steps_per_s == pytest.approx(rate) and c.gpus == 8
    assert c.wall_s == pytest.approx(100_000 / rate) and c.gpu_hours == pytest.approx(c.wall_s * 8 / 3600)
    job_s = 600 * 60 - 300 - planner.STARTUP_S
    assert c.job_s == job_s and c.chains == math.ceil(c.wall_s / job_s)
    p = planner.params("semamba") + planner.params("metric-discriminator")
    assert c.ckpt_size == p * 12 and c.ckpt_bytes == 3 * p * 12 + p * 4
    manifest = json.loads((demo_data / "train" / "manifest.json").read_text())
    shard_bytes = sum(f.stat().st_size for f in (demo_data / "train").glob("shard-*.tar"))
    assert c.data_bytes == shard_bytes and c.data_steps == math.ceil(manifest["num_samples"] / 8)
    pts = 3600 * rate * planner.TRAIN_KEYS / 100 + 360 * (planner.SYSTEM_KEYS + 16)
    assert c.mlflow_points_per_h == pytest.approx(pts)
    assert "FLOP estimate" in c.source and "assumed utilisation" in c.source


def test_rwsa_sizes_on_lumi_says_how_many_48_hour_chains(capsys):
    assert cli_main(["plan", str(ROOT / "sweeps" / "rwsa_sizes.yaml")]) == 0
    out = capsys.readouterr().out
    assert "15 cells on AMD MI250X GCD" in out and "FLOP estimate" in out
    plan = build_plan(ROOT / "sweeps" / "rwsa_sizes.yaml")
    device, costs = planner.plan_costs(plan)
    assert device == "mi250x-gcd" and len(costs) == 15
    job_s = 2880 * 60 - plan.profile.signal_before_end_s - planner.STARTUP_S  # the 48-hour limit
    for c in costs:
        assert c.gpus == 8 and c.steps == 950_000 and c.chains == math.ceil(c.wall_s / job_s) >= 1
        row = next(line for line in out.splitlines() if line.startswith(c.cell + " "))
        assert row.split()[7] == str(c.chains)  # the chains column
    by_model = {c.model: c for c in costs}
    assert by_model["rwsa-m"].steps_per_s < by_model["rwsa-s"].steps_per_s < by_model["rwsa-xs"].steps_per_s
    assert "cells need" in out and "chained jobs each" in out and "GPU-hours" in out


def test_measured_throughput_is_used_and_scaled(demo_data, tmp_path):
    cfg = {"model": {"name": "rwsa-xs", "options": {}},
           "trainer": {"max_steps": 100, "val_every": 0, "log_every": 10, "keep_last": 2},
           "data": {"train": str(tmp_path / "none"), "valid": None, "segment_samples": 15300, "batch_size": 4},
           "launcher": {"nodes": 1, "nproc": 1, "time_min": 1}, "mlflow": {}, "loss": {"discriminator": False}}
    c = planner.cell_cost("x", run_config(cfg), device="cpu", gmacs=lambda *a: pytest.fail("measured: no FLOP count"))
    assert c.steps_per_s == pytest.approx(1 / 46.5 * (8 * 30600) / (4 * 15300))
    assert c.source.startswith("measured") and c.data_bytes is None and c.chains == 1


@pytest.mark.slow  # one 2 s forward per preset with FLOP hooks: ~75 s CPU
def test_known_gmacs_match_the_flop_counter():
    from training.model_names import GENERATOR_NAMES
    from training.models import build_model
    from training.models.flops import model_gflops

    assert set(planner.KNOWN_GMACS) == set(GENERATOR_NAMES)
    for name, gmacs in planner.KNOWN_GMACS.items():
        assert model_gflops(build_model(name))["gflops"] == pytest.approx(gmacs, rel=1e-4), name


def test_sweep_dry_run_starts_with_the_plan(tmp_path, demo_data, capsys):
    spec = {"name": "dr", "base": {"model.name": "rwsa-xs", "data.train": str(demo_data / "train"),
                                   "data.valid": str(demo_data / "valid"), "trainer.max_steps": 10},
            "grid": {"trainer.seed": [0, 1]}, "executor": "local"}
    p = tmp_path / "dr.yaml"
    p.write_text(json.dumps(spec))
    assert cli_main(["sweep", str(p), "--dry-run", "--root", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# plan for sweep dr: 2 cells on CPU core group"
    assert any(line.startswith("# total: 20 steps") for line in out)
    assert any("# sweep dr: 2 cells" in line for line in out)  # then the usual dry run


def test_known_params_match_the_registry():
    from training.model_names import GENERATOR_NAMES
    from training.models import build_model

    assert set(planner.KNOWN_PARAMS) == {*GENERATOR_NAMES, "metric-discriminator"}
    for name, count in planner.KNOWN_PARAMS.items():
        assert sum(p.numel() for p in build_model(name).parameters()) == count, name
