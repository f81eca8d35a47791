"""The sbatch text through submitit's private API, rendered by the oldest and the newest submitit that
pyproject allows: `orchestrator.launchers.slurm.render_script` is the one function calling
``_make_submission_file_text`` / ``_submitit_command_str``, and its golden text (tests/golden/
sbatch_lumi.txt, also checked with the installed submitit in tests/test_sweep.py) must come out of
both ends of the pin. Each version is installed from PyPI into a temporary folder and put first on
``sys.path`` of a fresh interpreter (about 5 s each)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RENDER = r"""
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import submitit
from test_sweep import GOLDEN, _golden_script
script = _golden_script(Path(tempfile.mkdtemp()))
print(json.dumps({"version": submitit.__version__, "file": submitit.__file__, "same": script == GOLDEN.read_text()}))
"""


def submitit_requirement() -> str:
    """pyproject's requirement on submitit, e.g. ``submitit>=1.5,<1.6``."""
    text = (ROOT / "pyproject.toml").read_text()
    (req,) = re.findall(r'"(submitit[^"]*)"', text)
    return req


def lowest_allowed(req: str) -> str:
    """``submitit==<the pin's lower bound>``, padded to three parts (1.5 -> 1.5.0)."""
    (low,) = re.findall(r">=\s*([\d.]+)", req)
    parts = low.split(".") + ["0"] * (3 - len(low.split(".")))
    return "submitit==" + ".".join(parts[:3])


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_golden_sbatch_text_with_the_oldest_and_newest_allowed_submitit(which, tmp_path):
    req = submitit_requirement()
    assert "<" in req, f"pin submitit with an upper bound too (render_script uses its private API): {req}"
    spec = lowest_allowed(req) if which == "oldest" else req  # pip picks the newest the pin allows
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), spec],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"pip install {spec} failed (PyPI unreachable?): {r.stderr[-1500:]}"
    out = subprocess.run([sys.executable, "-c", RENDER, str(ROOT / "tests")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": f"{target}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["file"].startswith(str(target)), res  # the version under test, not the venv's
    if which == "oldest":
        assert spec == f"submitit=={res['version']}"
    assert res["same"], f"submitit {res['version']} renders another sbatch text than tests/golden/sbatch_lumi.txt"
