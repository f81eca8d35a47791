"""Hostile names from data (issue 26, items 1, 4, 9, 10): tar members, manifest entries and input folders
built as real files (Python's tarfile, real symlinks, real odd file names) thrown at `orchestrate evaluate`,
`orchestrate enhance` and the shard tools (the CLI's main in-process, a checkpoint from a real 2-step
training). Nothing may be written outside the folder the user named; each bad name ends in one line."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from robustness_helpers import corpus, trained_run  # noqa: F401

from common.safe_names import name_problem, safe_join
from orchestrator.cli import main

SR = 16000


def _wav(n: int = 4000, f: float = 7.0) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(np.arange(n) / f)).astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def shard_testset(folder: Path, keys: list[str], manifest: dict | None = None) -> Path:
    """A test-set split: one tar (members ``<key>.noisy.wav`` / ``<key>.clean.wav``) + manifest.json."""
    folder.mkdir(parents=True)
    with tarfile.open(folder / "shard-000000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i, key in enumerate(keys):
            for field in ("noisy", "clean"):
                data = _wav(f=5.0 + i if field == "noisy" else 9.0 + i)
                info = tarfile.TarInfo(f"{key}.{field}.wav")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    listing = manifest or {"format": "se-shards/1", "shards": [{"name": "shard-000000.tar", "samples": len(keys)}]}
    (folder / "manifest.json").write_text(json.dumps(listing))
    return folder


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_the_rule():
    for bad in ["", "/etc/x", "../x", "a/../../x", "a/..", "..", "x\0y", None, 3]:
        assert name_problem(bad), bad
    for good in ["a", "a/b", "./a", "a..b", "...", ".hidden", "a/./b"]:
        assert name_problem(good) is None, good
    assert name_problem(".", folder=True) and name_problem("./", folder=True) and name_problem(".") is None
    with pytest.raises(ValueError, match=r"^rep: sample key '/tmp/x.wav': expected a relative name"):
        safe_join("out", "/tmp/x.wav", "rep", "sample key")
    with pytest.raises(ValueError, match="256 bytes, longer than a file name can be"):
        safe_join("out", "d/" + "é" * 128, "rep")


def test_save_audio_never_writes_outside_the_report_folder(trained_run, tmp_path, capsys):  # noqa: F811
    outside = tmp_path / "X"
    ts = shard_testset(tmp_path / "a" / "b" / "ts", ["good", "../../../X/evil", f"{outside}/abs", "sub/ok"])
    rep = tmp_path / "a" / "b" / "rep"
    before = _files(tmp_path)
    code = main(["evaluate", str(trained_run), "--testset", str(ts), "--out", str(rep), "--no-mlflow",
                 "--workers", "0", "--metrics", "si_sdr", "--save-audio"])
    err = capsys.readouterr().err
    # before: exit 0, evil.wav written at tmp/X/evil.wav and tmp/X/abs.wav (outside the report folder)
    assert code == 3
    assert not outside.exists()
    assert _files(tmp_path) - before == {f"a/b/rep/{p}" for p in ("ts.csv", "ts.json", "ts.files.jsonl", "ts_enhanced/good.wav",
                                                                   "ts_enhanced/sub/ok.wav")}
    summary = json.loads((rep / "ts.json").read_text())
    assert (summary["n"], summary["failed_files"]) == (4, 2)
    lines = [ln for ln in err.splitlines() if ln.startswith("FAILED")]
    assert lines == [
        "FAILED ts shard-000000.tar:../../../X/evil: member name '../../../X/evil': expected a relative name "
        "inside the folder, got one with a '..' component",
        f"FAILED ts shard-000000.tar:{outside}/abs: member name '{outside}/abs': expected a relative name "
        "inside the folder, got an absolute path"]
    assert "Traceback" not in err


@pytest.mark.parametrize("entry, expected", [
    ({"name": "../other/shard-000000.tar", "samples": 1}, "shards[0].name '../other/shard-000000.tar': expected a "
                                                          "relative name inside the folder, got one with a '..' component"),
    ({"name": "ABS", "samples": 1}, "shards[0].name 'ABS': expected a relative name inside the folder, got an absolute path"),
    ({"name": "pipe:touch PWNED", "samples": 1}, "shards[0].name 'pipe:touch PWNED': expected a shard file name "
                                                 "inside the manifest's folder, got a location"),
    ({"name": "shard-000000.tar", "samples": -10}, "shard shard-000000.tar: 'samples' must be a count, got -10"),
])
def test_manifest_listing_outside_its_split_is_one_line(trained_run, tmp_path, capsys, monkeypatch, entry, expected):  # noqa: F811
    other = shard_testset(tmp_path / "other", ["x"])  # a real shard outside the split
    if entry["name"] == "ABS":
        entry = {**entry, "name": str(other / "shard-000000.tar")}
        expected = expected.replace("ABS", entry["name"])
    ts = shard_testset(tmp_path / "ts", ["good"], {"format": "se-shards/1", "shards": [entry]})
    monkeypatch.chdir(tmp_path)  # where a pipe: command would run
    code = main(["evaluate", str(trained_run), "--testset", str(ts), "--out", str(tmp_path / "rep"), "--no-mlflow",
                 "--workers", "0", "--metrics", "si_sdr"])
    err = capsys.readouterr().err.strip()
    # before: the shard outside the split was read (exit 0, n=1) and pipe: ran its command; -10 held already
    assert code == 2
    assert err == f"error: {ts / 'manifest.json'}: {expected}" or (
        entry["samples"] < 0 and err.endswith(expected + ")")), err
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "rep").exists()


def test_shard_tools_refuse_or_report_hostile_members(tmp_path, capsys):
    split = shard_testset(tmp_path / "c" / "test", ["good", "../evil"])
    assert main(["shard", "verify", str(tmp_path / "c")]) != 0
    out = capsys.readouterr()
    assert f"{split / 'shard-000000.tar'} '../evil': member name: expected a relative name" in out.out + out.err
    (split / "manifest.json").unlink()
    assert main(["shard", "index", str(tmp_path / "c")]) == 2  # before: a manifest listing '../evil' written
    assert "member name '../evil': expected a relative name inside the folder" in capsys.readouterr().err
    assert not (split / "manifest.json").exists()


def _tone(path: Path, seconds: float) -> Path:
    sf.write(os.fsencode(path), (0.1 * np.sin(np.arange(int(SR * seconds)) / 5)).astype(np.float32), SR, format="WAV")
    return path


def test_enhance_into_the_input_folder_keeps_an_unrelated_file(trained_run, tmp_path, capsys):  # noqa: F811
    rec = tmp_path / "rec.flac"
    sf.write(rec, np.zeros(SR, np.float32) + 0.1, SR, format="FLAC")
    _tone(tmp_path / "rec.wav", 3.0)
    before = (tmp_path / "rec.wav").read_bytes()
    code = main(["enhance", str(trained_run), str(rec), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2  # before: exit 0 and rec.wav cut from 3.0 s to 1.0 s
    assert err == (f"error: --out {tmp_path}: would overwrite {tmp_path / 'rec.wav'}, an existing file in the "
                   f"folder {rec} is read from; choose an output folder that is not the input's")
    assert (tmp_path / "rec.wav").read_bytes() == before


def test_enhance_reports_or_enhances_every_odd_entry(trained_run, tmp_path, capsys):  # noqa: F811
    src, real = tmp_path / "in", tmp_path / "real"
    src.mkdir()
    real.mkdir()
    _tone(src / "a.wav", 0.3)
    _tone(real / "b.wav", 0.3)
    (src / "linked").symlink_to(real, target_is_directory=True)  # a symlinked subfolder
    (src / "loop").symlink_to(src, target_is_directory=True)  # a link loop: walked once
    (src / "gone.wav").symlink_to(tmp_path / "nowhere.wav")  # a dangling symlink
    long = "L" * 246 + ".wav"  # a 250-byte file name
    _tone(src / long, 0.3)
    odd = os.fsencode(src) + b"/caf\xe9.wav"  # not valid UTF-8
    _tone(Path(os.fsdecode(odd)), 0.3)
    out = tmp_path / "out"
    code = main(["enhance", str(trained_run), str(src), "--out", str(out)])
    printed = capsys.readouterr()
    # before: exit 0, only a.wav written: the linked folder, the dangling link, the long and the odd name silent
    assert code == 3
    assert sorted(os.listdir(os.fsencode(out))) == sorted([b"a.wav", b"caf\xe9.wav", b"linked", long.encode()])
    assert os.listdir(out / "linked") == ["b.wav"]
    assert "enhanced 4 file(s)" in printed.out
    failed = [ln.strip() for ln in printed.err.splitlines() if ln.startswith("  ")]
    assert failed == [f"{src / 'gone.wav'}: dangling symlink (its target {tmp_path / 'nowhere.wav'} does not exist)"]


@pytest.mark.parametrize("listed, reason", [
    (10**12, "999999999998 of 1000000000000 samples listed in the manifest are unreadable (truncated/corrupt shard)"),
    (1, "holds 2 samples but the manifest lists 1: the manifest is wrong; rebuild it (orchestrate shard index)"),
])
def test_manifest_with_a_wrong_sample_count_is_a_failure(trained_run, tmp_path, capsys, listed, reason):  # noqa: F811
    ts = shard_testset(tmp_path / "ts", ["u0", "u1"], {"shards": [{"name": "shard-000000.tar", "samples": listed}]})
    code = main(["evaluate", str(trained_run), "--testset", str(ts), "--out", str(tmp_path / "rep"), "--no-mlflow",
                 "--workers", "0", "--metrics", "si_sdr", "--json"])
    # before: 10**12 looped on (one "missing" per listed sample); 1 evaluated 1 of 2 with exit 0
    assert code == 3
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n"], summary["scored"] + summary["excluded"]) == (3, 2)
    assert summary["problems"][-1] == {"key": "shard-000000.tar", "status": "failed", "reason": reason}
