"""`orchestrate evaluate` under bad test sets (issue 14, cases 5, 7, 10, 11): real files written by
soundfile, a shard test set built by the demo recipe, a checkpoint from a real 2-step training run."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import soundfile as sf
from robustness_helpers import corpus, error_lines, full_disk, orchestrate, trained_run  # noqa: F401

from orchestrator.cli import main

SR = 16000
METRICS = "si_sdr,ssnr,estoi"  # the reference metrics that differ on a silent reference; PESQ is slow here


def _tone(n: int, f: float = 200.0) -> np.ndarray:
    return (0.1 * np.sin(2 * np.pi * f * np.arange(n) / SR)).astype(np.float32)


def _testset(root):
    (root / "clean").mkdir(parents=True)
    (root / "noisy").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        c = _tone(SR, 150 + 50 * i)
        sf.write(root / "clean" / f"u{i}.wav", c, SR)
        sf.write(root / "noisy" / f"u{i}.wav", c + 0.02 * rng.standard_normal(SR).astype(np.float32), SR)
    sf.write(root / "clean" / "silent.wav", np.zeros(SR, np.float32), SR)  # a silent reference
    sf.write(root / "noisy" / "silent.wav", 0.02 * rng.standard_normal(SR).astype(np.float32), SR)
    nan = 0.02 * rng.standard_normal(SR).astype(np.float32)
    nan[500] = np.nan
    sf.write(root / "clean" / "nan.wav", _tone(SR), SR)
    sf.write(root / "noisy" / "nan.wav", nan, SR, subtype="FLOAT")  # unreadable as audio: NaN sample
    sf.write(root / "clean" / "short.wav", _tone(300), SR)  # 19 ms: the model needs padding
    sf.write(root / "noisy" / "short.wav", _tone(300), SR)
    return root


def test_bad_files_are_reported_and_means_share_their_files(trained_run, tmp_path, capsys):  # noqa: F811
    ts = _testset(tmp_path / "ts")
    out = tmp_path / "ev"
    code = main(["evaluate", str(trained_run), "--testset", str(ts), "--out", str(out), "--no-mlflow",
                 "--workers", "0", "--metrics", METRICS])
    printed = capsys.readouterr()
    assert code == 3, printed.err  # before: exit 0 (and the NaN file stopped the whole run)
    rows = {r["key"]: r for r in csv.DictReader((out / "ts.csv").open())}
    assert {k: r["status"] for k, r in rows.items()} == {
        "u0": "ok", "u1": "ok", "u2": "ok", "silent": "excluded", "nan": "failed", "short": "excluded"}
    summary = json.loads((out / "ts.json").read_text())
    assert (summary["n"], summary["scored"], summary["excluded"], summary["failed_files"]) == (6, 3, 2, 1)
    # every mean is over the same 3 files: the silent reference's floored SSNR is not in it
    assert rows["silent"]["enhanced_ssnr"] == "-10"
    for metric in METRICS.split(","):
        ok = [float(rows[k][f"enhanced_{metric}"]) for k in ("u0", "u1", "u2")]
        assert math.isclose(summary["enhanced"][metric], sum(ok) / 3, rel_tol=1e-5)
    assert "means over the same 3 file(s); excluded 2 (a metric undefined), failed 1" in printed.out
    assert "FAILED ts nan:" in printed.err and "non-finite" in printed.err


def test_limit_zero_and_no_references_are_refused(trained_run, tmp_path, capsys):  # noqa: F811
    ts = _testset(tmp_path / "ts")
    with pytest.raises(SystemExit) as exc:  # the option's rule, at parse time (cliutil.positive_int)
        main(["evaluate", str(trained_run), "--testset", str(ts), "--limit", "0", "--no-mlflow",
              "--out", str(tmp_path / "ev")])
    assert exc.value.code == 2 and capsys.readouterr().err.strip() == (
        "orchestrate evaluate: error: argument --limit: expected an integer >= 1, got 0 (see orchestrate evaluate --help)")
    shutil.rmtree(ts / "clean")
    assert main(["evaluate", str(trained_run), "--testset", str(ts), "--no-mlflow", "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no clean/ references" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ev").exists()  # before: empty reports, exit 0


def test_truncated_shard_in_a_shard_test_set_is_a_failure(trained_run, corpus, tmp_path, capsys):  # noqa: F811
    ts = tmp_path / "test"
    shutil.copytree(corpus / "test", ts)
    shard = ts / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    code = main(["evaluate", str(trained_run), "--testset", str(ts), "--out", str(tmp_path / "ev"), "--no-mlflow",
                 "--workers", "0", "--metrics", "si_sdr"])
    printed = capsys.readouterr()
    assert code == 3  # before: exit 0, n=2 of 4 and a log line only
    (report,) = (tmp_path / "ev").glob("*.json")
    summary = json.loads(report.read_text())
    assert (summary["n"], summary["scored"], summary["failed_files"]) == (4, 3, 1)  # 1 of shard-000001's 2 lost
    assert [p["key"] for p in summary["problems"]] == ["shard-000001.tar"]
    assert "1 of 2 samples listed in the manifest are unreadable" in summary["problems"][0]["reason"]
    assert f"FAILED {summary['testset']} shard-000001.tar" in printed.err


def test_full_disk_during_evaluation_is_one_line(trained_run, tmp_path):  # noqa: F811
    ts = _testset(tmp_path / "ts")
    out = tmp_path / "ev"
    with full_disk(out, 16) as (preexec, _errname):
        if preexec is not None:  # not root: no tmpfs, and RLIMIT_FSIZE cannot target one folder here
            pytest.skip("needs root to mount a small tmpfs (an honest full disk)")
        r = orchestrate("evaluate", str(trained_run), "--testset", str(ts), "--out", str(out), "--no-mlflow",
                        "--workers", "0", "--metrics", "si_sdr", "--save-audio")
        assert r.returncode == 2
        (line,) = error_lines(r.stderr)
        assert "No space left on device" in line and str(out) in line
