"""The registry's generator names, importable without torch (login-node checks: `orchestrator.preflight`).

`training.models.registry` refuses to import when its presets and this tuple disagree, so the two
cannot drift apart.
"""

GENERATOR_NAMES: tuple[str, ...] = (
    "semamba", "mambattention", "mambattention-attn-after", "mambattention-unshared", "mambattention-ft",
    "mpsenet", "mpsenet-official", "lstm-senet", "xlstm-senet", "lstm-attention", "xlstm-attention",
    "rwsa-xs", "rwsa-s", "rwsa-m", "rwsa-s-unshared", "rwsa-s-noattn",
)
