"""The registry's model names and exact parameter counts, importable without torch (login-node checks:
`orchestrator.preflight`, the cost planner).

`training.models.registry` refuses to import when its presets and this table disagree in names or
order, and tests/test_models.py builds every model to check the counts, so they cannot drift apart.
"""

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
DISCRIMINATOR_NAMES: tuple[str, ...] = ("metric-discriminator",)
GENERATOR_NAMES: tuple[str, ...] = tuple(n for n in PARAMS if n not in DISCRIMINATOR_NAMES)
