"""The config layer: overrides, type errors, unknown keys, interpolation, round trip, CLI exit codes."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal, Optional

import pytest

from common.config import build_config, option
from orchestrator.cli import main
from training.config import ConfigError, RunConfig, load_run_config, save_config


def test_defaults_are_the_papers_settings():
    cfg = load_run_config()
    assert cfg.optim.lr == 5e-4 and cfg.optim.betas == [0.8, 0.99] and cfg.optim.weight_decay == 0.01
    assert cfg.optim.lr_decay == 0.99 and cfg.data.batch_size == 8 and cfg.trainer.val_every == 250
    w = cfg.loss
    assert (w.time, w.magnitude, w.complex, w.phase, w.consistency, w.metric) == (0.2, 0.9, 0.1, 0.3, 0.1, 0.05)


def test_overrides_parse_yaml_values_and_nest(tmp_path):
    cfg = load_run_config(
        None,
        ["trainer.max_steps=123", "optim.lr=1e-3", "data.valid=null", "model.options={share_tf: false}",
         "eval.testsets=[a, b]", "mlflow.tags.sweep=s1"],
    )
    assert cfg.trainer.max_steps == 123 and isinstance(cfg.trainer.max_steps, int)
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.data.valid is None
    assert cfg.model.options == {"share_tf": False}
    assert cfg.eval.testsets == ["a", "b"]
    assert cfg.mlflow.tags == {"sweep": "s1"}


def test_file_then_overrides_precedence(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("trainer:\n  max_steps: 50\n  seed: 3\nmodel:\n  name: semamba\n")
    cfg = load_run_config(p, ["trainer.seed=7"])
    assert (cfg.trainer.max_steps, cfg.trainer.seed, cfg.model.name) == (50, 7, "semamba")
    assert cfg.trainer.log_every == 10  # untouched default


def test_int_accepted_for_float_but_not_the_reverse():
    assert load_run_config(None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"trainer.max_steps expects an integer, got 1.5"):
        load_run_config(None, ["trainer.max_steps=1.5"])
    with pytest.raises(ConfigError, match=r"data.skip_bad expects true or false, got 'maybe'"):
        load_run_config(None, ["data.skip_bad=maybe"])


def test_unknown_key_suggests_close_match_and_names_the_override():
    with pytest.raises(ConfigError) as e:
        load_run_config(None, ["trainer.max_step=3"])
    assert str(e.value) == (
        "override 'trainer.max_step=3': unknown key 'trainer.max_step' (did you mean 'trainer.max_steps'?)"
    )


def test_unknown_key_in_file_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_run_config(p)
    assert str(e.value) == f"{p}: unknown key 'optim.lrr' (did you mean 'optim.lr'?)"


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'zzz' \(valid keys: data, eval, launcher"):
        load_run_config(None, ["zzz=1"])


def test_literal_and_range_checks():
    with pytest.raises(ConfigError, match=r"trainer.precision expects one of 'fp32', 'bf16', got 'fp16'"):
        load_run_config(None, ["trainer.precision=fp16"])
    with pytest.raises(ConfigError, match=r"trainer.keep_last: expected an integer >= 2"):
        load_run_config(None, ["trainer.keep_last=1"])
    with pytest.raises(ConfigError, match=r"data.batch_size: expected an integer >= 1, got 0"):
        load_run_config(None, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match=r"eval.metrics: unknown metric 'mos'"):
        load_run_config(None, ["eval.metrics=[pesq, mos]"])


def test_invalid_yaml_and_missing_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("trainer: [1\n")
    with pytest.raises(ConfigError, match=rf"^{p}: not valid YAML"):
        load_run_config(p)
    with pytest.raises(ConfigError, match=r"config file not found"):
        load_run_config(tmp_path / "nope.yaml")
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"expected a YAML mapping"):
        load_run_config(p)


def test_interpolation_resolves_against_defaults_and_other_keys(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("name: ${model.name}_s${trainer.seed}\ntrainer:\n  seed: 4\nmlflow:\n  run_name: ${name}\n")
    cfg = load_run_config(p, ["model.name=semamba"])
    assert cfg.name == "semamba_s4" and cfg.mlflow.run_name == "semamba_s4"
    with pytest.raises(ConfigError, match=r"override 'name=\$\{nothere\}': cannot resolve interpolation"):
        load_run_config(None, ["name=${nothere}"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_run_config(None, ["name=${model.name}", "model.name=rwsa-m", "optim.lr=2e-4", "eval.testsets=[x]"])
    path = save_config(cfg, tmp_path / "sub" / "config.yaml")
    again = load_run_config(path)
    assert again == cfg
    assert "${" not in path.read_text()  # saved fully resolved
    assert not list(path.parent.glob(".*.tmp"))  # no temp file left behind


@dataclasses.dataclass(kw_only=True)
class Inner:
    mode: Literal["a", "b"] = option("a")
    n: Optional[int] = option(None)


@dataclasses.dataclass(kw_only=True)
class Outer:
    path: str = option()
    inner: Inner = option(factory=Inner)


def test_generic_schema_optional_nested_and_missing_required():
    with pytest.raises(ConfigError, match=r"missing required key 'path'"):
        build_config(Outer, [("x.yaml", {"inner": {"mode": "b"}})])
    cfg = build_config(Outer, [("x.yaml", {"path": "p"})], ["inner.n=3"])
    assert cfg == Outer(path="p", inner=Inner(mode="a", n=3))


def test_cli_prints_resolved_config_and_exits_2_on_bad_key(capsys):
    assert main(["config", "trainer.max_steps=77", "--json"]) == 0
    assert '"max_steps": 77' in capsys.readouterr().out
    assert main(["config", "trainer.max_step=77"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: override 'trainer.max_step=77': unknown key 'trainer.max_step' (did you mean 'trainer.max_steps'?)"


def test_cli_overrides_may_follow_options(tmp_path, capsys):
    run = tmp_path / "run.yaml"
    run.write_text("trainer: {max_steps: 10, seed: 4}\n")
    assert main(["config", str(run), "--json", "trainer.max_steps=3"]) == 0
    trainer = json.loads(capsys.readouterr().out)["trainer"]
    assert trainer["max_steps"] == 3 and trainer["seed"] == 4  # the file, then the override
    assert main(["config", "--json", "trainer.max_steps=5"]) == 0  # overrides only, no file
    assert json.loads(capsys.readouterr().out)["trainer"]["max_steps"] == 5
    assert main(["config", str(run), "trainer.seed=1", "--json", "trainer.max_steps=3"]) == 0
    trainer = json.loads(capsys.readouterr().out)["trainer"]
    assert (trainer["max_steps"], trainer["seed"]) == (3, 1)


def test_every_run_config_field_has_help():
    from training.config import field_help

    helps = field_help(RunConfig)
    assert "trainer.max_steps" in helps
    assert all(text for text in helps.values()), [k for k, v in helps.items() if not v]
