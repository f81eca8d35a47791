"""One validation rule per value (issue 26, items 3, 5, 6, 13): every config value, CLI number, recipe
option, tune resource and config file is either accepted or refused in one line (exit 2) naming the key
or file and what was expected, and `config`, the sweep's pre-flight and `train` refuse the same values
with the same words. `enhance --keep-rate` gives back exactly the input's length."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import running_sweep

from orchestrator.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``orchestrate ARGS`` in-process: (exit code, stdout, stderr); argparse's exit counts as the code."""
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# (override, what the one line must say): every one passed `config` with exit 0 before (or crashed later)
REFUSED = [
    ("data.segment_samples=1", "data.segment_samples=1: rwsa-xs needs a crop of at least 1800 samples"),
    ("eval.overlap_seconds=100", "eval.overlap_seconds: expected a number < chunk_seconds / 2 = 5, got 100"),
    ("optim.weight_decay=-1", "optim.weight_decay: expected a number >= 0, got -1"),
    ("mlflow.system_metrics_s=-1", "mlflow.system_metrics_s: expected a number >= 0, got -1"),
    ("optim.lr=.nan", "optim.lr: expected a finite number, got nan"),
    ("optim.lr=nan", "optim.lr: expected a finite number, got 'nan'"),
    ("optim.lr=.inf", "optim.lr: expected a finite number, got inf"),
    ("eval.chunk_seconds=1e999", "eval.chunk_seconds: expected a finite number, got '1e999'"),
    ("optim.grad_clip=-.inf", "optim.grad_clip: expected a finite number, got -inf"),
    ("optim.lr_decay=1.5", "optim.lr_decay: expected a number > 0 and <= 1, got 1.5"),
    ("loss.time=-0.5", "loss.time: expected a number >= 0, got -0.5"),
    ("trainer.seed=-1", "trainer.seed: expected an integer >= 0 and <= 4294967295, got -1"),
    ("trainer.max_steps=-3", "trainer.max_steps: expected an integer >= 1, got -3"),
    ("trainer.val_every=-1", "trainer.val_every: expected an integer >= 0, got -1"),
    ("data.num_workers=-2", "data.num_workers: expected an integer >= 0, got -2"),
    ("eval.num_workers=-1", "eval.num_workers: expected an integer >= 0, got -1"),
    ("optim.epoch_steps=0", "optim.epoch_steps: expected an integer >= 1, got 0"),
    ("launcher.gpus_per_node=-1", "launcher.gpus_per_node: expected an integer >= 0, got -1"),
    ("model.options={hidden: .nan}", "model.options.hidden: expected a finite number, got nan"),
    ("optim.betas=[.nan, 0.9]", "optim.betas[0]: expected a finite number, got nan"),
]


@pytest.mark.parametrize("override,message", REFUSED, ids=[o for o, _ in REFUSED])
def test_config_refuses_each_bad_value_in_one_line(override, message, capsys):
    line = one_line_error(*run_cli(["config", override], capsys)[::2])
    assert line == f"error: override '{override}': {message}" or line.startswith(f"error: override '{override}': {message}")


def test_limits_themselves_are_accepted(capsys):
    ok = ["optim.weight_decay=0", "mlflow.system_metrics_s=0", "eval.overlap_seconds=4.99", "eval.num_workers=0",
          "trainer.seed=4294967295", "optim.lr_decay=1", "data.segment_samples=1800", "optim.epoch_steps=auto",
          "data.valid_limit=null", "model.options={hidden: 8}"]
    code, out, err = run_cli(["config", *ok, "--json"], capsys)
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["optim"]["weight_decay"] == 0 and cfg["eval"]["overlap_seconds"] == 4.99
    assert cfg["trainer"]["seed"] == 4294967295 and cfg["data"]["segment_samples"] == 1800


