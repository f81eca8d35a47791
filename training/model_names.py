"""The registry's model names, exact parameter counts, compute per 2 s of audio and STFT framing,
importable without torch (login-node checks: `orchestrator.preflight`, the cost planner).

`training.models.registry` refuses to import when its presets and this table disagree in names or
order, and tests/test_models.py builds every model to check the counts, so they cannot drift apart.
The models build their STFTSpec and frame multiple from `FRAMING_400` / `FRAMING_510`
(training/models/dualpath.py, rwsa.py); tests/test_models.py checks `FRAMING` against every built model
and that `min_frames` / `DISCRIMINATOR_MIN_FRAMES` are the real limits.
"""

from __future__ import annotations

from dataclasses import dataclass

PARAMS: dict[str, int] = {
    "semamba": 2_258_769,
    "mambattention": 2_325_841,
    "mambattention-attn-after": 2_325_841,
    "mambattention-unshared": 2_392_913,
    "mambattention-ft": 2_325_841,
    "mpsenet": 2_048_849,
    "mpsenet-official": 2_048_849,
    "lstm-senet": 2_343_889,
    "xlstm-senet": 2_203_601,
    "lstm-attention": 2_478_033,
    "lstm-attention-shared": 2_410_961,
    "xlstm-attention": 2_270_673,
    "rwsa-xs": 1_024_360,
    "rwsa-s": 1_946_664,
    "rwsa-m": 3_914_424,
    "rwsa-s-unshared": 1_968_296,
    "rwsa-s-noattn": 1_887_016,
    "metric-discriminator": 181_650,
}
# G-MACs of one forward over 2 s of 16 kHz audio, full count (`training.models.flops`, every layer incl.
# LSTM/mLSTM and attention), batch 1, default options; tests/test_planner.py (slow) recounts every entry.
GMACS_2S: dict[str, float] = {
    "semamba": 94.989, "mambattention": 106.182, "mambattention-attn-after": 106.182,
    "mambattention-unshared": 106.182, "mambattention-ft": 106.182, "mpsenet": 84.576, "mpsenet-official": 84.576,
    "lstm-senet": 86.729, "xlstm-senet": 136.932, "lstm-attention": 97.921, "lstm-attention-shared": 97.921,
    "xlstm-attention": 148.124, "rwsa-xs": 25.237, "rwsa-s": 46.653, "rwsa-m": 83.158, "rwsa-s-unshared": 46.653,
    "rwsa-s-noattn": 40.886,
}
DISCRIMINATOR_NAMES: tuple[str, ...] = ("metric-discriminator",)
GENERATOR_NAMES: tuple[str, ...] = tuple(n for n in PARAMS if n not in DISCRIMINATOR_NAMES)


@dataclass(frozen=True)
class Framing:
    """A generator's STFT (samples) and what the frame count ``T = samples // hop + 1`` (centered STFT) of
    its input must be: a multiple of ``frame_multiple``, at least ``min_frames``."""

    n_fft: int
    hop: int
    win: int
    frame_multiple: int = 1
    min_frames: int = 1


FRAMING_400 = Framing(n_fft=400, hop=100, win=400)  # the dual-path models
# RWSA-MambaUNet: T is halved twice (PixelUnshuffle); the deformable 3x3 convolutions need T/4 >= 2
FRAMING_510 = Framing(n_fft=510, hop=120, win=510, frame_multiple=4, min_frames=8)
FRAMING: dict[str, Framing] = {n: FRAMING_510 if n.startswith("rwsa") else FRAMING_400
                               for n in GENERATOR_NAMES}
DISCRIMINATOR_MIN_FRAMES = 16  # the metric discriminator's four stride-2 4x4 convolutions


def shortest_crop(name: str, discriminator: bool = False) -> int:
    """The fewest samples generator ``name`` trains on: more than n_fft / 2 (the centered STFT's reflect
    padding), and a valid frame count of at least its ``min_frames`` (and of the metric discriminator's
    when ``discriminator``: ``loss.discriminator``)."""
    f = FRAMING[name]
    reflect = f.n_fft // 2 + 1
    frames = max(f.min_frames, DISCRIMINATOR_MIN_FRAMES if discriminator else 1, reflect // f.hop + 1)
    frames = -(-frames // f.frame_multiple) * f.frame_multiple  # up to a valid frame count
    return max((frames - 1) * f.hop, reflect)


def segment_problem(name: str, samples: int, discriminator: bool = False) -> str | None:
    """Why generator ``name`` cannot train on crops of ``samples`` (``data.segment_samples``), in one line;
    None when it can (or when ``name`` is not a generator: the model check reports that)."""
    f = FRAMING.get(name)
    if f is None:
        return None
    frames, shortest = samples // f.hop + 1, shortest_crop(name, discriminator)
    head = f"data.segment_samples={samples}: {name} needs a crop"
    if samples < shortest:
        if shortest == f.n_fft // 2 + 1:
            return f"{head} of at least {shortest} samples (more than half its {f.n_fft}-sample STFT window)"
        why = (", for the metric discriminator: loss.discriminator=true"
               if discriminator and DISCRIMINATOR_MIN_FRAMES > f.min_frames else "")
        need = shortest // f.hop + 1
        return f"{head} of at least {shortest} samples ({need} STFT frames of hop {f.hop}{why}); {samples} gives {frames}"
    if frames % f.frame_multiple:
        lo = frames // f.frame_multiple * f.frame_multiple
        near = [(t - 1) * f.hop for t in (lo, lo + f.frame_multiple) if (t - 1) * f.hop >= shortest]
        return (f"{head} whose STFT frame count (samples // {f.hop} + 1 = {frames}) is a multiple of "
                f"{f.frame_multiple}; use e.g. {' or '.join(map(str, near))}")
    return None
