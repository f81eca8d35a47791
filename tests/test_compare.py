"""`orchestrate compare` on synthetic finished runs with known metric values (SQLite MLflow store)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import statistics

import pytest

from orchestrator import cli
from orchestrator import compare as cmp
from orchestrator.errors import UserError

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

MODELS = {"rwsa-xs": 1_234_567, "semamba": 2_250_000}
SEEDS = [0, 1, 2]
TESTSETS = ["vb_demand", "dns_nr"]
METRICS = ["pesq", "ssnr", "estoi", "si_sdr"]
NOISY = {("vb_demand", "pesq"): 1.97, ("vb_demand", "ssnr"): 1.68, ("vb_demand", "estoi"): 0.79,
         ("vb_demand", "si_sdr"): 8.4, ("dns_nr", "pesq"): 1.58, ("dns_nr", "ssnr"): 5.1,
         ("dns_nr", "estoi"): 0.81, ("dns_nr", "si_sdr"): 9.07}  # fmt: skip


def _child(client, exp_id, parent_id, sweep, model, seed, metrics, *, status="FINISHED", options=None,
           extra_params=None):
    from mlflow.entities import Metric, Param

    run = client.create_run(
        exp_id,
        run_name=f"{model}_s{seed}",
        tags={"mlflow.parentRunId": parent_id, "se.kind": "train", "se.sweep": sweep, "se.model": model,
              "se.seed": str(seed)},
    )  # fmt: skip
    params = {"model.name": model, "trainer.seed": str(seed), "model.params": str(MODELS.get(model, 1000))}
    params.update({f"model.options.{k}": str(v) for k, v in (options or {}).items()})
    params.update({"name": f"{sweep}-{model}_s{seed}", "mlflow.run_name": f"{model}_s{seed}", **(extra_params or {})})
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()] + [Metric("train/loss_g", 1.0, 0, 5)],
        params=[Param(k, v) for k, v in params.items()],
    )
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """2 models x 3 seeds x 2 test sets with random known values, plus runs that must not count."""
    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("demo", artifact_location=(d / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name="demo", tags={"se.kind": "sweep", "se.sweep": "demo"}).info.run_id
    rng = random.Random(1234)
    expected: dict[tuple[str, str, str], list[float]] = {}
    for model in MODELS:
        for seed in SEEDS:
            values = {}
            for ts in TESTSETS:
                for m in METRICS:
                    v = rng.uniform(0.5, 20.0)
                    values[f"eval/{ts}/enhanced/{m}"] = v
                    values[f"eval/{ts}/noisy/{m}"] = NOISY[(ts, m)]
                    expected.setdefault((model, ts, m), []).append(v)
            _child(client, exp_id, parent, "demo", model, seed, values)
    # must not count: a failed cell of this sweep, and a finished run of another sweep
    wild = {f"eval/{ts}/enhanced/{m}": 999.0 for ts in TESTSETS for m in METRICS}
    _child(client, exp_id, parent, "demo", "rwsa-xs", 3, wild, status="FAILED")
    other = client.create_run(exp_id, run_name="other", tags={"se.kind": "sweep", "se.sweep": "other"}).info.run_id
    _child(client, exp_id, other, "other", "rwsa-xs", 0, wild)
    sweep_dir = d / "runs" / "demo"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "ledger.json").write_text(
        json.dumps({"sweep": "demo", "mlflow": {"tracking_uri": uri, "parent_run_id": parent}, "cells": {}})
    )
    return {"uri": uri, "client": client, "parent": parent, "expected": expected, "dir": sweep_dir, "exp": exp_id}


def _check_records(records, expected):
    got = {(r["model"], r["testset"], r["metric"]): r for r in records}
    for (model, ts, m), vals in expected.items():
        r = got.pop((model, ts, m))
        assert r["mean"] == statistics.mean(vals)
        assert r["std"] == statistics.stdev(vals)
        assert r["n"] == 3
        assert r["params"] == MODELS[model]
    # what is left is the noisy input's row: the same value in every run (6 runs)
    assert set(got) == {("noisy", ts, m) for ts in TESTSETS for m in METRICS}
    for (_, ts, m), r in got.items():
        assert r["mean"] == pytest.approx(NOISY[(ts, m)], abs=1e-12)
        assert r["std"] == pytest.approx(0.0, abs=1e-12)
        assert r["n"] == 6


def test_compare_from_sweep_dir_gives_exact_mean_and_std(store):
    table = cmp.compare_sweep(store["dir"])
    assert table.parent_run_id == store["parent"]
    assert table.testsets == sorted(TESTSETS)
    assert table.metrics == METRICS  # the papers' order: PESQ, SSNR, ESTOI, SI-SDR
    assert [r.model for r in table.rows] == ["noisy", "rwsa-xs", "semamba"]
    assert len(table.run_ids) == 6  # the failed run and the other sweep's run are left out
    _check_records(cmp.to_records(table), store["expected"])


def test_cli_by_name_json_and_artifact_on_parent(store, capsys):
    rc = cli.main(["compare", "demo", "--tracking-uri", store["uri"], "--experiment", "demo", "--format", "json"])
    assert rc == 0
    out = capsys.readouterr().out
    _check_records(json.loads(out), store["expected"])
    names = {a.path for a in store["client"].list_artifacts(store["parent"])}
    assert {"compare.md", "compare.csv", "compare.json", "compare.tex"} <= names
    local = store["client"].download_artifacts(store["parent"], "compare.json")
    _check_records(json.loads(open(local).read()), store["expected"])


def test_markdown_csv_latex_show_the_numbers(store):
    table = cmp.compare_sweep(store["dir"])
    vals = store["expected"][("semamba", "vb_demand", "pesq")]
    cell = f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"
    md = cmp.render(table, "md")
    row = next(line for line in md.splitlines() if line.startswith("| semamba"))
    assert "| 2.25M | 3 |" in row and cell in row
    assert "vb_demand PESQ" in md.splitlines()[2]
    rows = list(csv.DictReader(io.StringIO(cmp.render(table, "csv"))))
    sem = next(r for r in rows if r["model"] == "semamba")
    assert float(sem["vb_demand/pesq/mean"]) == statistics.mean(vals)
    assert float(sem["vb_demand/pesq/std"]) == statistics.stdev(vals)
    assert sem["vb_demand/pesq/n"] == "3" and sem["params"] == "2250000"
    tex = cmp.render(table, "latex")
    assert f"${statistics.mean(vals):.3f} \\pm {statistics.stdev(vals):.3f}$" in tex
    assert "\\multicolumn{4}{c}{vb\\_demand}" in tex


def test_one_seed_has_no_std_and_ablations_are_separate_rows(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("abl", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp, tags={"se.kind": "sweep", "se.sweep": "abl"}).info.run_id
    _child(client, exp, parent, "abl", "mambattention", 0, {"eval/vb/enhanced/pesq": 3.1}, options={"shared": True})
    _child(client, exp, parent, "abl", "mambattention", 0, {"eval/vb/enhanced/pesq": 3.3}, options={"shared": False})
    _child(client, exp, parent, "abl", "mambattention", 1, {"eval/vb/enhanced/pesq": 3.5}, options={"shared": False})
    table = cmp.compare_sweep("abl", tracking_uri=uri)
    recs = {r["model"]: r for r in cmp.to_records(table)}
    assert set(recs) == {"mambattention (options.shared=True)", "mambattention (options.shared=False)"}
    one = recs["mambattention (options.shared=True)"]
    assert (one["mean"], one["std"], one["n"]) == (3.1, None, 1)  # n = 1: std is null / '-'
    two = recs["mambattention (options.shared=False)"]
    assert two["mean"] == statistics.mean([3.3, 3.5]) and two["std"] == statistics.stdev([3.3, 3.5])
    md = cmp.render(table, "md")
    assert "3.100 ± -" in md


def test_bad_input_is_a_user_error(store, tmp_path):
    with pytest.raises(UserError, match="no ledger.json"):
        cmp.compare_sweep(str(tmp_path))
    with pytest.raises(UserError, match="no such MLflow experiment"):
        cmp.compare_sweep("demo", tracking_uri=store["uri"], experiment="nope")
    with pytest.raises(UserError, match="no runs found"):
        cmp.compare_sweep("nosuchsweep", tracking_uri=store["uri"])
    with pytest.raises(UserError, match="no such database"):
        cmp.compare_sweep("demo", tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    (tmp_path / "ledger.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        cmp.compare_sweep(str(tmp_path))
    assert cli.main(["compare", "nosuchsweep", "--tracking-uri", store["uri"]]) == 2


def test_a_grid_axis_other_than_the_seed_makes_separate_rows(tmp_path):
    """Runs differing in optim.lr are different rows even with one model name; seeds are pooled."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("lr", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp, tags={"se.kind": "sweep", "se.sweep": "lr"}).info.run_id
    vals = {("0.001", 0): 3.0, ("0.001", 1): 3.2, ("0.0005", 0): 2.5, ("0.0005", 1): 2.9}
    for (lr, seed), v in vals.items():
        _child(client, exp, parent, "lr", "rwsa-xs", seed, {"eval/vb/enhanced/pesq": v},
               extra_params={"optim.lr": lr, "data.train": "/data/train"})  # fmt: skip
    recs = {r["model"]: r for r in cmp.to_records(cmp.compare_sweep("lr", tracking_uri=uri))}
    assert set(recs) == {"rwsa-xs (optim.lr=0.001)", "rwsa-xs (optim.lr=0.0005)"}
    hi = recs["rwsa-xs (optim.lr=0.001)"]
    assert (hi["mean"], hi["std"], hi["n"]) == (statistics.mean([3.0, 3.2]), statistics.stdev([3.0, 3.2]), 2)
