"""A light login node: the sweep-management commands run in a venv without torch.

Each command runs in a fresh interpreter where importing torch (or ray) fails, as in a small
login-node venv; afterwards neither is in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, sys
class NoHeavy:  # a login-node venv: these are not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "ray"):
            raise ImportError(f"{name} is not installed on this login node")
        return None
sys.meta_path.insert(0, NoHeavy())
from orchestrator.cli import main
argv = json.loads(sys.argv[1])
try:
    rc = main(argv)
except SystemExit as e:  # --help
    rc = e.code
print(json.dumps({"rc": rc, "heavy": sorted(m for m in ("torch", "ray") if m in sys.modules)}))
"""


def run_probe(argv: list[str], cwd: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], cwd=cwd, capture_output=True, text=True,
                       timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_sweep_management_commands_do_not_import_torch(tmp_path):
    for cmd in ("sweep", "status", "cancel", "resume", "compare"):
        res = run_probe([cmd, "--help"], tmp_path)
        assert res == {"rc": 0, "heavy": []}, (cmd, res)
    # a dry run of the paper's SLURM sweep on LUMI: cost plan, the sbatch text, then the pre-submit checks
    # (models, data, placeholders: exit 2 here, as the shipped profile still says project_xxx)
    res = run_probe(["sweep", str(REPO / "sweeps/rwsa_sizes.yaml"), "--dry-run", "--root", str(tmp_path / "r")],
                    tmp_path)
    assert res == {"rc": 2, "heavy": []}, res
    # the cost of the baselines (every model's compute from the torch-free table)
    res = run_probe(["plan", str(REPO / "sweeps/baselines.yaml"), "--device", "h100", "--root", str(tmp_path / "r")],
                    tmp_path)
    assert res == {"rc": 0, "heavy": []}, res


def test_status_and_cancel_of_a_sweep_do_not_import_torch(tmp_path):
    from orchestrator.sweeps.plan import build_plan
    from orchestrator.sweeps.run import write_cells

    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: login\ngrid: {trainer.seed: [0, 1]}\nexecutor: slurm\nprofile: local\n")
    write_cells(build_plan(sweep, root=tmp_path / "runs", overrides=["mlflow.enabled=false"]))
    sweep_dir = str(tmp_path / "runs" / "login")
    assert run_probe(["status", sweep_dir], tmp_path) == {"rc": 0, "heavy": []}
    assert run_probe(["cancel", sweep_dir, "s1"], tmp_path) == {"rc": 0, "heavy": []}
