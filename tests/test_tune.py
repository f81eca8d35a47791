"""`orchestrate tune`: Ray Tune + ASHA over a YAML search space, trials as MLflow child runs.

The fast test replaces the model training (``training.run.train``) by ``standin_train`` below:
real training of even the smallest model for several validations x 4 trials takes minutes on
2 CPU cores, and ASHA's decisions need scores that are known in advance. Everything else is the
real code path: the tune file, Ray Tune with ASHA, the trial that calls ``train(cfg, workdir,
on_validation=report)`` once and reports each validation's metrics, and the MLflow parent/child
runs. ``test_real_engine_tune`` (slow) runs the real engine (its trainer calls the callback).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator import tune as tn
from orchestrator.errors import UserError

for _var, _val in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("RAY_USAGE_STATS_ENABLED", "0"),
                   ("RAY_AUTH_MODE", "disabled")):  # fmt: skip
    os.environ[_var] = _val

REPO = Path(__file__).resolve().parents[1]
LRS = [1.0e-3, 5.0e-4, 2.5e-4, 1.25e-4]  # stand-in score grows with the LR: trial 0 is the best


def standin_pesq(lr: float, step: int) -> float:
    return 1.0 + 2.0 * (lr / 1.0e-3) * (1.0 - math.exp(-step / 20.0))


def standin_train(cfg, workdir, on_validation=None) -> int:
    """Stands in for ``training.run.train(cfg, workdir, on_validation=fn)`` (no model is trained, see
    module doc). Behaves as the engine does at its seams: creates the MLflow run as a child of
    ``cfg.mlflow.parent_run_id`` with ``cfg.mlflow.tags`` and the config's params, logs ``val/pesq``
    every ``trainer.val_every`` steps up to ``trainer.max_steps`` and calls ``on_validation(step,
    {"val/pesq": ...})`` then, writes progress, ends the run, exits 0."""
    from mlflow.tracking import MlflowClient

    workdir = Path(workdir)
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    exp = client.get_run(cfg.mlflow.parent_run_id).info.experiment_id
    tags = {**cfg.mlflow.tags, "mlflow.parentRunId": cfg.mlflow.parent_run_id, "se.kind": "train"}
    run_id = client.create_run(exp, run_name=cfg.mlflow.run_name, tags=tags).info.run_id
    client.log_param(run_id, "optim.lr", str(cfg.optim.lr))
    client.log_param(run_id, "trainer.max_steps", str(cfg.trainer.max_steps))
    (workdir / "mlflow_run_id").write_text(run_id + "\n")
    for step in range(1, cfg.trainer.max_steps + 1):
        if step % cfg.trainer.val_every == 0 or step == cfg.trainer.max_steps:
            time.sleep(0.3)  # a validation takes time: keeps the trials' reports interleaved
            pesq = standin_pesq(cfg.optim.lr, step)
            client.log_metric(run_id, "val/pesq", pesq, step=step)
            progress = {"step": step, "max_steps": cfg.trainer.max_steps, "cwd": os.getcwd()}
            (workdir / "progress.json").write_text(json.dumps(progress))
            if on_validation is not None:
                on_validation(step, {"val/pesq": pesq})
    client.set_terminated(run_id)
    return 0


def _write_spec(tmp_path: Path, **extra) -> Path:
    spec = {
        "name": "tune_test",
        "base": {"data.batch_size": 2, "trainer.max_steps": 40, "trainer.val_every": 10},
        "space": {"optim.lr": {"grid_search": LRS}},
        "scheduler": {"metric": "val/pesq", "mode": "max", "grace_period": 1, "reduction_factor": 2},
        "num_samples": 1,
        "max_concurrent": 2,
        "resources": {"cpu": 1},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tune_test"},
        "root": str(tmp_path / "runs"),
        **extra,
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_asha_stops_bad_trials_and_trials_are_child_runs(tmp_path):
    import ray.cloudpickle
    from mlflow.tracking import MlflowClient

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import tests/
    spec = tn.load_tune_spec(_write_spec(tmp_path))
    t0 = time.monotonic()
    out = tn.run_tune(spec, num_cpus=2, train_fn=standin_train, verbose=0)
    print(f"4-trial tune: {time.monotonic() - t0:.1f} s\n" + tn.format_outcome(out))
    assert out.max_iterations == 4
    assert len(out.trials) == 4 and all(t.error is None for t in out.trials)
    by_lr = {t.values["optim.lr"]: t for t in out.trials}
    best = by_lr[LRS[0]]
    assert out.best is best and best.iterations == 4 and not best.stopped_early
    assert best.best == pytest.approx(standin_pesq(LRS[0], 40))
    stopped = [t for t in out.trials if t.stopped_early]
    assert stopped and all(t.iterations < 4 for t in stopped)
    assert by_lr[LRS[3]].stopped_early  # the worst never survives the first rung
    for t in out.trials:  # each report is the score at its validation step
        assert t.last == pytest.approx(standin_pesq(t.values["optim.lr"], 10 * t.iterations))

    client = MlflowClient(tracking_uri=out.tracking_uri)
    parent = client.get_run(out.parent_run_id)
    assert parent.data.tags["se.kind"] == "sweep" and parent.data.tags["se.sweep"] == "tune_test"
    assert parent.data.tags["se.best_trial"] == best.trial_id
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{out.parent_run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(t.mlflow_run_id for t in out.trials)
    for r in children:
        t = next(t for t in out.trials if t.mlflow_run_id == r.info.run_id)
        assert r.data.tags["se.trial"] == t.trial_id and r.data.tags["se.sweep"] == "tune_test"
        hist = client.get_metric_history(r.info.run_id, "val/pesq")
        assert sorted(m.step for m in hist) == [10 * (i + 1) for i in range(t.iterations)]
        assert r.data.tags["se.tune_status"] == ("stopped" if t.stopped_early else "complete")
        # the trial's config reached the engine (its run's params)
        assert r.data.params["trainer.max_steps"] == "40"
        assert float(r.data.params["optim.lr"]) == t.values["optim.lr"]
    assert {a.path for a in client.list_artifacts(out.parent_run_id)} >= {"tune_results.json"}
    for t in out.trials:  # trials run where `orchestrate tune` was started: relative data paths work
        assert json.loads((Path(t.workdir) / "progress.json").read_text())["cwd"] == os.getcwd()
    saved = json.loads((spec.search_dir / "tune_results.json").read_text())
    assert saved["best"]["trial_id"] == best.trial_id


def test_tune_file_errors_name_the_key(tmp_path):
    with pytest.raises(UserError, match=r"space\.optim\.lr: unknown distribution 'normal'"):
        tn.load_tune_spec(_write_spec(tmp_path, space={"optim.lr": {"normal": [0, 1]}}))
    with pytest.raises(UserError, match=r"space\.optim\.lr: loguniform expects"):
        tn.load_tune_spec(_write_spec(tmp_path, space={"optim.lr": {"loguniform": [1e-3]}}))
    with pytest.raises(UserError, match="unknown key"):
        tn.load_tune_spec(_write_spec(tmp_path, schedular={}))
    with pytest.raises(UserError, match="scheduler.mode"):
        tn.load_tune_spec(_write_spec(tmp_path, scheduler={"mode": "up"}))
    from training.config import ConfigError

    with pytest.raises(ConfigError):  # a sampled value that the run config refuses, caught before Ray
        tn.load_tune_spec(_write_spec(tmp_path, space={"data.batch_size": {"choice": [2, -4]}}))
    assert cli.main(["tune", str(_write_spec(tmp_path, space={"optim.lr": {"uniform": [2, 1]}}))]) == 2


def test_demo_tune_file_loads():
    spec = tn.load_tune_spec(REPO / "sweeps" / "tune_demo.yaml")
    assert spec.metric == "val/pesq" and spec.mode == "max"
    assert set(spec.space) >= {"optim.lr", "data.batch_size", "data.segment_samples"}
    assert tn.max_iterations(spec) >= 2
    space = tn.search_space(spec)
    assert set(space) == set(spec.space)


@pytest.mark.slow
def test_real_engine_tune(tmp_path):
    """2 trials of the real training engine (rwsa-xs) on a tiny demo corpus: 4 steps, validation
    every 2 (reported through the trainer's on_validation callback), ASHA, MLflow children with the
    engine's metrics (157 s on 2 loaded cores; 581 s when trials re-ran the engine in chunks)."""
    from mlflow.tracking import MlflowClient

    from sharding.recipes.demo import prepare_demo

    demo = tmp_path / "demo"
    prepare_demo(demo, train_clips=8, valid_clips=2, test_clips=2, min_seconds=1.0, max_seconds=1.5,
                 speech="procedural")  # fmt: skip
    spec_path = _write_spec(
        tmp_path,
        base={"data.train": str(demo / "train"), "data.valid": str(demo / "valid"), "data.valid_limit": 2,
              "data.segment_samples": 3720, "data.batch_size": 2, "trainer.max_steps": 4, "trainer.val_every": 2,
              "trainer.ckpt_every": 2, "trainer.log_every": 1, "trainer.pesq_workers": 1, "model.name": "rwsa-xs"},
        space={"optim.lr": {"grid_search": [1e-3, 1e-4]}},
    )  # fmt: skip
    t0 = time.monotonic()
    out = tn.run_tune(tn.load_tune_spec(spec_path), num_cpus=2, verbose=0)
    print(f"real 2-trial tune: {time.monotonic() - t0:.0f} s\n" + tn.format_outcome(out))
    assert len(out.trials) == 2 and all(t.error is None for t in out.trials)
    assert any(t.iterations == 2 and not t.stopped_early for t in out.trials)  # the first to report goes on
    assert out.best is not None and out.best.best == max(t.best for t in out.trials)
    client = MlflowClient(tracking_uri=out.tracking_uri)
    for t in out.trials:
        run = client.get_run(t.mlflow_run_id)
        assert run.data.tags["mlflow.parentRunId"] == out.parent_run_id
        assert run.data.params["trainer.max_steps"] == "4"
        steps = sorted(m.step for m in client.get_metric_history(t.mlflow_run_id, "val/pesq"))
        assert steps == [2 * (i + 1) for i in range(t.iterations)]
        assert json.loads((Path(t.workdir) / "progress.json").read_text())["step"] == 2 * t.iterations


def test_engine_calls_on_validation_after_each_validation(demo_data, tmp_path, monkeypatch):
    """The seam tune relies on: the real trainer calls on_validation(step, val metrics) on rank 0
    after each validation, once that step's checkpoint (if any) is written."""
    from training.config import load_run_config
    from training.run import train

    cfg = load_run_config(None, [
        "model.name=rwsa-xs", "model.options={hidden: 8, num_blocks: 1}", f"data.train={demo_data / 'train'}",
        f"data.valid={demo_data / 'valid'}", "data.segment_samples=1800", "data.batch_size=2", "data.valid_limit=1",
        "trainer.max_steps=4", "trainer.val_every=2", "trainer.ckpt_every=2", "trainer.pesq_workers=0",
        "trainer.num_threads=1", "loss.discriminator=false", "mlflow.enabled=false"])
    seen = []

    def on_validation(step, metrics):
        progress = json.loads((tmp_path / "w" / "progress.json").read_text())
        seen.append((step, progress["step"], sorted(k for k in metrics if k in ("val/pesq", "val/best_pesq"))))
        assert 1.0 <= metrics["val/pesq"] <= 4.7

    assert train(cfg, tmp_path / "w", on_validation=on_validation) == 0
    assert seen == [(2, 2, ["val/best_pesq", "val/pesq"]), (4, 4, ["val/best_pesq", "val/pesq"])]
