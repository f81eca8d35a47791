"""RWSA-MambaUNet's validation/inference protocol (``eval.mode: rwsa_segments``, chosen by
`training.evaluation.protocol.enhancer_for`).

The authors (RWSA-MambaUNet ``inference.py``, ``process_audio_segment``) RMS-normalise the *whole* noisy
utterance once, then run the model on non-overlapping segments of ``segment`` samples (30,600 at 16 kHz
for RWSA-MambaUNet: 256 STFT frames). When the length N is not a multiple of the segment, one more
segment is taken aligned to the end of the utterance (samples N - segment .. N); it is kept whole, and
the segment before it keeps only its first N mod segment samples (the authors' seam). An utterance
shorter than one segment is zero-padded to one segment and the output cropped. The output is divided by
the same normalisation factor. Audio: float32 mono 16 kHz [N] in, [N] out.
"""

from __future__ import annotations

import numpy as np
import torch

from training.evaluation.inference import Enhancer
from training.stft import inverse_rms, mag_pha_istft, mag_pha_stft

RWSA_SEGMENT = 30_600


def segment_plan(num_samples: int, segment: int) -> list[tuple[int, int]]:
    """(start, keep) of every segment: the model sees input samples [start, start + segment) (zero-padded
    past the end of a short utterance) and its output supplies samples [start, start + keep).

    Starts 0, seg, 2·seg, ... while a whole segment fits, then one aligned to the end (N - seg) when N is
    not a multiple of seg: that last one is kept whole and the one before keeps only its first N mod seg
    samples (the authors' seam). The keeps tile [0, N) exactly."""
    if segment < 1:
        raise ValueError(f"segment must be >= 1, got {segment}")
    if num_samples <= segment:
        return [(0, num_samples)]
    starts = list(range(0, num_samples - segment + 1, segment))
    if starts[-1] + segment < num_samples:
        starts.append(num_samples - segment)
    return [(s, (starts[i + 1] - s) if i + 1 < len(starts) else segment) for i, s in enumerate(starts)]


@torch.no_grad()
def _forward(G: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model on already-normalised segments x [S, L] -> [S, L] (no further normalisation)."""
    mag, pha, _ = mag_pha_stft(x, G.stft)
    mag, pha, _ = G(mag, pha)
    return mag_pha_istft(mag.float(), pha.float(), G.stft, length=x.shape[-1])


@torch.no_grad()
def enhance_segments(G: torch.nn.Module, wav: torch.Tensor | np.ndarray, segment: int = RWSA_SEGMENT,
                     batch: int = 8, forward=None) -> torch.Tensor | np.ndarray:
    """The protocol of the module docstring (`segment_plan`); ``batch`` segments go through the model at
    once (the result does not depend on it beyond float rounding). ``forward``: normalised segments
    Tensor [b, segment] -> [b, segment] (default: STFT, ``G``, iSTFT). Numpy in -> numpy out; a tensor
    keeps its device for the model and comes back on the CPU."""
    is_np = not isinstance(wav, torch.Tensor)
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)) if is_np else wav.float()
    if x.ndim != 1:
        raise ValueError(f"enhance_segments expects mono audio [N], got shape {tuple(x.shape)}")
    forward = forward or (lambda segs: _forward(G, segs))
    x = x.to(next(G.parameters()).device)
    n = x.shape[0]
    norm = inverse_rms(x)  # 1 / RMS of the whole utterance, [1]
    xn = torch.nn.functional.pad(x * norm, (0, max(0, segment - n)))
    plan = segment_plan(n, segment)
    out = torch.zeros(max(n, segment), dtype=torch.float32)
    for i in range(0, len(plan), batch):
        group = plan[i : i + batch]
        y = forward(torch.stack([xn[s : s + segment] for s, _ in group])).float().cpu()
        for (s, keep), seg_out in zip(group, y):
            out[s : s + keep] = seg_out[:keep]
    out = out[:n] / norm.cpu()
    return out.numpy() if is_np else out


class SegmentEnhancer(Enhancer):
    """`training.evaluation.inference.Enhancer` (``enhance(np [N]) -> np [N]``, ``rtf``, ``seconds_audio``,
    ``bf16``) with the RWSA segment protocol; ``segment`` defaults to the model's training length."""

    mode = "rwsa_segments"

    def __init__(self, model: torch.nn.Module, segment: int | None = None, device: str | torch.device = "cpu",
                 bf16: bool = False):
        super().__init__(model, device=device, bf16=bf16)
        self.segment = int(segment or getattr(model, "segment_samples", RWSA_SEGMENT))

    def protocol(self) -> dict:
        return {"mode": self.mode, "segment_samples": self.segment}

    def _enhance(self, wav: np.ndarray) -> np.ndarray:
        return enhance_segments(self.model, wav, self.segment)
