"""Fuzzing numbers (issue 26): generated values (NaN, inf, negative, huge, denormal, text) for every
numeric run-config key through `orchestrate config`, and for the numeric options of `evaluate`,
`enhance`, `shard build`, `train`, `tune`, through the CLI's real argument parsing (main in-process).
Every case ends in exit 0 (accepted) or exit 2 with one error line -- never a traceback. Derandomized:
the same 1,150 cases in CI (`pytest -m slow tests/test_fuzz_numbers.py`)."""

from __future__ import annotations

import json
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import field_help
from orchestrator.cli import main
from training.config import RunConfig

pytestmark = pytest.mark.slow

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _numeric_keys() -> list[str]:
    """Every leaf key of RunConfig whose type holds int or float (Optional and unions included)."""
    keys = []
    for key in field_help(RunConfig):
        cls, parts = RunConfig, key.split(".")
        for part in parts[:-1]:
            cls = typing.get_type_hints(cls)[part]
        tp = typing.get_type_hints(cls)[parts[-1]]
        args = typing.get_args(tp) or (tp,)
        if any(a in (int, float) for a in args) or typing.get_origin(tp) is list and float in typing.get_args(tp):
            keys.append(key)
    return keys


NUMERIC_KEYS = _numeric_keys()
NUMBERS = st.one_of(
    st.sampled_from(["nan", "NaN", ".nan", "inf", "-inf", ".inf", "-.inf", "Infinity", "1e999", "-1e999", "1e308",
                     "-1", "-0", "0", "1", "2", "0.5", "-0.5", "1e-320", "4294967296", "99999999999999999999999",
                     "-99999999999999999999999", "1_000", "0x10", "+5", " 3 ", "", "abc", "null", "true", "[1, 2]",
                     "{a: 1}", "[.nan, 0.9]", "1e3", "10.01"]),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=8),
)


def _run(args: list[str], capsys) -> int:
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:  # argparse: exit 2 after its one line
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, (args, err)
    assert code in (0, 2), (args, code, err)
    if code == 2:  # one line; or the pre-flight's list: a head line, then "  - " per problem (train)
        errors = [line for line in err.splitlines() if line.strip()]
        assert errors and "error:" in errors[0], (args, err)
        assert len(errors) == 1 or (" problem(s) found" in errors[0] and all(e.startswith("  - ") for e in errors[1:])), \
            (args, err)
    return code


@FUZZ
@given(key=st.sampled_from(NUMERIC_KEYS), value=NUMBERS, second=st.one_of(st.none(), st.tuples(
    st.sampled_from(NUMERIC_KEYS), NUMBERS)))
def test_config_numbers_accepted_or_one_line(capsys, key, value, second):
    args = ["config", f"{key}={value}", "--json"]
    if second:
        args.insert(2, f"{second[0]}={second[1]}")
    if _run(args, capsys) == 0:  # what was accepted is a valid, finite config
        capsys.readouterr()
        main(args)
        text = capsys.readouterr().out
        assert "NaN" not in text and "Infinity" not in text, (args, text)
        json.loads(text)


CLI = [
    (["evaluate", "{tmp}/no_ckpt", "--testset", "{tmp}/no_set", "--no-mlflow"], ["--workers", "--limit",
                                                                               "--chunk-seconds", "--overlap-seconds"]),
    (["enhance", "{tmp}/no_ckpt", "{tmp}/no.wav", "--out", "{tmp}/out"], ["--chunk-seconds", "--overlap-seconds"]),
    (["shard", "build", "demo", "--out", "{tmp}/shards", "--dry-run", "train_clips=2", "valid_clips=1",
      "test_clips=1"], ["--shard-mb", "--shard-samples", "--workers", "snr_db_min=", "test_clips=", "min_seconds="]),
    (["train", "rwsa-xs", "--workdir", "{tmp}/w", "data.train={tmp}/nodata"], ["--nproc", "trainer.seed=",
                                                                             "eval.overlap_seconds="]),
]
CASES = [(base, option) for base, options in CLI for option in options]


@pytest.mark.parametrize("base,option", CASES, ids=[f"{b[0]} {o}" for b, o in CASES])
@settings(FUZZ, max_examples=50)
@given(value=NUMBERS)
def test_cli_numbers_accepted_or_one_line(tmp_path, capsys, base, option, value):
    args = [a.replace("{tmp}", str(tmp_path)) for a in base]
    args += [f"{option}{value}"] if option.endswith("=") else [option, value]
    _run(args, capsys)
    assert not (tmp_path / "shards").exists() and not (tmp_path / "w").exists()  # dry runs / refused: nothing
