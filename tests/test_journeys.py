"""The user's paths end to end, on nothing but what the system itself produced.

Local journey: a demo-sized sweep with `eval.testsets` (2 seeds, real training, evaluation inside
each job) -> `orchestrate compare` prints mean ± std over the 2 seeds of the eval metrics (md and
json) -> `evaluate` and `enhance` on a cell -> `report efficiency` on the cell's checkpoint.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import mlflow
import pytest
import soundfile as sf
from conftest import write_sweep

from orchestrator.cli import main

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]
TINY = {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}
METRICS = ["pesq", "estoi", "si_sdr", "ssnr"]


def journey_sweep(tmp_path: Path, corpus: Path, name: str, **base) -> Path:
    """A demo-sized sweep file: tiny RWSA-XS x 2 seeds, 2 steps, evaluated on the corpus's test split;
    the two cells run side by side (one thread each on the 2 test cores)."""
    return write_sweep(tmp_path, name, {
        "model.name": "rwsa-xs", "model.options": TINY,
        "data.train": str(corpus / "train"), "data.valid": str(corpus / "valid"),
        "data.segment_samples": 1800, "data.batch_size": 2, "data.valid_limit": 1,
        "trainer.max_steps": 2, "trainer.val_every": 2, "trainer.ckpt_every": 1, "trainer.log_every": 1,
        "trainer.pesq_workers": 1, "trainer.num_threads": 1,
        "eval.testsets": [str(corpus / "test")], "eval.num_workers": 1, **base,
    }, resources={"max_parallel": 2})


@pytest.fixture(scope="module")
def local_sweep(journey_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("journey")
    path = journey_sweep(tmp, journey_corpus, "journey")
    assert main(["sweep", str(path), "--root", str(tmp / "runs")]) == 0
    return tmp / "runs" / "journey", journey_corpus


def test_compare_right_after_sweep_mean_std_over_two_seeds(local_sweep, capsys):
    sweep_dir, corpus = local_sweep
    testset = f"{corpus.name}/test"
    capsys.readouterr()
    assert main(["compare", str(sweep_dir), "--format", "json", "--no-log"]) == 0
    rows = json.loads(capsys.readouterr().out)
    model_rows = [r for r in rows if r["model"] != "noisy" and r["testset"] == testset]
    assert {r["metric"] for r in model_rows} == set(METRICS)
    # every number is the mean / sample std of what the two jobs logged to MLflow
    uri = f"sqlite:///{sweep_dir / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    runs = []
    for cell in ("s0", "s1"):
        run_id = (sweep_dir / "cells" / cell / "mlflow_run_id").read_text().strip()
        runs.append(client.get_run(run_id).data.metrics)
        record = json.loads((sweep_dir / "cells" / cell / "eval" / "final.json").read_text())
        assert record["done"] and record["testsets"][str(corpus / "test")]["n"] == 3
    for r in model_rows:
        vals = [m[f"eval/{testset}/enhanced/{r['metric']}"] for m in runs]
        assert r["n"] == 2
        assert r["mean"] == pytest.approx(statistics.mean(vals), rel=1e-6)
        assert r["std"] == pytest.approx(statistics.stdev(vals), rel=1e-6, abs=1e-9)
    assert main(["compare", str(sweep_dir), "--no-log"]) == 0
    md = capsys.readouterr().out
    assert "±" in md and "pesq" in md.lower()


def test_sweep_mlflow_parent_and_children(local_sweep):
    """The sweep's MLflow parent run and one finished child run per cell, named after it, whose
    config records the parent."""
    sweep_dir, _ = local_sweep
    parent = json.loads((sweep_dir / "ledger.json").read_text())["mlflow"]["parent_run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("journey")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["s0", "s1"]
    assert all("val/pesq" in r.data.metrics and r.info.status == "FINISHED" for r in children)
    p_run = client.get_run(parent)
    assert p_run.data.tags["se.kind"] == "sweep" and p_run.info.status == "FINISHED"
    assert f"parent_run_id: {parent}" in (sweep_dir / "cells" / "s0" / "config.yaml").read_text()


def test_evaluate_enhance_and_report_on_a_cell(local_sweep, tmp_path, capsys):
    sweep_dir, corpus = local_sweep
    cell = sweep_dir / "cells" / "s0"
    capsys.readouterr()
    assert main(["evaluate", str(cell), "--testset", str(corpus / "valid"), "--json", "--workers", "1",
                 "--out", str(tmp_path / "eval"), "--metrics", "pesq,si_sdr"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["testset"] == f"{corpus.name}/valid" and summary["n"] == 2
    assert summary["enhanced"]["si_sdr"] is not None
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    sf.write(noisy / "a.wav", 0.01 * (1 + 0 * __import__("numpy").arange(12000)).astype("float32"), 16000)
    assert main(["enhance", str(cell / "checkpoints" / "best"), str(noisy), "--out", str(tmp_path / "enh")]) == 0
    out, sr = sf.read(tmp_path / "enh" / "a.wav")
    assert sr == 16000 and len(out) == 12000
    capsys.readouterr()
    assert main(["report", "efficiency", "--models", str(cell), "--clips", "1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["model"].startswith("rwsa-xs") and row["files"] == 1 and row["params"] > 0


# ---------------------------------------------------------------- the same journey on the real test SLURM


def _orchestrate(env: dict, *args: str) -> str:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"orchestrate {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _rows(sweep_dir: Path) -> dict:
    from orchestrator.sweeps.status import status_rows

    return {r["cell"]: r for r in status_rows(sweep_dir)}


def _wait(sweep_dir: Path, cond, timeout_s: float, what: str) -> dict:
    import time

    deadline = time.monotonic() + timeout_s * float(os.environ.get("SE_TEST_WAIT_SCALE", "2.5"))
    while time.monotonic() < deadline:
        rows = _rows(sweep_dir)
        bad = [(c, r["state"]) for c, r in rows.items() if r["state"] in ("failed", "cancelled")]
        assert not bad, f"cells ended {bad}: " + "\n".join(
            p.read_text()[-3000:] for p in sorted((sweep_dir / "logs").glob("*")))
        if cond(rows):
            return rows
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}: {_rows(sweep_dir)}")


@pytest.fixture()
def stop_mlflow_servers(tmp_path):
    """A SLURM sweep starts its own MLflow tracking server (SWEEP_DIR/mlflow-server): stop it."""
    yield
    from orchestrator import mlflow_server as ms

    for f in tmp_path.rglob(ms.SERVER_JSON):
        ms.stop_server(f.parent, timeout_s=10)


@pytest.mark.slurm
def test_slurm_sweep_preempted_with_workers_gives_the_same_compare_table(cluster, journey_corpus, tmp_path,
                                                                        stop_mlflow_servers):
    """The journey's sweep with DataLoader workers and the discriminator on, on the real test SLURM:
    cell s0 gets the preemption signal mid-run (USR2 to every process of its steps), exits 75, is
    requeued and resumes; each job evaluates inside itself; `compare` then prints the same table as
    the same sweep run uninterrupted (local executor)."""
    max_steps = 6
    base = {"trainer.max_steps": max_steps, "trainer.val_every": 3, "trainer.ckpt_every": 1,
            "data.num_workers": 2, "loss.discriminator": True}
    env = dict(cluster.env, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    path = journey_sweep(tmp_path, journey_corpus, "jslurm", **base)
    spec = json.loads(path.read_text())
    spec.update(profile="local", executor="slurm")
    path.write_text(json.dumps(spec))
    _orchestrate(env, "sweep", str(path), "--root", str(tmp_path / "slurm"))
    sweep_dir = tmp_path / "slurm" / "jslurm"
    _wait(sweep_dir, lambda r: (r["s0"]["step"] or 0) >= 2, 240, "s0 training")
    task = json.loads((sweep_dir / "ledger.json").read_text())["cells"]["s0"]["job_id"]
    cluster.run("scancel", "--signal=USR2", task)  # to every process of the job's steps (workers too)
    rows = _wait(sweep_dir, lambda r: all(x["state"] == "done" for x in r.values()), 600, "both cells done")
    assert rows["s0"]["attempts"] == 2 and rows["s1"]["attempts"] == 1
    attempts = (sweep_dir / "cells" / "s0" / "attempts.log").read_text()
    assert "rc=75" in attempts and attempts.strip().endswith("rc=0")
    # the reference: the same sweep, uninterrupted, local processes
    _orchestrate(env, "sweep", str(path), "--executor", "local", "--root", str(tmp_path / "local"))
    tables = [json.loads(_orchestrate(env, "compare", str(d), "--format", "json", "--no-log"))
              for d in (sweep_dir, tmp_path / "local" / "jslurm")]
    assert tables[0] and len(tables[0]) == len(tables[1])
    for a, b in zip(tables[0], tables[1], strict=True):
        assert (a["model"], a["testset"], a["metric"], a["n"]) == (b["model"], b["testset"], b["metric"], b["n"])
        assert a["mean"] == pytest.approx(b["mean"], abs=1e-9) and a["std"] == pytest.approx(b["std"], abs=1e-9)
    assert {r["n"] for r in tables[0] if r["model"] != "noisy"} == {2}
