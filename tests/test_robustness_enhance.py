"""`orchestrate enhance` under bad input (issue 14, cases 1, 2, 3, 5, 9, 10, 11): real audio files written
by soundfile, a checkpoint from a real 2-step training run, the CLI's main in-process."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import soundfile as sf
from robustness_helpers import corpus, trained_run  # noqa: F401 (fixtures)

from orchestrator.cli import main

SR = 16000


def _speech(n: int, seed: int = 0, amp: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    return (amp * np.sin(2 * np.pi * 180 * t) * (1 + 0.3 * rng.standard_normal(n))).astype(np.float32)


def _read16(path) -> np.ndarray:
    return sf.read(str(path), dtype="int16")[0]


def test_nan_inf_input_is_reported_and_never_written(trained_run, tmp_path, capsys):  # noqa: F811
    x = _speech(SR)
    bad = x.copy()
    bad[100:110] = np.nan
    bad[500] = np.inf
    sf.write(tmp_path / "bad.wav", bad, SR, subtype="FLOAT")
    sf.write(tmp_path / "good.wav", x, SR)
    out = tmp_path / "out"
    code = main(["enhance", str(trained_run), str(tmp_path / "bad.wav"), str(tmp_path / "good.wav"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3  # some files failed, the others done
    assert not (out / "bad.wav").exists()  # before: a file of -32768 everywhere
    y = _read16(out / "good.wav")
    assert y.shape == (SR,) and np.abs(y.astype(int)).max() < 32768
    assert "bad.wav: 11 non-finite sample(s)" in err and "Traceback" not in err


def test_shared_stems_and_subfolders_never_overwrite(trained_run, tmp_path, capsys):  # noqa: F811
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i, p in enumerate([src / "a.wav", src / "a.flac", src / "sub" / "a.wav", src / "b.ogg", src / "c.mp3"]):
        sf.write(p, _speech(SR // 2, seed=i), SR)
    out = tmp_path / "out"
    assert main(["enhance", str(trained_run), str(src), "--out", str(out)]) == 0
    assert "enhanced 5 file(s)" in capsys.readouterr().out  # before: .ogg/.mp3 ignored in folders
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.wav"))
    assert written == ["a.flac.wav", "a.wav.wav", "b.wav", "c.wav", "sub/a.wav"]
    # named files sharing a stem: both kept (before: "enhanced 2 file(s)", one written)
    out2 = tmp_path / "out2"
    assert main(["enhance", str(trained_run), str(src / "a.wav"), str(src / "a.flac"), "--out", str(out2)]) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["a.flac.wav", "a.wav.wav"]


def test_out_equal_to_input_folder_is_refused(trained_run, tmp_path, capsys):  # noqa: F811
    x = tmp_path / "x.wav"
    sf.write(x, _speech(SR), SR)
    before = x.read_bytes()
    assert main(["enhance", str(trained_run), str(x), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"would overwrite the input {x}" in err and len(err.strip().splitlines()) == 1
    assert x.read_bytes() == before
    # the same folder is fine when no output replaces an input (x.flac -> x.wav is a new file)
    sf.write(tmp_path / "y.flac", _speech(SR), SR)
    assert main(["enhance", str(trained_run), str(tmp_path / "y.flac"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "y.wav").is_file() and x.read_bytes() == before


def test_out_that_is_a_file_is_one_line(trained_run, tmp_path, capsys):  # noqa: F811
    (tmp_path / "f").write_text("x")
    sf.write(tmp_path / "x.wav", _speech(SR), SR)
    assert main(["enhance", str(trained_run), str(tmp_path / "x.wav"), "--out", str(tmp_path / "f")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {tmp_path / 'f'}: is a file, expected a folder"


@pytest.mark.parametrize("chunking", [["--chunk-seconds", "10", "--overlap-seconds", "0"],
                                      ["--chunk-seconds", "1", "--overlap-seconds", "0.25"]])
def test_short_audio_and_short_last_chunk(trained_run, tmp_path, capsys, chunking):  # noqa: F811
    lengths = {"one": 1, "s100": 100, "s300": 300, "s399": 399, "tail300": 10 * SR + 300}
    for name, n in lengths.items():
        sf.write(tmp_path / f"{name}.wav", _speech(n), SR)
    out = tmp_path / "out"
    code = main(["enhance", str(trained_run), *[str(tmp_path / f"{k}.wav") for k in lengths], "--out", str(out),
                 *chunking])
    assert code == 0, capsys.readouterr().err  # before: deform_conv2d needs H, W >= 2 (traceback)
    for name, n in lengths.items():
        y = _read16(out / f"{name}.wav")
        assert y.shape == (n,)


def test_float_above_full_scale_is_scaled_not_clipped(trained_run, tmp_path, capsys):  # noqa: F811
    x = _speech(SR, amp=8.0)  # a float WAV far above full scale
    sf.write(tmp_path / "loud.wav", x, SR, subtype="FLOAT")
    assert main(["enhance", str(trained_run), str(tmp_path / "loud.wav"), "--out", str(tmp_path / "o")]) == 0
    y = _read16(tmp_path / "o" / "loud.wav").astype(int)
    assert np.count_nonzero(np.abs(y) >= 32767) <= 1  # at most the peak touches full scale: nothing clipped
    printed = capsys.readouterr().out
    assert "scaled" in printed and "dB to fit full scale" in printed


def test_written_files_honour_the_umask(trained_run, tmp_path):  # noqa: F811
    sf.write(tmp_path / "x.wav", _speech(SR), SR)
    old = os.umask(0o002)
    try:
        assert main(["enhance", str(trained_run), str(tmp_path / "x.wav"), "--out", str(tmp_path / "o")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o" / "x.wav").stat().st_mode) == 0o664  # before: 0600
