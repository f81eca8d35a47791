"""Load a trained generator from a checkpoint or run directory, and enhance audio of any length.

Accepted paths: a run directory (uses ``checkpoints/best`` when complete, else the newest complete
``checkpoints/step-N``), a checkpoint directory (holding ``state.pt`` and its completion marker), or
a ``state.pt`` file. The model is rebuilt from the resolved config stored in the checkpoint and
loaded with ``strict=True`` from ``weights_only`` content.

    loaded = load_generator("runs/demo/rwsa-xs_s0")
    enhanced = Enhancer(loaded.model, chunk_seconds=10, overlap_seconds=0.5).enhance(noisy)  # float32 [N], 16 kHz
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import MARKER, STATE, CheckpointManager, load_file
from training.chunking import enhance_long
from training.config import ConfigError, RunConfig, load_run_config

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
    ckpt_root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = ckpt_root / "best"
    if (best / STATE).is_file() and (best / MARKER).is_file():
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


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the generator named in the checkpoint's config and load its weights (strict)."""
    from training.models import build_model

    folder = resolve_checkpoint(path)
    state = load_file(folder / STATE, map_location="cpu")
    raw_cfg = state.get("config")
    if isinstance(raw_cfg, str):  # the trainer stores the resolved config as YAML text
        import yaml

        raw_cfg = yaml.safe_load(raw_cfg)
    if not isinstance(raw_cfg, dict):
        raise ConfigError(f"{folder / STATE}: holds no resolved config")
    cfg = load_run_config(None, None, base=raw_cfg)
    model = build_model(cfg.model.name, **cfg.model.options)
    model.load_state_dict(_generator_state(state, folder), strict=True)
    model.to(device).eval()
    run_id = state.get("mlflow_run_id")
    return LoadedModel(model, cfg, int(state.get("step", 0)), folder, run_id if isinstance(run_id, str) else None)


class Enhancer:
    """Enhance float32 mono 16 kHz audio of any length with a generator's ``enhance``.

    Audio longer than ``chunk_seconds`` is processed chunk by chunk: with ``overlap_seconds > 0``
    chunks overlap and are cross-faded (overlap-add); with 0, the papers' plain cuts. Memory stays
    flat in the audio length. ``rtf`` accumulates processing time / audio duration.
    """

    def __init__(self, model: torch.nn.Module, chunk_seconds: float = 10.0, overlap_seconds: float = 0.5,
                 device: str | torch.device = "cpu"):
        if chunk_seconds <= 0 or overlap_seconds < 0 or overlap_seconds * 2 >= chunk_seconds:
            raise ConfigError(
                f"chunking: expected chunk_seconds > 0 and 0 <= overlap_seconds < chunk_seconds/2, "
                f"got {chunk_seconds}, {overlap_seconds}"
            )
        self.model = model.eval()
        self.device = torch.device(device)
        self.chunk = int(round(chunk_seconds * SAMPLE_RATE))
        self.overlap = int(round(overlap_seconds * SAMPLE_RATE))
        self.seconds_processed = 0.0
        self.seconds_audio = 0.0

    def _enhance_chunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.enhance(x.to(self.device)).reshape(-1)

    def enhance(self, wav: np.ndarray) -> np.ndarray:
        """float32 [N] at 16 kHz → enhanced float32 [N]."""
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = enhance_long(self._enhance_chunk, wav, self.chunk, self.overlap,
                               mode="ola" if self.overlap else "paper")
        self.seconds_processed += time.perf_counter() - t0
        self.seconds_audio += wav.shape[0] / SAMPLE_RATE
        return out

    @property
    def rtf(self) -> float:
        """Real-time factor so far: processing seconds per second of audio (lower is faster)."""
        return self.seconds_processed / self.seconds_audio if self.seconds_audio else float("nan")
