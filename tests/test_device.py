"""Device policy, numeric settings, runtime facts, and bf16 autocast of every registered model.

- A GPU request without a visible GPU (trainer.device=cuda, or launcher.gpus_per_node > 0 with
  device auto) is refused at start with the reason: unit level, and a real `training.run` that exits 2
  before any work. There is no GPU here, so "no GPU visible" is the real state of this machine.
- A real 2-step run logs its runtime facts (device, backend, world size, versions, scan backend)
  in its log and as MLflow tags.
- trainer.deterministic "auto" is on for CPU and off for GPU; TF32 follows its switch on NVIDIA only.
- bf16 autocast on CPU for every model of the registry (tiny widths, 8 frames): finite generator
  loss and discriminator output, same shapes as fp32.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training import device as device_policy
from training import distributed
from training.config import ConfigError, load_run_config
from training.losses import LossWeights, generator_loss
from training.models import build_model, list_models
from training.stft import mag_pha_istft, mag_pha_stft

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"name": "rwsa-xs", "options": {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}}


def test_gpu_request_without_visible_gpu_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env = distributed.DistEnv()
    with pytest.raises(ConfigError, match=r"trainer.device=cuda but no GPU is visible.*torch") as e:
        distributed.pick_device("cuda", env)
    assert e.value.key_path == "trainer.device"
    with pytest.raises(ConfigError, match="launcher.gpus_per_node=4 but no GPU") as e:
        distributed.pick_device("auto", env, gpus_per_node=4)
    assert e.value.key_path == "launcher.gpus_per_node"
    assert distributed.pick_device("auto", env) == torch.device("cpu")
    assert distributed.pick_device("cpu", env, gpus_per_node=4) == torch.device("cpu")  # explicit CPU


def _write_cfg(tmp: Path, corpus: Path, **sections) -> Path:
    raw = {"name": "dev", "model": TINY_MODEL,
           "data": {"train": str(corpus / "train"), "valid": None, "segment_samples": 1800, "batch_size": 2},
           "trainer": {"max_steps": 2, "ckpt_every": 2, "log_every": 1, "pesq_workers": 0, "num_threads": 1},
           "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "device"}}
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(cfg: Path, wd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("SE_SCAN_BACKEND", None)
    if not torch.cuda.is_available():
        env["CUDA_VISIBLE_DEVICES"] = ""  # this machine has none; make it explicit for the message
    return subprocess.run([sys.executable, "-m", "training.run", "--config", str(cfg), "--workdir", str(wd)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_run_asking_for_gpus_on_a_cpu_machine_exits_2_before_work(demo_corpus, tmp_path):
    cfg = _write_cfg(tmp_path, demo_corpus, launcher={"gpus_per_node": 1})
    p = _run(cfg, tmp_path / "wd")
    assert p.returncode == 2, p.stderr[-2000:]
    assert "launcher.gpus_per_node=1 but no GPU is visible" in p.stderr
    assert "CUDA_VISIBLE_DEVICES=''" in p.stderr
    assert not (tmp_path / "wd" / "checkpoints").exists()


def test_run_logs_runtime_facts_and_tags_them_in_mlflow(demo_corpus, tmp_path):
    from mlflow.tracking import MlflowClient

    from training.mamba import kernels

    cfg = _write_cfg(tmp_path, demo_corpus)
    wd = tmp_path / "wd"
    p = _run(cfg, wd)
    assert p.returncode == 0, p.stderr[-2000:]
    log = (wd / "logs" / "rank-0.log").read_text()
    assert "runtime: device=cpu, backend=none, world_size=1, torch=" in log
    run_id = (wd / "mlflow_run_id").read_text().strip()
    tags = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id).data.tags
    v = kernels.versions()
    assert tags["se.device"] == "cpu" and tags["se.backend"] == "none" and tags["se.world_size"] == "1"
    assert tags["se.torch"] == torch.__version__ and tags["se.cuda"] == str(torch.version.cuda or "none")
    assert tags["se.rocm"] == "none" and tags["se.scan_backend"] in ("fused", "torch")
    assert tags["se.mamba_ssm"] == v["mamba_ssm"] and tags["se.causal_conv1d"] == v["causal_conv1d"]
    assert tags["se.deterministic"] == "true" and tags["se.precision"] == "fp32" and tags["se.tf32"] == "false"


def test_deterministic_auto_and_tf32_switch():
    assert device_policy.deterministic_for(torch.device("cpu"), "auto") is True
    assert device_policy.deterministic_for(torch.device("cuda", 0), "auto") is False
    assert device_policy.deterministic_for(torch.device("cuda", 0), True) is True
    assert load_run_config(base={}).trainer.deterministic == "auto"
    assert load_run_config(overrides=["trainer.deterministic=false"]).trainer.deterministic is False
    with pytest.raises(ConfigError, match="deterministic"):
        load_run_config(overrides=["trainer.deterministic=sometimes"])
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        # the flags are process-wide and settable without a GPU
        device_policy.numerics(torch.device("cuda", 0), False, tf32=True)
        nvidia = torch.version.hip is None
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark is nvidia
        assert torch.backends.cuda.matmul.allow_tf32 is nvidia and torch.backends.cudnn.allow_tf32 is nvidia
        device_policy.numerics(torch.device("cpu"), True, tf32=True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert not torch.backends.cuda.matmul.allow_tf32  # TF32 is for NVIDIA GPUs only
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=True)
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved[1:]


# ----- bf16 autocast, every registered model --------------------------------------------------------
def _tiny(name: str) -> dict:
    if name.startswith("rwsa"):
        return dict(TINY_MODEL["options"])
    if name == "metric-discriminator":
        return {}
    return {"channels": 16, "num_blocks": 1}


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core host torch's spinning threads made this 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", [n for n in list_models() if n != "metric-discriminator"])
def test_bf16_autocast_on_cpu_gives_finite_loss_and_fp32_shapes(name, one_thread):
    G = build_model(name, seed=0, **_tiny(name))
    D = build_model("metric-discriminator", seed=1)
    spec = G.stft
    n = spec.hop * (16 - 1)  # 16 frames: about the discriminator's minimum
    g = torch.Generator().manual_seed(0)
    clean = 0.1 * torch.randn(1, n, generator=g)
    noisy = clean + 0.05 * torch.randn(1, n, generator=g)
    clean_mag, clean_pha, clean_com = mag_pha_stft(clean, spec)
    noisy_mag, noisy_pha, _ = mag_pha_stft(noisy, spec)
    ref = [noisy_mag.shape, noisy_mag.shape, (*noisy_mag.shape, 2)]  # what fp32 gives (test_models.py)
    dtypes = []
    layer = next(m for m in G.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    layer.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = G(noisy_mag, noisy_pha)
        assert torch.bfloat16 in dtypes  # autocast did reach the model's layers
        mag, pha, com = (t.float() for t in out)
        assert [t.shape for t in (mag, pha, com)] == ref
        est = mag_pha_istft(mag, pha, spec, length=n)
        est_mag, _, rec_com = mag_pha_stft(est, spec)
        fake = D(clean_mag, est_mag).flatten()
    assert fake.shape == (1,) and torch.isfinite(fake).all()
    loss, _ = generator_loss(clean_wav=clean, clean_mag=clean_mag, clean_pha=clean_pha, clean_com=clean_com,
                             est_wav=est, est_mag=mag, est_pha=pha, est_com=com, rec_com=rec_com,
                             metric_fake=fake.float(), weights=LossWeights())
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in G.parameters() if p.grad is not None)
