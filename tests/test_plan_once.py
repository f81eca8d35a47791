"""A sweep is planned once per command: `orchestrate sweep FILE --dry-run` (cost plan, pre-submit checks,
cells, sbatch text) reads the sweep file once, loads the cluster profile once, expands the grid once
and builds each cell's RunConfig once; a data folder shared by every cell is read a fixed number of
times whatever the number of cells. Counted in a fresh interpreter (a profile hook on the functions'
code objects, an audit hook on file opens). And the cell config the orchestrator plans is the very
RunConfig the training process loads from the cell's config.yaml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COUNT = r"""
import collections, json, os, sys
from common.config import build_config
from orchestrator.cli import main
from orchestrator.profiles import load_profile, profile_path
from orchestrator.sweeps.plan import expand
from orchestrator.sweeps.spec import load_sweep
from training.config import RunConfig

argv, sweep_file = json.loads(sys.argv[1]), os.path.realpath(sys.argv[2])
profile_file = os.path.realpath(profile_path("local"))
code = {load_sweep.__code__: "load_sweep", expand.__code__: "expand", load_profile.__code__: "load_profile"}
counts = collections.Counter()

def on_call(frame, event, arg):
    if event == "call":
        if frame.f_code in code:
            counts[code[frame.f_code]] += 1
        elif frame.f_code is build_config.__code__ and frame.f_locals.get("schema") is RunConfig:
            counts["run configs built"] += 1

def on_audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path == sweep_file:
            counts["sweep file reads"] += 1
        elif path == profile_file:
            counts["profile reads"] += 1
        elif path.endswith("manifest.json"):
            counts["manifest reads"] += 1

sys.addaudithook(on_audit)
sys.setprofile(on_call)
rc = main(argv)
sys.setprofile(None)
print(json.dumps({"rc": rc, **counts}))
"""


def count(argv: list[str], sweep: Path, cwd: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", COUNT, json.dumps(argv), str(sweep)], cwd=cwd, capture_output=True,
                       text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def write(tmp_path: Path, demo: Path, seeds: int) -> Path:
    spec = {"name": f"once{seeds}", "profile": "local", "executor": "slurm",
            "base": {"model.name": "rwsa-xs", "data.train": str(demo / "train"), "data.valid": str(demo / "valid"),
                     "data.segment_samples": 1800},
            "grid": {"optim.lr": [1e-4, 2e-4], "trainer.seed": list(range(seeds))}}
    path = tmp_path / f"once{seeds}.yaml"
    path.write_text(json.dumps(spec))
    return path


def test_a_dry_run_loads_the_sweep_once_and_expands_it_once(demo_data, tmp_path):
    got = {}
    for seeds in (1, 4):  # 2 and 8 cells
        sweep = write(tmp_path, demo_data, seeds)
        got[seeds] = count(["sweep", str(sweep), "--dry-run", "--root", str(tmp_path / "runs")], sweep, tmp_path)
        assert got[seeds]["rc"] == 0, got
        assert {k: got[seeds][k] for k in ("load_sweep", "sweep file reads", "expand", "load_profile",
                                           "profile reads")} == {
            "load_sweep": 1, "sweep file reads": 1, "expand": 1, "load_profile": 1, "profile reads": 1}, got
        assert got[seeds]["run configs built"] == 2 * seeds  # each cell's RunConfig once
    # the train and valid manifests: once by the pre-submit check, once by the cost plan, for any number of cells
    assert got[1]["manifest reads"] == got[4]["manifest reads"] == 4, got
    # `orchestrate plan` alike
    sweep = write(tmp_path, demo_data, 4)
    plan = count(["plan", str(sweep), "--root", str(tmp_path / "runs")], sweep, tmp_path)
    assert (plan["rc"], plan["load_sweep"], plan["expand"], plan["run configs built"]) == (0, 1, 1, 8), plan


def test_the_planned_cell_config_is_what_the_training_process_loads(demo_data, tmp_path):
    from common.rundir import CONFIG_FILE
    from orchestrator.sweeps.plan import build_plan
    from orchestrator.sweeps.run import write_cells
    from training.config import RunConfig, load_run_config

    plan = build_plan(write(tmp_path, demo_data, 2), root=tmp_path / "runs", overrides=["mlflow.enabled=false"])
    write_cells(plan)
    for cell in plan.cells:
        assert isinstance(cell.config, RunConfig)
        assert load_run_config(plan.cell_dir(cell) / CONFIG_FILE) == cell.config  # training.run's reader
