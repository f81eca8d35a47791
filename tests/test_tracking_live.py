"""Live, exactly-once MLflow logging of the real trainer against a real `mlflow server`.

- metrics reach MLflow while the run trains, ahead of every checkpoint (at most log_every steps late);
- SIGTERM at a random step, and SIGKILL at a random step (the run loses everything after its newest
  checkpoint and recomputes it), then resume: the metric history equals an uninterrupted run's,
  point for point (no step twice, none missing);
- provenance tags (full git commit, dirty flag, user, package versions), the resolved config as an
  artifact, MLflow system metrics (system/cpu_utilization_percentage ...), continued after a resume.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_training import TINY_MODEL, finish, start

from orchestrator import mlflow_server as ms
from training.preempt import EXIT_PREEMPTED
from training.progress import progress_eta, progress_rate, read_progress
from training.tracking import git_source

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS, LOG_EVERY, VAL_EVERY, CKPT_EVERY = 30, 2, 10, 25
WALL_CLOCK = ("train/steps_per_s",)  # same steps, values depend on the clock


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow-live")
    info = ms.start_server(d, workers=2, timeout_s=180)
    try:
        yield info.uri
    finally:
        ms.stop_server(d, timeout_s=10)
        if ms._pid_alive(info.pid):
            os.killpg(info.pid, 9)


@pytest.fixture(scope="module")
def setup(demo_corpus, server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    cfg = {
        "name": "live", "model": TINY_MODEL,
        "data": {"train": str(demo_corpus / "train"), "valid": str(demo_corpus / "valid"), "segment_samples": 1800,
                 "batch_size": 2, "valid_limit": 1},
        "trainer": {"max_steps": MAX_STEPS, "val_every": VAL_EVERY, "ckpt_every": CKPT_EVERY,
                    "log_every": LOG_EVERY, "pesq_workers": 0, "num_threads": 1},
        "mlflow": {"tracking_uri": server, "experiment": "live", "system_metrics_s": 1},
    }
    path = tmp / "live.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return tmp, path


@pytest.fixture(scope="module")
def straight(setup):
    tmp, cfg = setup
    wd = tmp / "straight"
    assert finish(start(cfg, wd)) == 0
    return wd


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def history(uri: str, workdir: Path) -> dict[str, list[tuple[int, float]]]:
    c = client(uri)
    run_id = (workdir / "mlflow_run_id").read_text().strip()
    out = {}
    for key in c.get_run(run_id).data.metrics:
        if key.startswith("system/"):
            continue
        pts = sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))
        out[key] = [(s, None) for s, _ in pts] if key in WALL_CLOCK else pts
    return out


def assert_same_history(a: dict, b: dict) -> None:
    """Same keys, same steps (each once), same values (validation scores: 1e-12 relative, see
    tests/test_training.py::assert_same_history)."""
    assert sorted(a) == sorted(b)
    for key in a:
        steps = [s for s, _ in a[key]]
        assert steps == [s for s, _ in b[key]] and len(set(steps)) == len(steps), key
        for (_, x), (_, y) in zip(a[key], b[key]):
            assert x == y or (key.startswith("val/") and abs(x - y) <= 1e-12 * max(1.0, abs(y))), (key, x, y)


def newest_checkpoint(workdir: Path) -> int:
    ck = workdir / "checkpoints"
    steps = [int(p.name[5:]) for p in ck.glob("step-*")] if ck.is_dir() else []
    return max(steps, default=0)


def run_until_logged(uri: str, cfg: Path, wd: Path, target: int) -> tuple[subprocess.Popen, int, int]:
    """Start a run, poll MLflow until it holds train/loss_g at a step >= target. Returns the process,
    the newest checkpoint step seen just before the poll, and the largest logged step."""
    p = start(cfg, wd)
    t0 = time.time()
    while True:
        assert p.poll() is None, f"run ended (rc {p.returncode}) before step {target} was logged"
        assert time.time() - t0 < 600
        if (wd / "mlflow_run_id").exists():
            ckpt = newest_checkpoint(wd)
            run_id = (wd / "mlflow_run_id").read_text().strip()
            steps = [m.step for m in client(uri).get_metric_history(run_id, "train/loss_g")]
            if steps and max(steps) >= target:
                return p, ckpt, max(steps)
        time.sleep(0.05)


def test_straight_run_provenance_config_and_system_metrics(server, straight):
    c = client(server)
    run_id = (straight / "mlflow_run_id").read_text().strip()
    run = c.get_run(run_id)
    tags = run.data.tags
    commit, dirty = git_source()
    assert len(commit) == 40 and tags["mlflow.source.git.commit"] == commit and tags["se.git_dirty"] == dirty
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "JOB"
    assert tags["se.version.torch"].startswith("2.") and tags["se.version.mlflow"] and tags["se.version.python"]
    (straight / "dl").mkdir()
    config = yaml.safe_load(Path(c.download_artifacts(run_id, "config.yaml", str(straight / "dl"))).read_text())
    assert config["trainer"]["log_every"] == LOG_EVERY and config["mlflow"]["tracking_uri"] == server
    cpu = c.get_metric_history(run_id, "system/cpu_utilization_percentage")
    mem = c.get_metric_history(run_id, "system/system_memory_usage_megabytes")
    assert cpu and mem and all(0.0 <= m.value <= 100.0 * os.cpu_count() for m in cpu)
    assert all(m.value > 0 for m in mem)
    h = history(server, straight)
    assert [s for s, _ in h["train/loss_g"]] == list(range(LOG_EVERY, MAX_STEPS + 1, LOG_EVERY))
    assert [s for s, _ in h["val/pesq"]] == list(range(VAL_EVERY, MAX_STEPS + 1, VAL_EVERY))


def test_git_commit_from_submission_env_without_git(monkeypatch, tmp_path):
    """In a container without git, the commit captured at submission (SE_GIT_COMMIT) is used."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no git binary
    monkeypatch.setenv("SE_GIT_COMMIT", "a" * 40)
    monkeypatch.setenv("SE_GIT_DIRTY", "false")
    assert git_source() == ("a" * 40, "false")
    monkeypatch.delenv("SE_GIT_COMMIT")
    assert git_source() == ("unknown", "false")


