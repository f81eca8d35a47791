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

from orchestrator.cli import main

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

TINY = {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}
METRICS = ["pesq", "estoi", "si_sdr", "ssnr"]


def journey_sweep(tmp_path: Path, corpus: Path, name: str, **base) -> Path:
    """A demo-sized sweep file: tiny RWSA-XS x 2 seeds, 2 steps, evaluated on the corpus's test split."""
    spec = {
        "name": name,
        "base": {
            "model.name": "rwsa-xs", "model.options": TINY,
            "data.train": str(corpus / "train"), "data.valid": str(corpus / "valid"),
            "data.segment_samples": 1800, "data.batch_size": 2, "data.valid_limit": 1,
            "trainer.max_steps": 2, "trainer.val_every": 2, "trainer.ckpt_every": 1, "trainer.log_every": 1,
            "trainer.pesq_workers": 1, "trainer.num_threads": 1,
            "eval.testsets": [str(corpus / "test")], "eval.num_workers": 1, **base,
        },
        "grid": {"trainer.seed": [0, 1]},
        "resources": {"max_parallel": 1},
        "executor": "local",
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


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
