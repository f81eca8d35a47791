"""RWSA-MambaUNet's validation/inference protocol, and the choice of evaluation mode.

The authors RMS-normalise the *whole* noisy utterance once, then run the model on non-overlapping
segments of ``segment`` samples (30,600 at 16 kHz for RWSA-MambaUNet: 256 STFT frames), the last
segment aligned to the end of the utterance (so it overlaps the one before; there the earlier
segment's output is kept, the last one supplies only the samples no other segment covered).
An utterance shorter than one segment is zero-padded to one segment. The output is divided by the
same normalisation factor. Audio: float32 mono 16 kHz [N] in, [N] out.

Evaluation modes (``eval.mode``):
  ``rwsa_segments``  this protocol (`enhance_segments`);
  ``whole``          the model's own ``enhance`` on the whole utterance (validation default);
  ``chunked``        `training.evaluation.inference.Enhancer`: whole up to ``eval.chunk_seconds``, longer audio in
                     chunks (``eval.overlap_seconds`` 0 = the papers' plain 10 s cuts);
  ``auto``           ``rwsa_segments`` for the RWSA-MambaUNet family (the authors' protocol), else
                     ``whole`` for validation and ``chunked`` for test sets.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from training.stft import mag_pha_istft, mag_pha_stft

MODES = ("auto", "whole", "chunked", "rwsa_segments")
RWSA_SEGMENT = 30_600


def segment_starts(num_samples: int, segment: int) -> list[int]:
    """Starts of the segments covering ``num_samples``: 0, seg, 2·seg, ... and the last at N - seg."""
    if segment < 1:
        raise ValueError(f"segment must be >= 1, got {segment}")
    if num_samples <= segment:
        return [0]
    starts = list(range(0, num_samples - segment, segment))
    starts.append(num_samples - segment)
    return starts


def resolve_mode(mode: str, model_name: str, *, validation: bool) -> str:
    """The concrete mode for ``model_name``: ``auto`` -> rwsa_segments (RWSA family) / whole / chunked."""
    if mode not in MODES:
        raise ValueError(f"eval.mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    if model_name.startswith("rwsa"):
        return "rwsa_segments"
    return "whole" if validation else "chunked"


@torch.no_grad()
def _forward(G: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model on already-normalised segments x [S, L] -> [S, L] (no further normalisation)."""
    mag, pha, _ = mag_pha_stft(x, G.stft)
    mag, pha, _ = G(mag, pha)
    return mag_pha_istft(mag.float(), pha.float(), G.stft, length=x.shape[-1])


@torch.no_grad()
def enhance_segments(G: torch.nn.Module, wav: torch.Tensor | np.ndarray, segment: int = RWSA_SEGMENT,
                     batch: int = 8) -> torch.Tensor | np.ndarray:
    """The protocol of the module docstring; ``batch`` segments go through the model at once (the
    result does not depend on it beyond float rounding). Numpy in -> numpy out; a tensor keeps its device
    for the model and comes back on the CPU."""
    is_np = not isinstance(wav, torch.Tensor)
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)) if is_np else wav.float()
    if x.ndim != 1:
        raise ValueError(f"enhance_segments expects mono audio [N], got shape {tuple(x.shape)}")
    device = next(G.parameters()).device
    x = x.to(device)
    n = x.shape[0]
    norm = torch.rsqrt(x.pow(2).mean().clamp_min(1e-10))  # 1 / RMS of the whole utterance
    xn = torch.nn.functional.pad(x * norm, (0, max(0, segment - n)))
    starts = segment_starts(n, segment)
    out = torch.zeros(max(n, segment), dtype=torch.float32)
    for i in range(0, len(starts), batch):
        group = starts[i : i + batch]
        y = _forward(G, torch.stack([xn[s : s + segment] for s in group])).float().cpu()
        for s, seg_out in zip(group, y):
            keep = 0 if s == 0 else max(0, (starts[starts.index(s) - 1] + segment) - s)
            out[s + keep : s + segment] = seg_out[keep:]
    out = out[:n] / norm.cpu()
    return out.numpy() if is_np else out


class SegmentEnhancer:
    """`training.evaluation.inference.Enhancer`'s interface (``enhance(np [N]) -> np [N]``, ``rtf``,
    ``seconds_audio``) for the RWSA segment protocol."""

    def __init__(self, model: torch.nn.Module, segment: int | None = None):
        self.model = model.eval()
        self.segment = int(segment or getattr(model, "segment_samples", RWSA_SEGMENT))
        self.seconds_processed = 0.0
        self.seconds_audio = 0.0

    def enhance(self, wav: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = enhance_segments(self.model, np.asarray(wav, dtype=np.float32), self.segment)
        self.seconds_processed += time.perf_counter() - t0
        self.seconds_audio += len(wav) / 16000
        return out

    @property
    def rtf(self) -> float:
        return self.seconds_processed / self.seconds_audio if self.seconds_audio else float("nan")
