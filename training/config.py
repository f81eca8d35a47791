"""The run configuration: one fully resolved `RunConfig` per training run (a sweep cell).

Sections: model, data, optim, loss, trainer, eval, launcher, mlflow. Defaults are the papers'
settings (``../shared/reference/models.md``: AdamW 5e-4, betas 0.8/0.99, wd 0.01, LR decay 0.99 per
epoch, global batch 8, loss weights 0.2/0.9/0.1/0.3/0.1/0.05, validation every 250 steps).
The training code reads ``model/data/optim/loss/trainer/eval/mlflow``; ``launcher`` is carried for
the orchestrator so that the saved config alone describes how the run was launched.

    cfg = load_run_config("run.yaml", ["trainer.max_steps=100", "model.name=semamba"])
    save_config(cfg, workdir / CONFIG_FILE)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

from common.atomic import atomic_write_text
from common.config import (
    ConfigError,
    build_config,
    field_help,
    flatten,
    load_yaml,
    option,
    to_container,
    to_yaml,
)
from training.model_names import segment_problem

__all__ = [
    "ConfigError",
    "RunConfig",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "LossConfig",
    "TrainerConfig",
    "EvalConfig",
    "LauncherConfig",
    "MlflowConfig",
    "load_run_config",
    "save_config",
    "to_yaml",
    "to_container",
    "flatten",
    "field_help",
]


@dataclass(kw_only=True)
class ModelConfig:
    name: str = option("rwsa-xs", "registered model name (see `orchestrate models`)")
    options: dict[str, Any] = option(help="keyword options of the model constructor (ablations)", factory=dict)


@dataclass(kw_only=True)
class DataConfig:
    train: str = option("data/demo/train", "training shards: a split folder (manifest.json + shard-*.tar), a brace "
                       "pattern, an http(s):// or s3:// folder URL, pipe: commands (docs/contracts.md)")
    valid: Optional[str] = option("data/demo/valid", "validation shards (any data.train source); null disables validation")
    segment_samples: Optional[int] = option(
        None, "training crop length in samples at 16 kHz; null = the model's (a length the model takes: "
        "training.model_names.segment_problem, checked with model.name)", ge=1)
    batch_size: int = option(8, "GLOBAL batch size, split evenly over the ranks", ge=1)
    num_workers: int = option(0, "data loader worker processes per rank", ge=0)
    valid_limit: Optional[int] = option(None, "use at most this many validation utterances", ge=1)
    skip_bad: bool = option(True, "skip (and count) undecodable or silent samples instead of failing")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = option(5e-4, "AdamW learning rate of generator and discriminator", gt=0)
    betas: list[float] = option(help="AdamW betas", factory=lambda: [0.8, 0.99])
    weight_decay: float = option(0.01, "AdamW weight decay", ge=0)
    lr_decay: float = option(0.99, "ExponentialLR gamma, applied once per epoch", gt=0, le=1)
    epoch_steps: Union[int, Literal["auto"], None] = option(
        None, "steps per epoch for the LR decay; null/auto = training clips in the manifest // global batch "
        "(the authors' epoch), an integer sets it", ge=1)
    grad_clip: Optional[float] = option(None, "clip the generator's gradient norm; null = no clipping", gt=0)

    def __post_init__(self):
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas: expected two numbers in [0, 1), got {self.betas}", "betas")


@dataclass(kw_only=True)
class LossConfig:
    metric: float = option(0.05, "weight of the metric-discriminator (adversarial) term", ge=0)
    magnitude: float = option(0.9, "weight of the compressed-magnitude MSE", ge=0)
    complex: float = option(0.1, "weight of the compressed-complex MSE (x2 as the authors' code)", ge=0)
    time: float = option(0.2, "weight of the waveform L1", ge=0)
    phase: float = option(0.3, "weight of the anti-wrapping phase losses (IP + GD + IAF)", ge=0)
    consistency: float = option(0.1, "weight of the STFT-consistency MSE (x2 as the authors' code)", ge=0)
    discriminator: bool = option(True, "train the metric discriminator (PESQ targets)")


@dataclass(kw_only=True)
class TrainerConfig:
    max_steps: int = option(1000, "total optimizer steps", ge=1)
    seed: int = option(0, "global seed (model init, data order, crops)", ge=0, le=2**32 - 1)
    val_every: int = option(250, "validate every N steps (0 = only at the end)", ge=0)
    ckpt_every: int = option(250, "checkpoint every N steps", ge=1)
    keep_last: int = option(2, "number of recent step checkpoints kept (>= 2), besides `best`")
    log_every: int = option(10, "log training metrics every N steps", ge=1)
    pesq_workers: int = option(2, "processes computing the discriminator's PESQ targets", ge=0)
    pesq_overlap: bool = option(
        True, "update G before D so that PESQ targets are computed during G's backward (G's metric term "
              "sees D before this step's update); false = the authors' order, PESQ on the critical path")
    precision: Literal["fp32", "bf16"] = option("fp32", "bf16 autocast (GPU only) or fp32")
    device: str = option("auto", "auto | cpu | cuda")
    time_limit_margin_s: int = option(300, "under SLURM, checkpoint and requeue this long before the limit", ge=0)
    deterministic: Union[bool, Literal["auto"]] = option(
        "auto", "deterministic kernels: auto = on for CPU (bitwise resume), off on GPU (speed)")
    tf32: bool = option(False, "TF32 for fp32 matmuls/convolutions on NVIDIA GPUs (faster, ~1e-3 rel.)")
    activation_checkpointing: bool = option(
        False, "recompute each TF block's activations in backward: far less memory, ~1/3 more compute")
    num_threads: Optional[int] = option(None, "torch intra-op threads per rank; null = torch default", ge=1)
    rehearse_step_s: float = option(
        0.0, "rehearsal (benchmarks/rehearse.py): > 0 replaces each forward/backward by a wait of this many "
             "seconds and synthetic losses under the real metric names; 0 = train", ge=0)

    def __post_init__(self):
        if self.keep_last < 2:
            raise ConfigError(
                f"keep_last: expected an integer >= 2 (the newest checkpoint may still be being written), "
                f"got {self.keep_last}",
                "keep_last",
            )


@dataclass(kw_only=True)
class EvalConfig:
    testsets: list[str] = option(help="test sets: folders with clean/+noisy/, noisy/ only, or shard splits", factory=list)
    metrics: list[str] = option(help="metrics to compute", factory=lambda: ["pesq", "estoi", "si_sdr", "ssnr"])
    num_workers: int = option(2, "metric worker processes (0 = score in this process)", ge=0)
    chunk_seconds: float = option(10.0, "enhance long files in chunks of this length", gt=0)
    overlap_seconds: float = option(
        0.5, "overlap between chunks (overlap-add), below chunk_seconds / 2; 0 = the papers' plain chunks", ge=0)
    mode: Literal["auto", "whole", "chunked", "rwsa_segments"] = option(
        "auto", "validation/test enhancement: rwsa_segments = the RWSA authors' 30,600-sample segments after "
        "whole-utterance RMS normalisation; whole; chunked (chunk/overlap_seconds); auto = rwsa_segments for "
        "rwsa-* models, else whole (validation) / chunked (test sets)")

    def __post_init__(self):
        problem = chunking_problem(self.chunk_seconds, self.overlap_seconds)
        if problem:
            raise ConfigError(problem, "overlap_seconds")
        known = {"pesq", "estoi", "stoi", "si_sdr", "ssnr", "dnsmos", "csig", "cbak", "covl", "composite"}
        for m in self.metrics:
            if m not in known:
                raise ConfigError(f"metrics: unknown metric {m!r} (known: {', '.join(sorted(known))})", "metrics")


@dataclass(kw_only=True)
class LauncherConfig:
    executor: Literal["local", "slurm", "ray"] = option("local", "where the run is launched")
    nproc: int = option(1, "DDP processes per node (local) / tasks per node (SLURM)", ge=1)
    nodes: int = option(1, "nodes per run (SLURM)", ge=1)
    gpus_per_node: int = option(0, "GPUs (GCDs on MI250X) per node", ge=0)
    cpus_per_task: int = option(2, "CPU cores per task", ge=1)
    mem_gb: int = option(8, "memory per node in GiB", ge=1)
    time_min: int = option(60, "time limit per job in minutes (runs chain through requeues)", ge=1)
    partition: Optional[str] = option(None, "SLURM partition")
    account: Optional[str] = option(None, "SLURM account")
    qos: Optional[str] = option(None, "SLURM QOS")
    profile: str = option("local", "cluster profile: a name under slurm/ or a YAML path")
    max_parallel: Optional[int] = option(
        None, "a sweep's cells running at once, every executor (SLURM: the job array's %N, the smaller of it "
        "and the profile's array_parallel); null = local/Ray one at a time, SLURM the profile's limit", ge=1)


@dataclass(kw_only=True)
class MlflowConfig:
    enabled: bool = option(True, "log to MLflow")
    tracking_uri: str = option("sqlite:///mlflow.db", "MLflow tracking URI (sqlite:///path, http://host:port)")
    experiment: str = option("se-orchestrator", "MLflow experiment name")
    run_name: Optional[str] = option(None, "MLflow run name; null = the run's name")
    parent_run_id: Optional[str] = option(None, "nest the run under this parent run (the sweep's)")
    tags: dict[str, str] = option(help="extra tags (sweep, cell, ...)", factory=dict)
    system_metrics_s: float = option(10.0, "sample CPU/memory/GPU metrics into the run every N s (0 = off)", ge=0)


@dataclass(kw_only=True)
class RunConfig:
    name: str = option("run", "run name (used for folders and MLflow)")
    model: ModelConfig = option(help="the model", factory=ModelConfig)
    data: DataConfig = option(help="the data", factory=DataConfig)
    optim: OptimConfig = option(help="the optimizers and LR schedule", factory=OptimConfig)
    loss: LossConfig = option(help="the generator loss weights", factory=LossConfig)
    trainer: TrainerConfig = option(help="the training loop", factory=TrainerConfig)
    eval: EvalConfig = option(help="evaluation", factory=EvalConfig)
    launcher: LauncherConfig = option(help="how the run is launched", factory=LauncherConfig)
    mlflow: MlflowConfig = option(help="experiment tracking", factory=MlflowConfig)

    def __post_init__(self):  # the crop against the model: the rule of the trainer and the pre-submit checks
        seg = self.data.segment_samples
        if isinstance(seg, int):
            problem = segment_problem(self.model.name, seg, discriminator=bool(self.loss.discriminator))
            if problem:
                raise ConfigError(problem, "data.segment_samples")


def chunking_problem(chunk_seconds: float, overlap_seconds: float) -> str | None:
    """Why chunks of ``chunk_seconds`` cross-faded over ``overlap_seconds`` cannot enhance audio (one line
    naming eval.overlap_seconds), None when they can: each chunk's two cross-fades may not overlap, so the
    overlap stays below half a chunk. The rule of `EvalConfig` and of the enhancer (`--overlap-seconds`)."""
    if not overlap_seconds * 2 < chunk_seconds:
        return (f"overlap_seconds: expected a number < chunk_seconds / 2 = {chunk_seconds / 2:g}, "
                f"got {overlap_seconds:g}")
    return None


def load_run_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    *,
    base: dict | None = None,
) -> RunConfig:
    """Defaults ← ``base`` mapping ← YAML file ``path`` ← ``key=value`` overrides, validated.

    Raises :class:`ConfigError` (one line: file or override, key path, expectation).
    """
    sources: list[tuple[str, dict]] = []
    if base:
        sources.append(("base config", base))
    if path is not None:
        sources.append((str(path), load_yaml(path)))
    return build_config(RunConfig, sources, overrides)


def save_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML atomically; returns the path."""
    atomic_write_text(path, to_yaml(cfg))
    return Path(path)


def replace(cfg: RunConfig, **sections: Any) -> RunConfig:
    """A copy of ``cfg`` with whole sections replaced (dataclasses.replace, re-validated)."""
    return dataclasses.replace(cfg, **sections)
