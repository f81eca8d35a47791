"""Fuzzing hostile names from data (issue 26): generated tar member names and manifest entries, built as
real test sets (Python's tarfile) and thrown at the evaluation's reader and ``--save-audio`` writer
(`open_testset` + `evaluate_testset`, an identity enhancer: the names are the subject, not the model) and
at `orchestrate shard verify` / `shard index` in-process. Every case must end in success or the one-line
error (an ``InputError``, exit 2) -- never a traceback -- and nothing may be written outside the case's
folder. 300 + 300 derandomized cases (slow)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import InputError
from orchestrator.cli import main
from training.evaluation.evaluate import evaluate_testset
from training.evaluation.testsets import open_testset

pytestmark = pytest.mark.slow

CASES = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
OUTSIDE = Path(tempfile.gettempdir()) / f"se-fuzz-names-outside-{os.getpid()}"  # where absolute names point
PARTS = st.one_of(st.sampled_from(["..", ".", "", "...", "a", "sub", "évil", " ", "~", "$HOME", "-", "%2e%2e",
                                   "\\..", "..\\x", "\n", "L" * 120, "L" * 260, "\udce9", "x.y", "CON"]),
                  st.text(st.characters(blacklist_characters="\0/", blacklist_categories=("Cs",)), max_size=8))


@st.composite
def hostile_name(draw, nul: bool = True) -> str:
    """A path-like name: parts joined by '/', maybe absolute (under OUTSIDE or at '/'), maybe with a NUL."""
    name = "/".join(draw(st.lists(PARTS, min_size=1, max_size=7)))
    lead = draw(st.sampled_from(["", "", "", "/", f"{OUTSIDE}/", "./", "../../../../"]))
    name = lead + name
    if nul and draw(st.booleans()) and draw(st.booleans()):
        name += "\0x"
    return name


def _wav(f: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(np.arange(2000) / f)).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _case(tmp_path: Path) -> tuple[Path, Path]:
    """(the case's folder, 4 levels deep in tmp_path: '..' runs stay watched, the watched root)."""
    OUTSIDE.mkdir(exist_ok=True)
    assert not any(OUTSIDE.iterdir())
    return Path(tempfile.mkdtemp(dir=tmp_path)) / "a" / "b" / "c", tmp_path


def _one_line(e: Exception) -> None:
    assert isinstance(e, InputError), f"{type(e).__name__}: {e}"
    assert str(e) and "\n" not in str(e), repr(str(e))


def _check_writes(before: set[Path], watched: Path, case: Path) -> None:
    for p in _tree(watched) - before:
        assert case in p.parents or p == case, f"written outside the case folder: {p}"
    assert not any(OUTSIDE.iterdir()), list(OUTSIDE.iterdir())


def _evaluate_and_tools(case: Path, ts: Path) -> None:
    try:
        opened = open_testset(ts)
        summary = evaluate_testset(lambda x: x, opened, case / "rep", metrics=["si_sdr"], num_workers=0,
                                   save_audio_dir=case / "rep" / "audio", progress=False)
        assert summary["n"] >= 1
    except InputError as e:
        _one_line(e)
    assert main(["shard", "verify", str(ts), "--no-decode"]) in (0, 1, 2)
    (ts / "manifest.json").unlink(missing_ok=True)
    assert main(["shard", "index", str(ts)]) in (0, 2)


@CASES
@given(names=st.lists(hostile_name(nul=False), min_size=1, max_size=3))
def test_hostile_tar_member_names(tmp_path, capsys, names):
    case, watched = _case(tmp_path)
    ts = case / "ts"
    ts.mkdir(parents=True)
    keys = ["good", *names]
    with tarfile.open(ts / "shard-000000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i, key in enumerate(keys):
            for field in ("noisy", "clean"):
                data = _wav(5.0 + i if field == "noisy" else 9.0)
                info = tarfile.TarInfo(f"{key}.{field}.wav")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (ts / "manifest.json").write_text(json.dumps({"shards": [{"name": "shard-000000.tar", "samples": len(keys)}]}))
    before = _tree(watched)
    _evaluate_and_tools(case, ts)
    _check_writes(before, watched, case)
    assert "Traceback" not in capsys.readouterr().err


SAMPLES = st.one_of(st.integers(-20, 20), st.sampled_from([None, True, 1.5, float("nan"), "3", [], 10**12]))


@CASES
@given(entries=st.lists(st.fixed_dictionaries({"name": st.one_of(hostile_name(), st.just("shard-000000.tar"),
                                                                  st.sampled_from(["pipe:touch PWNED", "http://127.0.0.1:9/x.tar", ""])),
                                               "samples": SAMPLES}), min_size=1, max_size=3))
def test_hostile_manifest_entries(tmp_path, capsys, monkeypatch, entries):
    case, watched = _case(tmp_path)
    ts = case / "ts"
    ts.mkdir(parents=True)
    monkeypatch.chdir(case.parent)  # where a pipe: command would run
    with tarfile.open(ts / "shard-000000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for field in ("noisy", "clean"):
            data = _wav(5.0 if field == "noisy" else 9.0)
            info = tarfile.TarInfo(f"good.{field}.wav")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (ts / "manifest.json").write_text(json.dumps({"shards": entries}, allow_nan=True))
    before = _tree(watched)
    _evaluate_and_tools(case, ts)
    _check_writes(before, watched, case)
    assert not (case.parent / "PWNED").exists()
    assert "Traceback" not in capsys.readouterr().err
