"""`orchestrate train` argument handling (cheap: nothing is trained here)."""

from __future__ import annotations

import yaml

from orchestrator.cli import main


def test_print_config_resolves_model_and_overrides(capsys):
    assert main(["train", "semamba", "trainer.max_steps=7", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["name"] == "semamba" and cfg["trainer"]["max_steps"] == 7


def test_bad_override_and_missing_workdir_exit_2(capsys, tmp_path):
    assert main(["train", "rwsa-xs", "trainer.max_stepz=3", "--workdir", str(tmp_path)]) == 2
    assert "trainer.max_steps" in capsys.readouterr().err  # the suggestion
    assert main(["train", "rwsa-xs"]) == 2
    assert "--workdir" in capsys.readouterr().err
    assert main(["train", "rwsa-xs", "data.batch_size=3", "--workdir", str(tmp_path / "w"), "--nproc", "0"]) == 2