def test_capture_source_env_sets_commit_for_jobs(monkeypatch):
    from training.tracking import capture_source_env

    monkeypatch.delenv("SE_GIT_COMMIT", raising=False)
    monkeypatch.delenv("SE_GIT_DIRTY", raising=False)
    capture_source_env()
    assert (os.environ["SE_GIT_COMMIT"], os.environ["SE_GIT_DIRTY"]) == git_source()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_live_then_preempt_at_random_step_then_resume_equals_straight(server, setup, straight, sig):
    tmp, cfg = setup
    wd = tmp / f"cut-{sig.name}"
    target = random.randrange(LOG_EVERY + 1, CKPT_EVERY - 4)
    p, ckpt, logged = run_until_logged(server, cfg, wd, target)
    # live: points beyond the newest checkpoint are already in MLflow (checkpoint-gated logging
    # would show nothing before step 25)
    assert logged > ckpt
    os.kill(p.pid, sig)
    rc = finish(p)
    assert rc == (EXIT_PREEMPTED if sig == signal.SIGTERM else -signal.SIGKILL)
    c = client(server)
    run_id = (wd / "mlflow_run_id").read_text().strip()
    if sig == signal.SIGKILL:  # the steps after the newest checkpoint are in MLflow and will be recomputed
        assert newest_checkpoint(wd) < max(m.step for m in c.get_metric_history(run_id, "train/loss_g"))
    assert finish(start(cfg, wd)) == 0
    assert (wd / "mlflow_run_id").read_text().strip() == run_id  # the same run, re-opened
    assert_same_history(history(server, wd), history(server, straight))
    sysm = [m.step for m in c.get_metric_history(run_id, "system/cpu_utilization_percentage")]
    assert len(sysm) == len(set(sysm))  # system metrics continue after the resume, no step twice
    assert c.get_run(run_id).info.status == "FINISHED"
    # progress.json kept the rate window across the restart: samples of both sessions
    prog = read_progress(wd / "progress.json")
    assert prog["state"] == "done" and prog["step"] == MAX_STEPS and prog["last_val_step"] == MAX_STEPS
    assert max(w[2] for w in prog["window"]) == 1 and progress_rate(prog) > 0 and progress_eta(prog) == 0.0
