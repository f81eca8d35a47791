"""Load a trained generator from a checkpoint or run directory, and enhance audio of any length.

Accepted paths: a run directory (uses ``checkpoints/best`` when complete, else the newest complete
``checkpoints/step-N``), a checkpoint directory (holding ``state.pt`` and its completion marker), or
a ``state.pt`` file. The model is rebuilt from the resolved config stored in the checkpoint and
loaded with ``strict=True`` from ``weights_only`` content.

``checkpoint_config(path)`` is THE reader of a checkpoint's resolved config (every command that
needs a trained run's config uses it): the trainer stores it as YAML text (``training.config.to_yaml``);
a mapping (older checkpoints, hand-written ones) is accepted too.

    loaded = load_generator("runs/demo/cells/rwsa-xs_s0")
    enhanced = Enhancer(loaded.model, chunk_seconds=10, overlap_seconds=0.5).enhance(noisy)  # float32 [N], 16 kHz
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.config import check_value, field_rule
from common.rundir import CHECKPOINTS_DIR, RUN_ID_FILE
from training.checkpoint import MARKER, STATE, CheckpointManager, best_dir, load_file, stored_config
from training.config import ConfigError, EvalConfig, RunConfig, chunking_problem, load_run_config
from training.evaluation.chunking import enhance_long

SAMPLE_RATE = 16000
GENERATOR_KEYS = ("generator", "model", "G")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: RunConfig
    step: int
    checkpoint: Path
    mlflow_run_id: str | None


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory that ``path`` designates (see the module docstring)."""
    path = Path(path)
    if path.is_file() and path.name == STATE:
        return path.parent
    if (path / STATE).is_file():
        if not (path / MARKER).is_file():
            raise ConfigError(f"{path}: checkpoint is incomplete (no {MARKER} marker)")
        return path
    ckpt_root = path / CHECKPOINTS_DIR if (path / CHECKPOINTS_DIR).is_dir() else path
    best = best_dir(ckpt_root)
    if best is not None:
        return best
    latest = CheckpointManager(ckpt_root).latest()
    if latest is not None:
        return latest
    if not path.exists():
        raise ConfigError(f"{path}: no such checkpoint or run directory")
    raise ConfigError(f"{path}: no complete checkpoint found (expected state.pt, best/ or step-N/)")


def _generator_state(state: dict, where: Path) -> dict:
    for key in GENERATOR_KEYS:
        if key in state and isinstance(state[key], dict):
            return state[key]
    raise ConfigError(f"{where / STATE}: holds no generator weights (keys: {', '.join(map(str, state))})")


def config_from_state(state: dict, where: Path) -> RunConfig:
    """The validated RunConfig stored in a loaded ``state.pt`` (YAML text or a mapping)."""
    raw = stored_config(state)
    if not raw:
        raise ConfigError(f"{where / STATE}: holds no resolved config (expected YAML text or a mapping under 'config')")
    try:
        return load_run_config(None, None, base=raw)
    except ConfigError as e:
        raise ConfigError(f"{where / STATE}: stored config: {e}") from None


def checkpoint_config(path: str | Path) -> tuple[RunConfig, Path]:
    """(resolved config, checkpoint folder) of a run directory, ``best/``, ``step-N/`` or ``state.pt``."""
    folder = resolve_checkpoint(path)
    state = load_file(folder / STATE, map_location="cpu")
    return config_from_state(state, folder), folder


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the generator named in the checkpoint's config and load its weights (strict)."""
    from training.models import build_model

    folder = resolve_checkpoint(path)
    state = load_file(folder / STATE, map_location="cpu")
    cfg = config_from_state(state, folder)
    model = build_model(cfg.model.name, **cfg.model.options)
    model.load_state_dict(_generator_state(state, folder), strict=True)
    model.to(device).eval()
    return LoadedModel(model, cfg, int(state.get("step", 0)), folder, _mlflow_run_id(state, folder))


def _mlflow_run_id(state: dict, folder: Path) -> str | None:
    """The run's MLflow run id: stored in step-N checkpoints; for ``best/`` (which does not store
    it) read from the run directory's ``mlflow_run_id`` file."""
    run_id = state.get("mlflow_run_id")
    if isinstance(run_id, str) and run_id:
        return run_id
    marker = folder.parent.parent / RUN_ID_FILE
    if folder.parent.name == CHECKPOINTS_DIR and marker.is_file():
        return marker.read_text().strip() or None
    return None


class Enhancer:
    """Enhance float32 mono 16 kHz audio of any length with a generator's ``enhance``.

    Audio longer than ``chunk_seconds`` is processed chunk by chunk: with ``overlap_seconds > 0``
    chunks overlap and are cross-faded (overlap-add); with 0, the papers' plain cuts. Memory stays
    flat in the audio length. ``bf16``: the model runs under bfloat16 autocast. ``rtf`` accumulates
    processing time / audio duration. Which enhancer a run uses: `training.evaluation.protocol.enhancer_for`.
    """

    mode = "chunked"

    def __init__(self, model: torch.nn.Module, chunk_seconds: float = 10.0, overlap_seconds: float = 0.5,
                 device: str | torch.device = "cpu", bf16: bool = False):
        # the eval.chunk_seconds / eval.overlap_seconds rules of the run config (NaN, inf, ranges, overlap)
        chunk_seconds = check_value(chunk_seconds, *field_rule(EvalConfig, "chunk_seconds"), "chunk_seconds")
        overlap_seconds = check_value(overlap_seconds, *field_rule(EvalConfig, "overlap_seconds"), "overlap_seconds")
        problem = chunking_problem(chunk_seconds, overlap_seconds)
        if problem:
            raise ConfigError(problem)
        self.model = model
        self.device = torch.device(device)
        self.bf16 = bf16
        self.chunk = int(round(chunk_seconds * SAMPLE_RATE))
        self.overlap = int(round(overlap_seconds * SAMPLE_RATE))
        self.seconds_processed = 0.0
        self.seconds_audio = 0.0

    def protocol(self) -> dict:
        """How files are enhanced, as a JSON-able dict (part of an evaluation's identity)."""
        return {"mode": self.mode, "chunk_samples": self.chunk, "overlap_samples": self.overlap}

    def _enhance_chunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.enhance(x.to(self.device)).reshape(-1)

    def _enhance(self, wav: np.ndarray) -> np.ndarray:
        """The protocol itself, float32 [N] -> [N] (under inference mode and the precision context)."""
        return enhance_long(self._enhance_chunk, wav, self.chunk, self.overlap, mode="ola" if self.overlap else "paper")

    def enhance(self, wav: np.ndarray) -> np.ndarray:
        """float32 [N] at 16 kHz → enhanced float32 [N]."""
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        t0 = time.perf_counter()
        precision = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        was_training = self.model.training
        # a model in training (validation) gets its mode back and no inference tensors (no_grad)
        no_grad = torch.no_grad() if was_training else torch.inference_mode()
        self.model.eval()
        try:
            with no_grad, precision:
                out = self._enhance(wav)
        finally:
            self.model.train(was_training)
        self.seconds_processed += time.perf_counter() - t0
        self.seconds_audio += wav.shape[0] / SAMPLE_RATE
        return out

    @property
    def rtf(self) -> float:
        """Real-time factor so far: processing seconds per second of audio (lower is faster)."""
        return self.seconds_processed / self.seconds_audio if self.seconds_audio else float("nan")
