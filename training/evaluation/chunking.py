"""Enhance long audio chunk by chunk, with memory flat in the audio length.

Two modes:

- ``"ola"``: chunks of ``chunk_samples`` overlapping by ``overlap_samples``, blended by overlap-add with a
  crossfade whose two halves sum to one (sin^2 up, 1 - sin^2 down), so there is no seam and a function
  applied sample by sample is reproduced exactly. The last chunk is aligned to the end of the audio so
  it has full context (its part already covered by the previous chunk gets weight zero).
- ``"paper"``: the papers' inference on long clips (EARS-WHAM_v2): non-overlapping chunks of
  ``chunk_samples`` (10 s = 160000 samples there), the last one being the remainder.

Short audio: the models need at least ``MIN_SAMPLES`` (400 = one STFT window, 25 ms at 16 kHz). A last
``"paper"`` chunk shorter than that is extended backwards into the previous chunk's samples (for context;
only its own samples are kept), and a whole input shorter than that is zero-padded to ``MIN_SAMPLES``
and the output cropped back, so every length >= 1 gets an output of the same length.

Example::

    out = enhance_long(model.enhance, wav, chunk_samples=4 * 16000, overlap_samples=8000)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

MODES = ("ola", "paper")
MIN_SAMPLES = 400  # one 400-point STFT window: the shortest input every registered model accepts


@dataclass(frozen=True)
class Chunk:
    """Samples [start, end) go through the model; the output weight is 0 before ``keep_from``, rises over
    ``fade_in`` samples from ``keep_from``, is 1 in the middle and falls over the last ``fade_out``."""

    start: int
    end: int
    keep_from: int
    fade_in: int
    fade_out: int


def plan_chunks(num_samples: int, chunk_samples: int, overlap_samples: int = 0, mode: str = "ola",
                min_samples: int = 0) -> list[Chunk]:
    """The chunks covering ``num_samples`` samples (see the module docstring for the two modes).

    ``min_samples``: a last ``"paper"`` chunk shorter than this starts earlier (its extra lead samples
    get weight 0), so no chunk but a whole input shorter than ``min_samples`` is that short.
    """
    if mode not in MODES:
        raise ValueError(f"chunking mode must be one of {MODES}, got {mode!r}")
    if chunk_samples <= 0:
        raise ValueError(f"chunk_samples must be > 0, got {chunk_samples}")
    if mode == "paper" and overlap_samples:
        raise ValueError(f"'paper' chunking does not overlap; got overlap_samples={overlap_samples}")
    if not 0 <= 2 * overlap_samples <= chunk_samples:
        raise ValueError(f"overlap_samples must be in [0, chunk_samples / 2], got {overlap_samples} "
                         f"for chunk_samples={chunk_samples}")
    n, c, ov = int(num_samples), int(chunk_samples), int(overlap_samples)
    if n <= c:
        return [Chunk(0, n, 0, 0, 0)]
    if mode == "paper":
        chunks = [Chunk(s, min(s + c, n), s, 0, 0) for s in range(0, n, c)]
        last = chunks[-1]
        if last.end - last.start < min_samples:
            chunks[-1] = Chunk(max(0, n - min_samples), n, last.start, 0, 0)
        return chunks
    stride = c - ov
    starts = list(range(0, n - c, stride))  # every regular chunk that ends before the audio does
    starts.append(n - c)  # the last chunk ends exactly at the end
    chunks = []
    for i, s in enumerate(starts):
        keep_from = s if i == 0 else starts[i - 1] + c - ov
        chunks.append(Chunk(s, s + c, keep_from, 0 if i == 0 else ov, 0 if i == len(starts) - 1 else ov))
    return chunks


def crossfade_ramp(length: int) -> np.ndarray:
    """Rising half of the crossfade, sin^2(pi/2 (n + 0.5) / L), float64 [L]; falling half = 1 - ramp."""
    n = np.arange(length, dtype=np.float64)
    return np.sin(0.5 * np.pi * (n + 0.5) / max(length, 1)) ** 2


def chunk_weights(chunk: Chunk) -> np.ndarray:
    """Output weights of one chunk, float32 [end - start]."""
    w = np.ones(chunk.end - chunk.start, dtype=np.float64)
    lead = chunk.keep_from - chunk.start
    w[:lead] = 0.0
    if chunk.fade_in:
        w[lead : lead + chunk.fade_in] = crossfade_ramp(chunk.fade_in)
    if chunk.fade_out:
        w[w.size - chunk.fade_out :] = 1.0 - crossfade_ramp(chunk.fade_out)
    return w.astype(np.float32)


def enhance_long(
    enhance_fn: Callable[[torch.Tensor], torch.Tensor],
    wav: np.ndarray | torch.Tensor,
    chunk_samples: int,
    overlap_samples: int = 0,
    mode: str = "ola",
    min_samples: int = MIN_SAMPLES,
) -> np.ndarray | torch.Tensor:
    """Apply ``enhance_fn`` (float32 Tensor [L] -> Tensor [L]) to ``wav`` [N] chunk by chunk.

    No chunk given to ``enhance_fn`` is shorter than ``min_samples`` (module docstring: a short last
    chunk borrows earlier samples, a short input is zero-padded and its output cropped); N = 0 gives [0].

    Chunks are slices of ``wav`` (a tensor keeps its device); outputs are accumulated on the CPU in one
    float32 [N] buffer, so memory is the output plus one chunk. Returns a numpy array for numpy input,
    else a CPU tensor. Runs under ``torch.no_grad()``.
    """
    is_tensor = isinstance(wav, torch.Tensor)
    x = wav if is_tensor else torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    if x.ndim != 1:
        raise ValueError(f"enhance_long expects mono audio [N], got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        x = x.float()
    out = np.zeros(x.shape[0], dtype=np.float32)
    with torch.no_grad():
        for chunk in plan_chunks(x.shape[0], chunk_samples, overlap_samples, mode, min_samples):
            length = chunk.end - chunk.start
            if length == 0:
                continue
            piece = x[chunk.start : chunk.end]
            if length < min_samples:
                piece = torch.nn.functional.pad(piece, (0, min_samples - length))
            y = enhance_fn(piece)
            y = y.detach().to("cpu", torch.float32).reshape(-1).numpy() if isinstance(y, torch.Tensor) \
                else np.asarray(y, dtype=np.float32).reshape(-1)
            if y.shape[0] != piece.shape[0]:
                raise ValueError(f"enhance_fn returned {y.shape[0]} samples for a {piece.shape[0]}-sample chunk")
            y = y[:length]
            if chunk.fade_in or chunk.fade_out or chunk.keep_from != chunk.start:
                out[chunk.start : chunk.end] += y * chunk_weights(chunk)
            else:
                out[chunk.start : chunk.end] += y
    return torch.from_numpy(out) if is_tensor else out
