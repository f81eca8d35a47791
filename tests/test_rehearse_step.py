"""`trainer.rehearse_step_s`: the rehearsal step keeps the real stream, tracker and checkpoint writer;
every logged window reaches MLflow exactly once under the real metric names, and the checkpoint holds
the optimizer's real state (so its size is the real one)."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import time  # noqa: E402

from conftest import train_overrides  # noqa: E402


def test_rehearsal_step_logs_every_window_once_and_writes_full_checkpoints(journey_corpus, tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.cli import main
    from training.progress import WINDOW_KEYS

    db = tmp_path / "mlflow.db"
    t0 = time.monotonic()
    rc = main(["train", "rwsa-xs", *train_overrides(journey_corpus, db, "trainer.max_steps=12", "trainer.log_every=4",
                                                     "trainer.val_every=6", "trainer.ckpt_every=6",
                                                     "trainer.rehearse_step_s=0.2"),
               "--workdir", str(tmp_path / "run")])
    assert rc == 0
    assert time.monotonic() - t0 >= 12 * 0.2  # each step waited the rehearsal step time
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text().strip()
    c = MlflowClient(f"sqlite:///{db}")
    for k in ("loss_g", "grad_norm", "magnitude"):
        assert k in WINDOW_KEYS
        assert sorted(m.step for m in c.get_metric_history(run_id, f"train/{k}")) == [4, 8, 12]
    # validation at the real cadence under the real names, synthetic values (the model never ran: no clips)
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "val/pesq")] == [(6, 1.5), (12, 2.0)]
    assert [m.step for m in c.get_metric_history(run_id, "val/noisy_estoi")] == [0]
    assert not (tmp_path / "run" / "artifacts").exists()
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["best", "step-000006", "step-000012"]
    from training.checkpoint import load_file

    state = load_file(tmp_path / "run" / "checkpoints" / "step-000006" / "state.pt")
    moments = state["opt_g"]["state"]  # the real size: Adam's two moments for every generator parameter
    assert len(moments) == sum(len(g["params"]) for g in state["opt_g"]["param_groups"]) > 0
    assert all({"exp_avg", "exp_avg_sq"} <= m.keys() for m in moments.values())
