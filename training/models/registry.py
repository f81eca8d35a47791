"""Named models: ``build_model(name, **options)``, ``list_models()``, ``model_info(name)``.

Every preset is a builder plus its fixed options; ``build_model`` merges the caller's keyword
options over them (e.g. ``build_model("mambattention", attn_position="after")``). ``seed=N``
builds under a fixed RNG seed (same seed, same initial weights) without touching the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from common.errors import InputError
from training.model_names import PARAMS
from training.models.discriminator import MetricDiscriminator
from training.models.dualpath import (
    SEGMENT_2S,
    STFT_400,
    lstm_senet,
    mambattention,
    mpsenet,
    mpsenet_official,
    semamba,
    xlstm_senet,
)
from training.models.rwsa import SEGMENT_RWSA, STFT_510, rwsa
from training.stft import STFTSpec


class UnknownModelError(InputError):
    """A model name or option that the registry does not know."""


@dataclass(frozen=True)
class ModelInfo:
    """What a caller needs to feed a model: its STFT, training crop and reference size."""

    name: str
    stft: STFTSpec | None
    segment_samples: int | None
    params: int
    kind: str  # "generator" | "discriminator"
    description: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Preset:
    builder: Callable[..., nn.Module]
    options: dict
    stft: STFTSpec | None
    segment_samples: int | None
    description: str
    kind: str = "generator"


_PRESETS: dict[str, _Preset] = {
    "semamba": _Preset(
        semamba, {}, STFT_400, SEGMENT_2S, "SEMamba: dual-path bi-Mamba, no attention"
    ),
    "mambattention": _Preset(
        mambattention, {}, STFT_400, SEGMENT_2S, "MambAttention: T/F-shared MHA before bi-Mamba"
    ),
    "mambattention-attn-after": _Preset(
        mambattention,
        {"attn_position": "after"},
        STFT_400,
        SEGMENT_2S,
        "ablation: MHA after Mamba",
    ),
    "mambattention-unshared": _Preset(
        mambattention, {"share_tf": False}, STFT_400, SEGMENT_2S, "ablation: separate T and F MHA"
    ),
    "mambattention-ft": _Preset(
        mambattention, {"order": "ft"}, STFT_400, SEGMENT_2S, "ablation: frequency before time"
    ),
    "mpsenet": _Preset(mpsenet, {}, STFT_400, SEGMENT_2S, "MP-SENet baseline: T/F Conformers"),
    "mpsenet-official": _Preset(
        mpsenet_official, {}, STFT_400, SEGMENT_2S,
        "MP-SENet as its official code runs (attention across batch items; the paper's rows)",
    ),
    "lstm-senet": _Preset(lstm_senet, {}, STFT_400, SEGMENT_2S, "LSTM-SENet baseline: T/F bi-LSTM"),
    "xlstm-senet": _Preset(xlstm_senet, {}, STFT_400, SEGMENT_2S, "xLSTM-SENet baseline: T/F bi-mLSTM"),
    "lstm-attention": _Preset(
        lstm_senet, {"attention": "after", "share_tf": False}, STFT_400, SEGMENT_2S,
        "LSTM-SENet + T and F MHA after LSTM (own weights each: the paper's 2.48M)",
    ),
    "lstm-attention-shared": _Preset(
        lstm_senet, {"attention": "after"}, STFT_400, SEGMENT_2S, "LSTM-SENet + one shared T/F MHA after LSTM",
    ),
    "xlstm-attention": _Preset(
        xlstm_senet, {"attention": "before"}, STFT_400, SEGMENT_2S,
        "xLSTM-SENet + shared T/F MHA before xLSTM",
    ),
    "rwsa-xs": _Preset(
        rwsa, {"size": "xs"}, STFT_510, SEGMENT_RWSA, "RWSA-MambaUNet XS (h 16, n 2)"
    ),
    "rwsa-s": _Preset(rwsa, {"size": "s"}, STFT_510, SEGMENT_RWSA, "RWSA-MambaUNet S (h 16, n 4)"),
    "rwsa-m": _Preset(rwsa, {"size": "m"}, STFT_510, SEGMENT_RWSA, "RWSA-MambaUNet M (h 24, n 4)"),
    "rwsa-s-unshared": _Preset(
        rwsa,
        {"size": "s", "share_resolution": False},
        STFT_510,
        SEGMENT_RWSA,
        "ablation: S without RWSA",
    ),
    "rwsa-s-noattn": _Preset(
        rwsa, {"size": "s", "attention": False}, STFT_510, SEGMENT_RWSA, "ablation: S without MHA"
    ),
    "metric-discriminator": _Preset(
        MetricDiscriminator,
        {},
        None,
        None,
        "MetricGAN discriminator (PESQ predictor)",
        "discriminator",
    ),
}

if tuple(_PRESETS) != tuple(PARAMS):  # the torch-free table the login-node checks use
    raise ImportError(f"training/model_names.py PARAMS names {tuple(PARAMS)} != registry presets {tuple(_PRESETS)}")


def list_models() -> list[str]:
    """All model names, in registry order."""
    return list(_PRESETS)


def _preset(name: str) -> _Preset:
    try:
        return _PRESETS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(_PRESETS)}") from None


def model_info(name: str) -> ModelInfo:
    """STFT, training segment, parameter count and description of ``name``."""
    p = _preset(name)
    return ModelInfo(name, p.stft, p.segment_samples, PARAMS[name], p.kind, p.description, dict(p.options))


def build_model(name: str, seed: int | None = None, **options) -> nn.Module:
    """Instantiate ``name`` with the preset's options overridden by ``options``."""
    p = _preset(name)
    kwargs = {**p.options, **options}
    if seed is None:
        return _call(name, p.builder, kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _call(name, p.builder, kwargs)


def _call(name, builder, kwargs):
    try:
        return builder(**kwargs)
    except TypeError as e:  # an unknown keyword option
        raise UnknownModelError(f"model {name!r}: bad option ({e})") from None
