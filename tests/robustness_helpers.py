"""Shared pieces of the robustness tests (tests/test_robustness_*.py, test_fuzz.py, test_runlock.py):
a tiny procedural demo corpus built by the real recipe and a checkpoint written by a real 2-step
training run (`python -m training.run`), plus helpers to run the real CLIs as processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"name": "rwsa-xs", "options": {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}}


def env(**extra) -> dict:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT), **extra}


def build_corpus(out: Path) -> Path:
    from sharding.recipes.demo import prepare_demo

    prepare_demo(out, speech="procedural", train_clips=4, valid_clips=1, test_clips=4, shard_samples=2,
                 min_seconds=1.0, max_seconds=1.2)
    return out


def tiny_config(corpus: Path, max_steps: int = 2, model: dict | None = None, **data) -> dict:
    return {
        "name": "tiny",
        "model": model or TINY_MODEL,
        "data": {"train": str(corpus / "train"), "valid": str(corpus / "valid"), "segment_samples": 1800,
                 "batch_size": 2, "valid_limit": 1, **data},
        "trainer": {"max_steps": max_steps, "val_every": 2, "ckpt_every": 2, "log_every": 1, "pesq_workers": 0,
                    "num_threads": 1},
        "mlflow": {"enabled": False},
    }


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_cmd(cfg_path: Path, workdir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "training.run", "--config", str(cfg_path), "--workdir", str(workdir), *overrides]


def run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout, **kw)


def orchestrate(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "orchestrator.cli", *args], timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are errors (no traceback allowed anywhere)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [ln for ln in stderr.splitlines() if "error:" in ln]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory) -> Path:
    """A run folder holding the checkpoint of a real 2-step training run of a tiny RWSA model."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = write_config(tmp / "tiny.yaml", tiny_config(corpus))
    r = run(train_cmd(cfg, tmp / "run"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp / "run" / "checkpoints" / "best" / "COMPLETE").is_file()
    return tmp / "run"


@contextlib.contextmanager
def full_disk(folder: Path, size_kb: int):
    """``folder`` on a tmpfs of ``size_kb`` KiB (root only: ENOSPC when full, the honest full disk);
    yields ``(preexec_fn, errno name)``. Elsewhere no mount: the child runs under RLIMIT_FSIZE =
    size_kb (SIGXFSZ ignored, so a write past it fails with EFBIG), which the code treats alike."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                           capture_output=True)
        mounted = r.returncode == 0
    if mounted:
        try:
            yield None, "ENOSPC"
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        return

    def limit():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_kb * 1024, size_kb * 1024))

    yield limit, "EFBIG"
