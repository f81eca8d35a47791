"""Grid axes on the command line never collapse silently: a scalar for an axis is refused (naming the
axis), `KEY=[..]` / `--grid KEY=a,b` replace or add an axis, and cell names and --dry-run follow."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.errors import UserError
from orchestrator.sweeps.plan import expand
from orchestrator.sweeps.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]


def test_scalar_for_a_grid_axis_is_refused_naming_the_axis():
    spec = load_sweep(REPO / "sweeps/rwsa_sizes.yaml")
    with pytest.raises(UserError) as e:
        expand(spec, ["trainer.seed=7"])
    msg = str(e.value)
    assert "trainer.seed is a grid axis" in msg and "[0, 1, 2, 3, 4]" in msg and "trainer.seed=[7]" in msg


def test_list_replaces_an_axis_and_grid_adds_one():
    spec = load_sweep(REPO / "sweeps/rwsa_sizes.yaml")
    cells = expand(spec, ["trainer.seed=[7,8]", "trainer.max_steps=10"])
    assert [c.id for c in cells] == ["rwsa-xs_s7", "rwsa-xs_s8", "rwsa-s_s7", "rwsa-s_s8", "rwsa-m_s7", "rwsa-m_s8"]
    assert [c.config.trainer.seed for c in cells] == [7, 8] * 3
    assert {c.config.trainer.max_steps for c in cells} == {10}
    cells = expand(spec, ["grid.model.name=[rwsa-s]", "grid.optim.lr=[0.001,0.0005]"])
    assert len(cells) == 10 and cells[0].id == "rwsa-s_s0_lr0.001"
    assert {(c.config.model.name, c.config.optim.lr) for c in cells} == {("rwsa-s", 0.001), ("rwsa-s", 0.0005)}
    # a list-typed config key that is not an axis stays a plain value
    cells = expand(spec, ["eval.testsets=[a,b]"])
    assert len(cells) == 15 and cells[0].config.eval.testsets == ["a", "b"]


def test_named_variant_axis_cannot_be_replaced_from_the_command_line():
    spec = load_sweep(REPO / "sweeps/mambattention_ablations.yaml")
    with pytest.raises(UserError, match="variant is an axis of named variants"):
        expand(spec, ["variant=[default]"])
    assert len(expand(spec, ["trainer.seed=[3]"])) == 5  # its value axis can be replaced


def test_cli_grid_option_and_dry_run_show_the_cells(capsys, tmp_path):
    rc = main(["sweep", str(REPO / "sweeps/demo.yaml"), "--dry-run", "--root", str(tmp_path), "--grid",
               "trainer.seed=0,1,2"])
    out = capsys.readouterr().out
    assert rc == 0 and "# sweep demo: 3 cells" in out and "[2] rwsa-xs_s2: model.name=rwsa-xs, trainer.seed=2" in out
    assert main(["sweep", str(REPO / "sweeps/demo.yaml"), "--dry-run", "--root", str(tmp_path), "trainer.seed=7"]) == 2
    assert "trainer.seed is a grid axis" in capsys.readouterr().err
    assert main(["sweep", str(REPO / "sweeps/demo.yaml"), "--dry-run", "--grid", "trainer.seed"]) == 2
    assert "expected KEY=V1,V2" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
