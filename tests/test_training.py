"""The training engine end to end on the demo corpus (tiny RWSA model, CPU, subprocess runs).

- SIGTERM at a random step -> exit 75 -> rerun: final G/D bitwise equal to an uninterrupted run,
  MLflow metric history identical (no duplicated or missing steps);
- SIGKILL inside a checkpoint save: the previous checkpoint loads, the run finishes, bitwise equal;
- a truncated shard: samples skipped and counted, training finishes;
- a bad segment length: exit 2 before any work.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from training.checkpoint import MARKER, load_file
from training.config import ConfigError, load_run_config
from training.preempt import EXIT_PREEMPTED

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 20
TINY_MODEL = {"name": "rwsa-xs", "options": {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}}


def tiny_config(corpus: Path, db: Path, **trainer) -> dict:
    return {
        "name": "tiny",
        "model": TINY_MODEL,
        "data": {"train": str(corpus / "train"), "valid": str(corpus / "valid"), "segment_samples": 1800,
                 "batch_size": 2, "valid_limit": 1},
        "trainer": {"max_steps": MAX_STEPS, "val_every": 10, "ckpt_every": 4, "log_every": 4, "pesq_workers": 0,
                    "num_threads": 1, **trainer},
        "mlflow": {"tracking_uri": f"sqlite:///{db}", "experiment": "test-training"},
    }


def _env(**extra) -> dict:
    # The default scan backend (the fused C kernels on CPU): resume must be bitwise exact with it.
    env = {k: v for k, v in os.environ.items() if k != "SE_SCAN_BACKEND"}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT), **extra}


def start(cfg_path: Path, workdir: Path, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "training.run", "--config", str(cfg_path), "--workdir", str(workdir)]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(p: subprocess.Popen, timeout: float = 900) -> int:
    _, err = p.communicate(timeout=timeout)
    if p.returncode not in (0, EXIT_PREEMPTED):
        print(err.decode(errors="replace")[-4000:])
    return p.returncode


def wait_for(path: Path, p: subprocess.Popen, timeout: float = 600) -> None:
    t0 = time.time()
    while not path.exists():
        assert p.poll() is None, f"run ended (rc {p.returncode}) before {path} appeared"
        assert time.time() - t0 < timeout, f"timeout waiting for {path}"
        time.sleep(0.1)


def final_state(workdir: Path) -> dict:
    return load_file(workdir / "checkpoints" / f"step-{MAX_STEPS:06d}" / "state.pt")


def assert_same_weights(a: dict, b: dict) -> None:
    for part in ("generator", "discriminator"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"


def metric_history(db: Path, workdir: Path) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    run_id = (workdir / "mlflow_run_id").read_text().strip()
    out = {}
    for key in client.get_run(run_id).data.metrics:
        if key == "train/steps_per_s" or key.startswith("system/"):  # wall-clock dependent
            continue
        out[key] = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return out


def assert_same_history(a: dict, b: dict) -> None:
    """Same metrics at the same steps; values bitwise equal, except the validation scores of the
    third-party float64 metric code (pystoi, pesq), which may differ in the last bits between two
    processes given identical audio (numpy's SIMD sums depend on array alignment): 1e-12 relative."""
    assert sorted(a) == sorted(b)
    for key in a:
        assert [s for s, _ in a[key]] == [s for s, _ in b[key]], key
        for (_, x), (_, y) in zip(a[key], b[key]):
            if key.startswith("val/"):
                assert abs(x - y) <= 1e-12 * max(1.0, abs(y)), (key, x, y)
            else:
                assert x == y, (key, x, y)


@pytest.fixture(scope="module")
def setup(demo_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("training")
    db = tmp / "mlflow.db"
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(demo_corpus, db)))
    return tmp, db, cfg


@pytest.fixture(scope="module")
def straight(setup):
    tmp, db, cfg = setup
    wd = tmp / "straight"
    assert finish(start(cfg, wd)) == 0
    return wd


