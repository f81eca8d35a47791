"""`orchestrate train` (and `tune`) argument handling (cheap: nothing is trained here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def test_print_config_resolves_model_and_overrides(capsys):
    assert main(["train", "semamba", "trainer.max_steps=7", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["name"] == "semamba" and cfg["trainer"]["max_steps"] == 7


def test_bad_override_and_missing_workdir_exit_2(capsys, tmp_path):
    assert main(["train", "rwsa-xs", "trainer.max_stepz=3", "--workdir", str(tmp_path)]) == 2
    assert "trainer.max_steps" in capsys.readouterr().err  # the suggestion
    assert main(["train", "rwsa-xs"]) == 2
    assert "--workdir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # launcher.nproc's rule, at parse time: one line
        main(["train", "rwsa-xs", "--workdir", str(tmp_path / "w"), "--nproc", "0"])
    assert exc.value.code == 2 and capsys.readouterr().err.strip().endswith(
        "argument --nproc: expected an integer >= 1, got 0 (see orchestrate train --help)")
    assert not (tmp_path / "w").exists()


def test_overrides_may_follow_options(capsys, tmp_path):
    """argparse alone drops `key=value` after an option (`unrecognized arguments`)."""
    args = build_parser().parse_args(["train", "rwsa-xs", "--workdir", "runs/x", "trainer.max_steps=3",
                                      "--nproc", "1", "data.batch_size=2"])
    assert args.model == "rwsa-xs" and str(args.workdir) == "runs/x"
    assert args.overrides == ["trainer.max_steps=3", "data.batch_size=2"]
    assert main(["train", "semamba", "--workdir", str(tmp_path), "trainer.max_steps=3", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["max_steps"] == 3
    assert main(["train", "rwsa-xs", "--workdir", str(tmp_path), "trainer.max_stepz=3"]) == 2
    assert "did you mean 'trainer.max_steps'" in capsys.readouterr().err  # reached the config, not argparse


def test_tune_overrides_may_follow_options(capsys):
    args = build_parser().parse_args(["tune", "sweeps/tune_demo.yaml", "--num-cpus", "1", "trainer.max_steps=3",
                                      "--quiet", "data.batch_size=2"])
    assert args.file == "sweeps/tune_demo.yaml" and args.num_cpus == 1 and args.quiet
    assert args.overrides == ["trainer.max_steps=3", "data.batch_size=2"]
    # a bad one is refused by the tune file's validation (before Ray starts), naming the key
    assert main(["tune", str(REPO / "sweeps/tune_demo.yaml"), "--num-cpus", "1", "trainer.max_stepz=3"]) == 2
    assert "did you mean 'trainer.max_steps'" in capsys.readouterr().err
