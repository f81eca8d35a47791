"""`orchestrate evaluate` / `enhance` on the checkpoint of a real 2-step training (tests/conftest.py
`trained_run`): progress lines in logs, the same numbers whatever --workers, and a killed evaluation that
resumes with only the files not yet done (issue 25)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from orchestrator.cli import main

N = 6
METRICS = "pesq,estoi,si_sdr,ssnr"
ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")
LINE = re.compile(r"(\w+)(?: (\S+))?: files (\d+)/(\d+)  ([\d.]+) audio s/s  ([\d.]+) files/s  ETA (\S+)")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """clean/ + noisy/ pairs of N harmonic 1-2.25 s files in white noise."""
    root = tmp_path_factory.mktemp("eval_files")
    (root / "clean").mkdir()
    (root / "noisy").mkdir()
    rng = np.random.default_rng(5)
    for i in range(N):
        t = np.arange(int((1.0 + 0.25 * i) * 16000)) / 16000
        clean = sum(np.sin(2 * np.pi * k * (140 + 15 * i) * t) / k for k in range(1, 6))
        clean = (0.08 * clean * (1 + np.sin(2 * np.pi * 3 * t)) ** 2).astype(np.float32)
        sf.write(root / "clean" / f"f{i}.wav", clean, 16000)
        sf.write(root / "noisy" / f"f{i}.wav", clean + 0.03 * rng.standard_normal(len(t)).astype(np.float32), 16000)
    return root


def _args(run_dir, files, out, workers) -> list[str]:
    return ["evaluate", str(run_dir), "--testset", str(files), "--name", "toy", "--out", str(out), "--json",
            "--no-mlflow", "--metrics", METRICS, "--workers", str(workers)]


@pytest.fixture(scope="module")
def uninterrupted(trained_run, files, tmp_path_factory):
    """The summary and per-file CSV rows of one uninterrupted in-process `evaluate --workers 1`."""
    out = tmp_path_factory.mktemp("eval_w1")
    assert main(_args(trained_run[0], files, out, 1)) == 0
    return out


def _read(out: Path) -> tuple[dict, list[dict]]:
    return json.loads((out / "toy.json").read_text()), list(csv.DictReader(open(out / "toy.csv")))


def _same_numbers(a: Path, b: Path) -> None:
    (sa, ra), (sb, rb) = _read(a), _read(b)
    for side in ("noisy", "enhanced"):
        assert set(sa[side]) == set(METRICS.split(","))
        assert sb[side] == pytest.approx(sa[side], rel=1e-4, abs=1e-4)
    assert [r["key"] for r in ra] == [r["key"] for r in rb] == [f"f{i}" for i in range(N)]
    for x, y in zip(ra, rb):
        assert x["status"] == y["status"] == "ok"
        cols = [c for c in x if c.startswith(("noisy_", "enhanced_"))]
        assert [float(y[c]) for c in cols] == pytest.approx([float(x[c]) for c in cols], rel=1e-4, abs=1e-4)


def _progress(stderr: str, command: str) -> list[tuple]:
    found = [m.groups() for m in map(LINE.search, stderr.splitlines()) if m and m.group(1) == command]
    return [(int(d), int(t), float(a), float(f), eta) for _, _, d, t, a, f, eta in found]


def _check_lines(lines: list[tuple]) -> None:
    assert lines, "no progress line"
    dones = [d for d, *_ in lines]
    assert dones == sorted(dones) and dones[-1] == N and all(t == N for _, t, *_ in lines)
    assert all(a > 0 and f > 0 for _, _, a, f, _ in lines)
    assert lines[-1][4] == "0m00s" and all(re.fullmatch(r"\d+m\d\ds|-", e) for *_, e in lines)


def test_evaluate_workers_same_numbers_and_progress_lines(trained_run, files, uninterrupted, tmp_path):
    """--workers 2 in a subprocess with stderr piped (a log file): progress lines from 1/N to N/N with
    rates and ETA; the same per-file numbers as --workers 1."""
    out = tmp_path / "w2"
    proc = subprocess.run([ORCHESTRATE, *_args(trained_run[0], files, out, 2)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _progress(proc.stderr, "evaluate")
    _check_lines(lines)
    assert len(lines) >= 2  # 6 files: a line per file (every 5 % is every file)
    _same_numbers(uninterrupted, out)
    assert json.loads(proc.stdout)["rtf"] > 0


def test_evaluate_killed_resumes_only_the_rest(trained_run, files, uninterrupted, tmp_path, capsys):
    """SIGKILL right after the 3rd file is recorded; the rerun enhances the other 3 only (the record then
    holds one line per file, none twice) and reports what an uninterrupted run reports."""
    out = tmp_path / "killed"
    env = {**os.environ, "SE_FAULTS": "eval.file_recorded=kill@hit=3"}
    proc = subprocess.run([ORCHESTRATE, *_args(trained_run[0], files, out, 1)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == -9, proc.stderr[-3000:]
    record = out / "toy.files.jsonl"
    assert len(record.read_text().splitlines()) == 1 + 3 and not (out / "toy.json").exists()
    assert main(_args(trained_run[0], files, out, 1)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumed"] == 3 and summary["n"] == N
    lines = record.read_text().splitlines()
    keys = [json.loads(x)["key"] for x in lines[1:]]
    assert len(lines) == 1 + N and sorted(keys) == [f"f{i}" for i in range(N)]
    _same_numbers(uninterrupted, out)
    # the same command once more: everything from the record, nothing enhanced
    assert main(_args(trained_run[0], files, out, 1)) == 0
    assert json.loads(capsys.readouterr().out)["resumed"] == N
    assert len(record.read_text().splitlines()) == 1 + N


def test_enhance_progress_lines(trained_run, files, tmp_path):
    proc = subprocess.run([ORCHESTRATE, "enhance", str(trained_run[0]), str(files / "noisy"), "--out",
                           str(tmp_path / "enh")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_lines(_progress(proc.stderr, "enhance"))
    assert len(list((tmp_path / "enh").glob("*.wav"))) == N
