"""How a trained generator enhances a file, chosen in one place for every path.

Validation (``training.trainer``), the evaluation at the end of a job (``training.evaluation.final_eval``),
``orchestrate evaluate`` and ``orchestrate enhance`` all build their enhancer with `enhancer_for` from the
run config's ``eval`` section (``eval.mode``, ``eval.chunk_seconds``, ``eval.overlap_seconds``) and the
command line's ``--mode`` / ``--chunk-seconds`` / ``--overlap-seconds``, so one checkpoint scored by any
of them on the same files gives the same numbers.

Modes (``eval.mode``):
  ``rwsa_segments``  the RWSA authors' protocol (`training.evaluation.segment_eval`): whole-utterance RMS
                     normalisation, non-overlapping segments of the model's training length
                     (``segment_samples``: 30,600 for RWSA-MambaUNet, whatever crop a run trained on), the
                     last one aligned to the end of the file and kept whole;
  ``whole``          the model's own ``enhance`` on the whole utterance;
  ``chunked``        whole up to ``chunk_seconds``, longer audio in chunks (``overlap_seconds`` 0: the
                     papers' plain cuts; > 0: overlap-add with a cross-fade), `training.evaluation.chunking`;
  ``auto``           ``rwsa_segments`` for the RWSA-MambaUNet family, else ``whole`` for validation and
                     ``chunked`` for test sets and ``enhance``.

Every enhancer maps float32 mono 16 kHz [N] to [N] (``enhance``) and accumulates ``rtf``/``seconds_audio``.
This module imports torch only when an enhancer is built (the CLI reads ``MODES`` on login nodes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MODES = ("auto", "whole", "chunked", "rwsa_segments")
WHOLE_SECONDS = 1e9  # a chunk no file reaches: ``whole`` is ``chunked`` with a single chunk


def resolve_mode(mode: str, model_name: str, *, validation: bool) -> str:
    """The concrete mode for ``model_name``: ``auto`` -> rwsa_segments (RWSA family) / whole / chunked."""
    if mode not in MODES:
        raise ValueError(f"eval.mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    if model_name.startswith("rwsa"):
        return "rwsa_segments"
    return "whole" if validation else "chunked"


def enhancer_for(model: torch.nn.Module, cfg, *, validation: bool = False, mode: str | None = None,
                 chunk_seconds: float | None = None, overlap_seconds: float | None = None,
                 device: str | torch.device | None = None, bf16: bool = False):
    """The enhancer of ``model`` (already on ``device``) for run config ``cfg`` (a ``RunConfig``).

    ``mode``, ``chunk_seconds``, ``overlap_seconds``: overrides of ``cfg.eval`` (None keeps the config's);
    ``validation``: how ``auto`` resolves (module docstring); ``bf16``: run the model under bfloat16
    autocast (validation on a GPU trained in bf16). The returned object has ``mode`` (the resolved one).
    """
    from training.evaluation.inference import Enhancer
    from training.evaluation.segment_eval import SegmentEnhancer

    resolved = resolve_mode(mode or cfg.eval.mode, cfg.model.name, validation=validation)
    device = device if device is not None else next(model.parameters()).device
    if resolved == "rwsa_segments":
        enhancer = SegmentEnhancer(model, device=device, bf16=bf16)
    elif resolved == "whole":
        enhancer = Enhancer(model, chunk_seconds=WHOLE_SECONDS, overlap_seconds=0.0, device=device, bf16=bf16)
    else:
        enhancer = Enhancer(
            model,
            chunk_seconds=cfg.eval.chunk_seconds if chunk_seconds is None else chunk_seconds,
            overlap_seconds=cfg.eval.overlap_seconds if overlap_seconds is None else overlap_seconds,
            device=device, bf16=bf16,
        )
    enhancer.mode = resolved
    return enhancer