def test_config_sweep_preflight_and_train_refuse_the_same_values(tmp_path, capsys):
    """The rule is the run config's own: the same words from `config FILE`, `sweep --dry-run`, `plan` and
    `train`, before anything is written."""
    cases = {"optim.weight_decay": (-1, "optim.weight_decay: expected a number >= 0, got -1"),
             "data.segment_samples": (1, "data.segment_samples=1: rwsa-xs needs a crop of at least 1800"),
             "eval.overlap_seconds": (100, "eval.overlap_seconds: expected a number < chunk_seconds / 2 = 5"),
             "trainer.max_steps": (-3, "trainer.max_steps: expected an integer >= 1, got -3")}
    for key, (value, message) in cases.items():
        section, name = key.split(".")
        run_file = tmp_path / f"{name}.yaml"
        run_file.write_text(f"{section}:\n  {name}: {value}\n")
        line = one_line_error(*run_cli(["config", str(run_file)], capsys)[::2])
        assert line.startswith(f"error: {run_file}: {message}"), line
        sweep = tmp_path / f"sw_{name}.yaml"
        sweep.write_text(json.dumps({"name": f"sw_{name}", "base": {key: value}, "grid": {"trainer.seed": [0, 1]},
                                     "executor": "local"}))
        for cmd in (["sweep", str(sweep), "--dry-run"], ["plan", str(sweep)]):
            code, _, err = run_cli([*cmd, "--root", str(tmp_path / "runs")], capsys)
            assert code == 2 and message in err and "Traceback" not in err, (cmd, err)
        code, _, err = run_cli(["train", "rwsa-xs", f"{key}={value}", "--workdir", str(tmp_path / "w")], capsys)
        assert message in one_line_error(code, err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "w").exists()


CLI_REFUSED = [
    (["evaluate", "CKPT", "--testset", "T", "--workers", "-1"], "argument --workers: expected an integer >= 0, got -1"),
    (["evaluate", "CKPT", "--testset", "T", "--limit", "-3"], "argument --limit: expected an integer >= 1, got -3"),
    (["evaluate", "CKPT", "--testset", "T", "--limit", "0"], "argument --limit: expected an integer >= 1, got 0"),
    (["evaluate", "CKPT", "--testset", "T", "--chunk-seconds", "inf"], "argument --chunk-seconds: expected a finite number"),
    (["enhance", "CKPT", "x.wav", "--out", "o", "--chunk-seconds", "nan"], "argument --chunk-seconds: expected a finite"),
    (["enhance", "CKPT", "x.wav", "--out", "o", "--chunk-seconds", "inf"], "argument --chunk-seconds: expected a finite"),
    (["enhance", "CKPT", "x.wav", "--out", "o", "--chunk-seconds", "0"], "argument --chunk-seconds: expected a number > 0"),
    (["enhance", "CKPT", "x.wav", "--out", "o", "--overlap-seconds", "nan"], "argument --overlap-seconds: expected a finite"),
    (["enhance", "CKPT", "x.wav", "--out", "o", "--overlap-seconds", "-1"], "argument --overlap-seconds: expected a number >= 0"),
    (["shard", "build", "demo", "--out", "o", "--shard-mb", "0"], "argument --shard-mb: expected a number > 0 and <= 1048576, got 0"),
    (["shard", "build", "demo", "--out", "o", "--shard-mb", "-5"], "argument --shard-mb: expected a number > 0 and <= 1048576, got -5"),
    (["shard", "build", "demo", "--out", "o", "--shard-mb", "nan"], "argument --shard-mb: expected a finite number"),
    (["shard", "build", "demo", "--out", "o", "--shard-mb", "1e308"], "argument --shard-mb: expected a number > 0 and "
                                                                      "<= 1048576, got 1e308"),
    (["shard", "build", "demo", "--out", "o", "--workers", "0"], "argument --workers: expected an integer >= 1, got 0"),
    (["shard", "build", "demo", "--out", "o", "--shard-samples", "-1"], "argument --shard-samples: expected an integer >= 1"),
    (["train", "rwsa-xs", "--nproc", "0"], "argument --nproc: expected an integer >= 1, got 0"),
    (["tune", "t.yaml", "--num-cpus", "-2"], "argument --num-cpus: expected an integer >= 1, got -2"),
    (["report", "efficiency", "--limit", "0"], "argument --limit: expected an integer >= 1, got 0"),
    (["analyze", "spectrogram", "--files", "x"], "argument --files: expected an integer, got 'x'"),
]