def test_straight_run_writes_progress_checkpoints_and_mlflow(setup, straight):
    tmp, db, _ = setup
    progress = json.loads((straight / "progress.json").read_text())
    assert progress["state"] == "done" and progress["step"] == MAX_STEPS and progress["best_pesq"] > 1.0
    ckpts = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert ckpts == ["best", f"step-{MAX_STEPS - 4:06d}", f"step-{MAX_STEPS:06d}"]  # keep_last 2 + best
    hist = metric_history(db, straight)
    assert [s for s, _ in hist["train/loss_g"]] == list(range(4, MAX_STEPS + 1, 4))
    assert [s for s, _ in hist["val/pesq"]] == list(range(10, MAX_STEPS + 1, 10))
    assert "val/noisy_pesq" in hist and "data/skipped_corrupt" in hist and "train/pesq_failed" in hist


def test_sigterm_at_random_step_then_resume_is_bitwise_identical(setup, straight):
    tmp, db, cfg = setup
    wd = tmp / "preempted"
    p = start(cfg, wd)
    wait_for(wd / "checkpoints" / "step-000004" / MARKER, p)
    time.sleep(random.uniform(0.0, 2.0))
    os.kill(p.pid, signal.SIGTERM)
    assert finish(p) == EXIT_PREEMPTED
    progress = json.loads((wd / "progress.json").read_text())
    assert progress["state"] == "preempted" and 4 <= progress["step"] < MAX_STEPS
    stopped = progress["step"]
    assert (wd / "checkpoints" / f"step-{stopped:06d}" / MARKER).exists()  # saved at the step it stopped
    assert finish(start(cfg, wd)) == 0
    assert_same_weights(final_state(straight), final_state(wd))
    assert_same_history(metric_history(db, wd), metric_history(db, straight))


def test_sigkill_inside_checkpoint_save_resumes_from_previous(setup, straight):
    tmp, db, cfg = setup
    wd = tmp / "killed"
    p = start(cfg, wd, SE_FAULTS="checkpoint.files_written=pause:300@step=8")  # a window for the kill
    wait_for(wd / "checkpoints" / ".tmp-step-000008" / "state.pt", p)
    p.kill()
    p.wait()
    ck = wd / "checkpoints"
    assert (ck / "step-000004" / MARKER).exists() and not (ck / "step-000008").exists()
    assert finish(start(cfg, wd)) == 0
    assert not (ck / ".tmp-step-000008").exists()
    assert_same_weights(final_state(straight), final_state(wd))
    assert_same_history(metric_history(db, wd), metric_history(db, straight))


def test_corrupt_shard_is_skipped_counted_and_training_continues(demo_corpus, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from training.run import train

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    corpus = tmp_path / "corpus"
    shutil.copytree(demo_corpus, corpus)
    shard = corpus / "train" / "shard-000001.tar"
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) // 2])  # truncated mid-shard
    db = tmp_path / "mlflow.db"
    raw_cfg = tiny_config(corpus, db, max_steps=6, val_every=0, ckpt_every=6)
    raw_cfg["data"]["valid"] = None
    raw_cfg["loss"] = {"discriminator": False}
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(raw_cfg))
    assert train(load_run_config(cfg_path), tmp_path / "run") == 0
    client = MlflowClient(f"sqlite:///{db}")
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).data.metrics["data/skipped_corrupt"] >= 1
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["step"] == 6


def test_bad_segment_length_exits_2_before_work(demo_corpus, tmp_path):
    raw = tiny_config(demo_corpus, tmp_path / "m.db")
    raw["data"]["segment_samples"] = 3000  # 26 frames, not a multiple of 4
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="multiple of 4"):  # the config's own rule: before any work
        load_run_config(p)
    assert subprocess.run([sys.executable, "-m", "training.run", "--config", str(p), "--workdir",
                           str(tmp_path / "run")], capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120).returncode == 2
    assert not (tmp_path / "run" / "checkpoints").exists()
