"""`orchestrate compare` prints Tables II and V in the paper's layout, golden-tested on real MLflow runs:
one run per cell of the real sweep files, created by the trainer's tracker with the trainer's params
(the cell's resolved config) and given its test-set results by the end-of-job evaluation's writer
(`final_eval.log_summary`), with the paper's means plus a per-seed offset as the values. And Table VI's
training time: `orchestrate report efficiency --sweep` on the runs of two real 2-step trainings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import train_overrides
from test_fidelity_sweeps import TESTSET_NAMES

from orchestrator.cli import main
from orchestrator.mlflow_sweep import ensure_parent_run
from orchestrator.sweeps.plan import build_plan
from training.config import flatten, load_run_config, to_container
from training.evaluation.final_eval import log_summary
from training.tracking import build_tracker

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
PARAMS = {"mambattention": 2_325_841, "xlstm-senet": 2_203_601, "lstm-senet": 2_343_889, "semamba": 2_258_769,
          "mpsenet-official": 2_048_849}
# Table II: (SIG, BAK, OVRL) per test set; Table V: (PESQ, SSNR, ESTOI, SI-SDR) -- the paper's means
DNSMOS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
TABLE2 = {"noisy": {"no_reverb": (3.39, 2.62, 2.48), "real": (3.05, 2.51, 2.26), "with_reverb": (1.76, 1.50, 1.39)},
          "dns2020": {"no_reverb": (3.62, 4.19, 3.40), "real": (3.46, 4.06, 3.17), "with_reverb": (2.88, 3.41, 2.37)},
          "vb_demandex": {"no_reverb": (3.57, 4.16, 3.35), "real": (3.25, 3.90, 2.90),
                          "with_reverb": (2.66, 3.71, 2.16)}}
SE = ("pesq", "ssnr", "estoi", "si_sdr")
TABLE5 = {"noisy": (1.58, 6.22, 0.81, 9.07), "xlstm-senet": (3.59, 14.53, 0.95, 20.85),
          "lstm-senet": (3.60, 15.02, 0.96, 21.00), "semamba": (3.59, 14.83, 0.96, 21.04),
          "mpsenet-official": (3.61, 14.97, 0.95, 20.92), "mambattention": (3.67, 15.12, 0.96, 21.23)}


def _kind(testset_path: str) -> str:
    return next(k for k in ("no_reverb", "real", "with_reverb") if k in testset_path)


def _values(sweep: str, cfg, testset_path: str) -> tuple[dict, dict]:
    """(noisy, enhanced) means of one cell on one test set: the paper's, the seed moving them by 0.01."""
    delta = 0.01 * (cfg.trainer.seed - 2)
    if sweep == "mambattention_table2":
        variant = "dns2020" if "dns2020" in cfg.data.train else "vb_demandex"
        noisy, enh = TABLE2["noisy"][_kind(testset_path)], TABLE2[variant][_kind(testset_path)]
        return dict(zip(DNSMOS, noisy)), {m: v + delta for m, v in zip(DNSMOS, enh)}
    return dict(zip(SE, TABLE5["noisy"])), {m: v + delta for m, v in zip(SE, TABLE5[cfg.model.name])}


def _record_sweep(sweep: str, root: Path) -> str:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent = ensure_parent_run(uri, sweep, sweep)
    for cell in build_plan(REPO / "sweeps" / f"{sweep}.yaml", root=root / "runs").cells:
        cfg = load_run_config(None, [f"mlflow.tracking_uri={uri}", f"mlflow.parent_run_id={parent}",
                                     "mlflow.system_metrics_s=0"], base=to_container(cell.config))
        work = root / "cells" / cell.id
        params = flatten(cfg) | {"model.params": str(PARAMS[cfg.model.name])}
        tracker = build_tracker(cfg.mlflow, work, rank=0, run_id=None, params=params,
                                tags={"se.kind": "train", "se.model": cfg.model.name, "se.seed": str(cfg.trainer.seed)})
        for path in cfg.eval.testsets:
            noisy, enhanced = _values(sweep, cfg, path)
            summary = {"testset": TESTSET_NAMES[path], "n": 150, "scored": 150, "excluded": 0, "failed_files": 0,
                       "noisy": noisy, "enhanced": enhanced, "failed": {"noisy": {}, "enhanced": dict.fromkeys(enhanced, 0)},
                       "problems": []}
            out = work / "eval"
            out.mkdir(parents=True, exist_ok=True)
            stem = TESTSET_NAMES[path].replace("/", "_")
            (out / f"{stem}.json").write_text(json.dumps(summary))
            (out / f"{stem}.csv").write_text("key,status\n")
            log_summary(uri, tracker.run_id, summary, out, cfg.trainer.max_steps)
        tracker.close("FINISHED")
    return uri


@pytest.mark.parametrize("sweep", ["mambattention_table2", "mambattention_table5"])
def test_compare_prints_the_papers_layout(sweep, tmp_path, capsys):
    uri = _record_sweep(sweep, tmp_path)
    capsys.readouterr()
    assert main(["compare", sweep, "--tracking-uri", uri, "--no-log", "--root", str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    golden = GOLDEN / f"compare_{sweep}.md"
    if os.environ.get("SE_UPDATE_GOLDEN") == "1":  # rewrite after a deliberate layout change; review the diff
        golden.write_text(text)
    assert text == golden.read_text()
    # the flat table is still there, and holds the same numbers
    assert main(["compare", sweep, "--tracking-uri", uri, "--no-log", "--root", str(tmp_path / "runs"),
                 "--layout", "generic"]) == 0
    flat = capsys.readouterr().out
    assert flat != text and "mambattention" in flat


def test_report_efficiency_gives_a_finished_sweeps_training_gpu_hours(journey_corpus, tmp_path, capsys):
    import mlflow

    from orchestrator.report import training_seconds

    db = tmp_path / "mlflow.db"
    for seed in (0, 1):  # two seeds of one model, tagged as one sweep (as the orchestrator's cells are)
        assert main(["train", "rwsa-xs", *train_overrides(journey_corpus, db), f"trainer.seed={seed}",
                     "trainer.val_every=2", "mlflow.tags={se.sweep: eff}", "--workdir", str(tmp_path / f"s{seed}")]) == 0
    capsys.readouterr()
    assert main(["report", "efficiency", "--sweep", "eff", "--tracking-uri", f"sqlite:///{db}", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["model"], row["seeds"], row["devices"], row["device"], row["steps"]) == ("rwsa-xs", 2, 1, "CPU", 2)
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = [client.get_run((tmp_path / f"s{seed}" / "mlflow_run_id").read_text().strip()) for seed in (0, 1)]
    hours = []
    for r in runs:  # each window: its steps at its logged rate; no more than the run's own life
        history = client.get_metric_history(r.info.run_id, "train/steps_per_s")
        assert sorted(m.step for m in history) == [1, 2]
        seconds = sum(1 / m.value for m in history)
        assert seconds == pytest.approx(training_seconds(history))
        assert 0 < seconds <= (r.info.end_time - r.info.start_time) / 1000
        hours.append(seconds / 3600)
    assert row["gpu_h"]["mean"] == pytest.approx(sum(hours) / 2) and row["wall_h"] == row["gpu_h"]  # 1 device
    assert training_seconds([(4, 2.0), (2, 1.0), (8, 4.0)]) == pytest.approx(2 / 1 + 2 / 2 + 4 / 4)