@pytest.mark.parametrize("args,message", CLI_REFUSED, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CLI_REFUSED])
def test_cli_numbers_refused_in_one_line_before_any_work(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(*run_cli(args, capsys)[::2])
    assert message in line and line.startswith(f"orchestrate {args[0]}"), line
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_option_and_config_key_share_one_rule():
    """--workers 0 (score in this process) is what eval.num_workers=0 means; the parsed values are typed."""
    from orchestrator.cli import build_parser
    from training.config import load_run_config

    args = build_parser().parse_args(["evaluate", "C", "--testset", "T", "--workers", "0", "--chunk-seconds", "2.5",
                                      "--overlap-seconds", "0", "--limit", "3"])
    assert (args.workers, args.chunk_seconds, args.overlap_seconds, args.limit) == (0, 2.5, 0.0, 3)
    assert load_run_config(None, ["eval.num_workers=0"]).eval.num_workers == 0


def test_config_files_that_are_not_mappings(tmp_path, capsys):
    files = {"binary.yaml": os.urandom(64) + b"\xff\xfe", "scalar.yaml": b"42\n", "list.yaml": b"- a\n- b\n",
             "true.yaml": b"true\n"}
    for name, data in files.items():
        f = tmp_path / name
        f.write_bytes(data)
        for cmd in (["config", str(f)], ["sweep", str(f), "--dry-run"], ["plan", str(f)]):
            line = one_line_error(*run_cli(cmd, capsys)[::2])
            assert line.startswith(f"error: {f}: ") and "expected a YAML mapping" in line, (cmd, line)
    assert not (tmp_path / "runs").exists()


def test_recipe_options_and_sweep_data_section(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for opts, message in ((["test_clips=-1"], "option test_clips: expected an integer >= 0 (0: no test split), got -1"),
                          (["train_clips=0", "valid_clips=0", "test_clips=0"], "all 0, nothing to build"),
                          (["snr_db_min=nan"], "snr_db_min: expected a finite number, got 'nan'"),
                          (["max_seconds=1e300"], "expected 0 < min <= max <= 600 s, got 2.0, 1e+300"),
                          (["train_clips=99999999999999999999999"], "the build would write 4,000,000,000,000,000,000,002 "
                                                                    "shards of 25 clips (at most 1,000,000)")):
        line = one_line_error(*run_cli(["shard", "build", "demo", "--out", "o", "--dry-run", *opts], capsys)[::2])
        assert message in line, line
    (tmp_path / "src").mkdir()
    vb = [f"{k}={tmp_path / 'src'}" for k in ("voicebank_dir", "demand_dir", "librispeech_dir")]
    line = one_line_error(*run_cli(["shard", "build", "vb-demandex", "--out", "o", "--dry-run", *vb,
                                    "snrs_db=nan,5"], capsys)[::2])
    assert "option snrs_db: expected comma-separated finite numbers, got 'nan,5'" in line
    line = one_line_error(*run_cli(["shard", "index", str(tmp_path / "missing")], capsys)[::2])
    assert line == f"error: {tmp_path / 'missing'}: no such folder; expected a folder of *.tar shards (or of split " \
                   "folders holding them)"
    for data, message in (({"recipe": "nosuch", "out": "d"}, "data.recipe: unknown recipe 'nosuch'; known: demo"),
                          ({"recipe": "demo", "out": "d", "options": {"test_clips": -1}},
                           "data.options: recipe demo: option test_clips: expected an integer >= 0"),
                          ({"recipe": "demo", "out": "d", "workers": 0}, "data.workers: expected an integer >= 1")):
        sweep = tmp_path / "sw.yaml"
        sweep.write_text(json.dumps({"name": "sw", "grid": {"trainer.seed": [0]}, "executor": "local", "data": data}))
        line = one_line_error(*run_cli(["sweep", str(sweep), "--dry-run", "--root", "runs"], capsys)[::2])
        assert line.startswith(f"error: {sweep}: {message}"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "sw.yaml"]


def test_tune_resources_refused_before_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (REPO / "sweeps/tune_demo.yaml").read_text()
    assert "resources: {cpu: 1, gpu: 0}" in text
    for res, message in (("{cpu: 0}", "resources.cpu: expected a number > 0, got 0"),
                         ("{cpu: -1, gpu: 0}", "resources.cpu: expected a number > 0, got -1"),
                         ("{cpu: x}", "resources.cpu expects a number, got 'x'"),
                         ("{cpu: 1, gpu: .nan}", "resources.gpu: expected a finite number, got nan"),
                         ("{cpu: 1, gpu: -1}", "resources.gpu: expected a number >= 0, got -1")):
        f = tmp_path / "t.yaml"
        f.write_text(text.replace("resources: {cpu: 1, gpu: 0}", f"resources: {res}"))
        line = one_line_error(*run_cli(["tune", str(f)], capsys)[::2])
        assert line == f"error: {f}: {message}", line
    assert not (tmp_path / "runs").exists()


def test_status_with_garbage_progress_and_attempts_files(tmp_path, capsys):
    """A cell whose progress.json is binary or holds values of the wrong type is shown 'unreadable' (table
    and --json); a binary attempts.log is named in its cell's reason, never a traceback."""
    from training.progress import ProgressFile

    sweep_dir, wd = running_sweep(tmp_path, "g", seeds=3)
    (wd["s0"] / "progress.json").write_bytes(b"\x00\xff" + os.urandom(100))
    (wd["s1"] / "progress.json").write_text(json.dumps({"step": "x", "max_steps": [4], "window": "abc"}))
    ProgressFile(wd["s2"], max_steps=4).update(2, "running")
    code, out, err = run_cli(["status", str(sweep_dir)], capsys)
    assert code == 0 and "Traceback" not in err, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert "running (progress unreadable)  -" in rows["s0"] and "running (progress unreadable)  -" in rows["s1"]
    assert rows["s2"].split()[1:3] == ["running", "2/4"] and out.splitlines()[-1].startswith("total: 2/4 steps")
    code, out, err = run_cli(["status", str(sweep_dir), "--json"], capsys)
    rows = {r["cell"]: r for r in json.loads(out)}
    assert code == 0 and rows["s0"]["progress_state"] == "unreadable" and rows["s1"]["step"] is None
    assert rows["s0"]["reason"] == f"{wd['s0'] / 'progress.json'}: unreadable (not JSON)"
    assert rows["s2"]["step"] == 2 and rows["s2"]["progress_state"] == "running"
    (wd["s2"] / "attempts.log").write_bytes(b"\xff\xfe\x00 start")
    code, out, err = run_cli(["status", str(sweep_dir), "--json"], capsys)
    rows = {r["cell"]: r for r in json.loads(out)}
    assert code == 0 and "Traceback" not in err and rows["s2"]["step"] == 2  # the cell still shown
    assert rows["s2"]["reason"] == f"{wd['s2'] / 'attempts.log'}: unreadable (not UTF-8 text)"


def test_keep_rate_keeps_the_exact_length(trained_run, tmp_path, capsys):
    """54,441 samples at 44.1 kHz came back as 54,442 (22,050 Hz: 27,221 -> 27,223): polyphase resampling
    rounds up on the way back. Each rate is now written at exactly its input length; a chunk overlap the
    enhancer cannot take is one line."""
    run_dir = trained_run[0]
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    lengths = {44100: 54_441, 22050: 27_221, 11025: 13_611, 48000: 60_001, 16000: 20_001}
    for sr, n in lengths.items():
        sf.write(src / f"r{sr}.wav", (0.1 * rng.standard_normal(n)).astype(np.float32), sr)
    out = tmp_path / "out"
    code, _, err = run_cli(["enhance", str(run_dir), str(src), "--out", str(out), "--keep-rate"], capsys)
    assert code == 0, err
    for sr, n in lengths.items():
        info = sf.info(out / f"r{sr}.wav")
        assert (info.samplerate, info.frames) == (sr, n)
    line = one_line_error(*run_cli(["enhance", str(run_dir), str(src / "r16000.wav"), "--out", str(tmp_path / "o2"),
                                    "--mode", "chunked", "--chunk-seconds", "1", "--overlap-seconds", "0.5"],
                                   capsys)[::2])
    assert line == ("error: --chunk-seconds 1 --overlap-seconds 0.5 (else the run's eval.*): overlap_seconds: "
                    "expected a number < chunk_seconds / 2 = 0.5, got 0.5")
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())


def test_a_binary_attempts_log_counts_as_no_attempts_in_the_launchers(tmp_path):
    """The launchers' cell loop reads attempts.log through the one reader: a binary file is no attempts,
    not a traceback (status names the file)."""
    from orchestrator.launchers.base import count_attempts

    (tmp_path / "attempts.log").write_bytes(b"\xff\xfe\x00 start x\n")
    assert count_attempts(tmp_path) == 0
    (tmp_path / "attempts.log").write_text("2026-12-05T00:00:00 start a\n2026-12-05T00:00:01 end rc=75\n"
                                           "2026-12-05T00:00:02 start b\n")
    assert count_attempts(tmp_path) == 2
