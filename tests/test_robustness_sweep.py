"""Two first-time `orchestrate sweep` commands of the same sweep at once (issue 14, case 8): one MLflow
store schema, one parent run (finished, not left RUNNING), each cell trained once, no traceback --
two real concurrent processes on a fresh SQLite store."""

from __future__ import annotations

import subprocess
import sys

import yaml
from robustness_helpers import ROOT, corpus, env, tiny_config  # noqa: F401


def test_two_concurrent_first_sweeps(corpus, tmp_path):  # noqa: F811
    from mlflow.tracking import MlflowClient

    base = {f"{sec}.{k}": v for sec, d in tiny_config(corpus).items() if isinstance(d, dict) for k, v in d.items()}
    base.pop("mlflow.enabled")
    sweep = tmp_path / "cc.yaml"
    sweep.write_text(yaml.safe_dump({"name": "cc", "base": base, "grid": {"trainer.seed": [0, 1]},
                                     "executor": "local", "resources": {"max_parallel": 1}}))
    cmd = [sys.executable, "-m", "orchestrator.cli", "sweep", str(sweep), "--root", str(tmp_path / "runs")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert "Traceback" not in err and "sqlalchemy" not in err.lower(), err[-3000:]
        assert p.returncode == 0, out[-2000:] + err[-2000:]
    sweep_dir = tmp_path / "runs" / "cc"
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cc")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`se.kind` = 'sweep'")
    assert len(parents) == 1  # before: two parents, one orphan left RUNNING forever
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["s0", "s1"]  # each cell trained once
    for cell in ("s0", "s1"):
        starts = [ln for ln in (sweep_dir / "cells" / cell / "attempts.log").read_text().splitlines() if " start " in ln]
        assert len(starts) == 1
    # the command that ran the last cell closes the parent; whichever it was, it is not left RUNNING
    assert client.get_run(parents[0].info.run_id).info.status == "FINISHED"
