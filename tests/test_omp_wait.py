"""training.kernels.omp_wait: OMP_WAIT_POLICY=PASSIVE is set before torch loads libgomp (fresh
interpreters: the test process has torch already), and never over the user's choice or too late."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import os, sys\nfrom training.kernels import omp_wait\n{before}"
         "print(omp_wait.passive(), os.environ.get('OMP_WAIT_POLICY'))")


def _probe(before: str = "", **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True,
                         env=environ, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_set_before_torch_loads():
    assert _probe() == "True PASSIVE"


def test_not_over_the_users_choice_nor_after_torch_is_loaded():
    assert _probe(OMP_WAIT_POLICY="ACTIVE") == "False ACTIVE"
    assert _probe(before="import torch\n") == "False None"


def test_the_inference_commands_set_it_before_torch():
    """``orchestrate enhance`` / ``evaluate`` (here on a checkpoint that does not exist: exit 2 after
    their first steps) leave the policy set in their process: nothing the CLI imports to parse
    their arguments loads torch, and their run() sets it before importing the model code."""
    code = ("import os, sys\nfrom orchestrator import cli\nrc = cli.main(sys.argv[1:])\n"
            "print(rc, os.environ.get('OMP_WAIT_POLICY'))")
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"PYTHONPATH": str(ROOT)}
    for argv in (["enhance", "no-such-run", "in.wav", "--out", "o"], ["evaluate", "no-such-run", "--testset", "t"]):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT,
                             env=environ, timeout=300)
        assert out.stdout.strip().splitlines()[-1] == "2 PASSIVE", (argv, out.stdout, out.stderr)
