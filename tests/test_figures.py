"""`orchestrate compare --plot` on a real local sweep: 2 model variants x 2 seeds trained by the real
trainer, evaluated on a test split; curves and the table figure drawn from what MLflow holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator import compare as cmp
from orchestrator.cli import main as cli_main

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


STEPS = 4


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from orchestrator.evaluate_and_enhance import evaluate
    from sharding.recipes.demo import prepare_demo

    tmp = tmp_path_factory.mktemp("figures")
    demo = tmp / "demo"
    prepare_demo(demo, train_clips=8, valid_clips=1, test_clips=1, min_seconds=1.0, max_seconds=1.3,
                 speech="procedural", shard_samples=4)
    spec = {
        "name": "fig",
        "base": {
            "model.name": "rwsa-xs", "data.train": str(demo / "train"), "data.valid": str(demo / "valid"),
            "data.segment_samples": 1800, "data.batch_size": 2, "data.valid_limit": 1,
            "trainer.max_steps": STEPS, "trainer.val_every": 2, "trainer.ckpt_every": STEPS, "trainer.log_every": 2,
            "trainer.pesq_workers": 1, "trainer.num_threads": 1, "loss.discriminator": False,
            "mlflow.system_metrics_s": 0,
        },
        "grid": {"variant": {"h4": {"model.options": {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}},
                             "h8": {"model.options": {"hidden": 8, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}}},
                 "trainer.seed": [0, 1]},
        "resources": {"max_parallel": 2},
        "executor": "local",
    }
    path = tmp / "fig.yaml"
    path.write_text(json.dumps(spec))
    assert cli_main(["sweep", str(path), "--root", str(tmp / "runs")]) == 0
    sweep_dir = tmp / "runs" / "fig"
    for cell in sorted((sweep_dir / "cells").iterdir()):
        evaluate(cell / "checkpoints" / "best", [str(demo / "test")], name="demo", num_workers=1)
    return sweep_dir


def test_curve_series_are_the_runs_histories_grouped_by_model(sweep):
    from orchestrator.figures import curve_series

    ref, client, parent, runs = cmp.sweep_runs(sweep)
    assert parent and len(runs) == 4
    series = curve_series(client, runs, "train/loss_g")
    assert sorted(series) == ["rwsa-xs (options.hidden=4)", "rwsa-xs (options.hidden=8)"]
    for lines in series.values():
        assert [seed for seed, _, _ in lines] == ["0", "1"]  # both seeds in the row's colour
        for _seed, steps, values in lines:
            assert steps == list(range(2, STEPS + 1, 2)) and len(values) == len(steps)
    by_id = {r.info.run_id: r for r in runs}
    one = next(iter(by_id))
    hist = sorted((m.step, m.value) for m in client.get_metric_history(one, "val/pesq"))
    lab = cmp.model_labels(runs)[one]
    drawn = [list(zip(s, v)) for seed, s, v in curve_series(client, runs, "val/pesq")[lab]
             if seed == by_id[one].data.params["trainer.seed"]]
    assert drawn == [hist] and [s for s, _ in hist] == [2, 4]


def test_compare_plot_writes_pngs_beside_the_table_and_logs_them(sweep, tmp_path, capsys):
    import matplotlib.image as mpimg

    out = tmp_path / "table.md"
    assert cli_main(["compare", str(sweep), "--plot", "-o", str(out)]) == 0
    table = out.read_text()
    assert "rwsa-xs (options.hidden=4)" in table and "rwsa-xs (options.hidden=8)" in table
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "compare.png" in names and "curves_val_pesq.png" in names and "curves_train_loss_g.png" in names
    assert "curves_train_loss_d.png" not in names  # no discriminator in this sweep: no empty figure
    img = mpimg.imread(tmp_path / "compare.png")
    assert img.shape[0] > 200 and img.shape[1] > 300 and img[..., :3].std() > 0.05  # not blank
    ref, client, parent, _ = cmp.sweep_runs(sweep)
    logged = sorted(a.path for a in client.list_artifacts(parent, "figures"))
    assert logged == sorted(f"figures/{n}" for n in names)
    # without -o: beside the sweep (its folder); --plot-dir wins
    from argparse import Namespace

    from orchestrator.commands.compare import plot_dir

    ns = dict(sweep=str(sweep), root="runs", output=None, plot_dir=None)
    assert plot_dir(Namespace(**ns)) == sweep
    assert plot_dir(Namespace(**(ns | {"plot_dir": str(tmp_path / "x")}))) == tmp_path / "x"


def test_table_figure_bars_are_the_means_and_stds(sweep, tmp_path):
    """The bar heights and error bars drawn are the table's mean and std (read back from the axes)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from orchestrator.figures import table_figure

    table = cmp.compare_sweep(sweep)
    captured = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def grab(fig, path, **kw):
        captured["fig"] = fig
        return real_savefig(fig, path, **kw)

    matplotlib.figure.Figure.savefig = grab
    try:
        table_figure(table, tmp_path / "t.png")
    finally:
        matplotlib.figure.Figure.savefig = real_savefig
    axes = captured["fig"].axes
    assert len(axes) == len(table.metrics)
    pesq_ax = axes[table.metrics.index("pesq")]
    heights = [round(p.get_height(), 9) for p in pesq_ax.patches]
    expected = [round(r.stats[("demo", "pesq")].mean, 9) for r in table.rows]
    assert heights == expected and table.rows[0].noisy
    model_row = table.rows[1]
    assert model_row.stats[("demo", "pesq")].n == 2 and model_row.stats[("demo", "pesq")].std is not None
    plt.close("all")
    assert Path(tmp_path / "t.png").stat().st_size > 5000
