"""Fuzzing (issue 14): generated bad audio and bad configs thrown at `enhance`, `evaluate` and `config`
(the CLI's main in-process, a checkpoint from a real 2-step training run). Every call must end in exit 0,
2 or 3 (some files failed) -- never an exception (a traceback) -- and never leave an output file that is
not finite 16-bit audio or an input that was changed. Bounded and derandomized: the same examples in CI."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robustness_helpers import corpus, trained_run  # noqa: F401

from orchestrator.cli import main

FUZZ = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

RATES = [4000, 8000, 11025, 16000, 22050, 44100, 48000]
FORMATS = [("WAV", "PCM_16", ".wav"), ("WAV", "FLOAT", ".wav"), ("FLAC", "PCM_16", ".flac"),
           ("OGG", "VORBIS", ".ogg"), ("WAV", "PCM_U8", ".wav")]
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, 1.0, -1.0, 4.0, -30.0, 1e-12]


@st.composite
def bad_audio(draw):
    """(file name, bytes) of a generated audio file: lengths 0-1000, NaN/Inf/clipping, odd rates and
    channels, some containers truncated."""
    n = draw(st.integers(0, 1000))
    channels = draw(st.integers(1, 3))
    rate = draw(st.sampled_from(RATES))
    fmt, subtype, ext = draw(st.sampled_from(FORMATS))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = (draw(st.sampled_from([0.01, 0.5, 1.0, 3.0])) * rng.standard_normal((n, channels))).astype(np.float32)
    for _ in range(draw(st.integers(0, 3))):
        if n:
            x[draw(st.integers(0, n - 1)), draw(st.integers(0, channels - 1))] = draw(st.sampled_from(SPECIAL))
    if subtype != "FLOAT" or fmt != "WAV":
        x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)  # integer containers cannot hold NaN
    buf = io.BytesIO()
    try:
        sf.write(buf, x, rate, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        buf = io.BytesIO(b"RIFF\x00\x00")
    data = buf.getvalue()
    cut = draw(st.sampled_from([None, None, 0, 4, 44, 60, len(data) // 2]))
    if cut is not None:
        data = data[:cut]  # a truncated container
    return f"f{ext}", data


def _check_outputs(out: Path) -> None:
    for f in out.rglob("*.wav") if out.exists() else []:
        y = sf.read(str(f), dtype="float32")[0]
        assert np.all(np.isfinite(y)), f
        assert not np.all(sf.read(str(f), dtype="int16")[0] == -32768) or y.size == 0, f"{f}: full-scale DC"


@FUZZ
@given(audio=bad_audio(), chunking=st.sampled_from([[], ["--chunk-seconds", "10", "--overlap-seconds", "0"],
                                                    ["--chunk-seconds", "0.2", "--overlap-seconds", "0.05"]]))
def test_enhance_never_crashes_or_writes_bad_audio(trained_run, tmp_path, audio, chunking):  # noqa: F811
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    name, data = audio
    (d / "in").mkdir()
    (d / "in" / name).write_bytes(data)
    sf.write(d / "in" / "good.wav", (0.1 * np.sin(np.arange(4000) / 9)).astype(np.float32), 16000)
    code = main(["enhance", str(trained_run), str(d / "in"), "--out", str(d / "out"), *chunking])
    assert code in (0, 2, 3)
    assert (d / "in" / name).read_bytes() == data  # the input untouched
    if code in (0, 3):
        assert (d / "out" / "good.wav").is_file()  # the good file is always done
    _check_outputs(d / "out")


@FUZZ
@given(noisy=bad_audio(), clean=bad_audio())
def test_evaluate_never_crashes(trained_run, tmp_path, noisy, clean):  # noqa: F811
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    for side, (name, data) in (("noisy", noisy), ("clean", clean)):
        (d / "ts" / side).mkdir(parents=True)
        (d / "ts" / side / ("x" + name[1:])).write_bytes(data)  # same stem, maybe other extensions
        good = 0.1 * np.sin(np.arange(8000) / 7) + (0.01 * np.cos(np.arange(8000) / 3) if side == "noisy" else 0)
        sf.write(d / "ts" / side / "good.wav", good.astype(np.float32), 16000)
    code = main(["evaluate", str(trained_run), "--testset", str(d / "ts"), "--out", str(d / "ev"), "--no-mlflow",
                 "--workers", "0", "--metrics", "si_sdr,ssnr"])
    assert code in (0, 2, 3)
    if code in (0, 3):
        rows = list(csv.DictReader((d / "ev" / "ts.csv").open()))
        assert {r["status"] for r in rows} <= {"ok", "excluded", "failed"}
        assert any(r["key"] == "good" and r["status"] == "ok" for r in rows)


KEYS = ["model.name", "model.options", "data.segment_samples", "data.batch_size", "data.skip_bad", "optim.lr",
        "optim.betas", "trainer.max_steps", "trainer.seed", "eval.metrics", "eval.chunk_seconds", "mlflow.tracking_uri",
        "no.such.key", "trainer", "", "optim.lr.x"]
VALUES = st.one_of(st.sampled_from(["", "null", "nan", "inf", "-1", "0", "1e999", "[1, 2", "{a: 1}", "[]",
                                    "true", "rwsa-xs", "semamba", "'x'", "\x00", "${oops}", "${data.batch_size}"]),
                   st.text(max_size=12), st.integers().map(str), st.floats(allow_nan=True).map(str))


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4),
       file_text=st.one_of(st.none(), st.text(max_size=40), st.sampled_from(["a: [", "- 1", "model: 3", "{}"])))
def test_config_never_crashes(tmp_path, capsys, pairs, file_text):
    args = ["config"]
    if file_text is not None:
        f = Path(tempfile.mkdtemp(dir=tmp_path)) / "c.yaml"
        f.write_text(file_text)
        args.append(str(f))
    args += [f"{k}={v}" for k, v in pairs]
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own usage error (exit 2), not a traceback
        code = e.code
    assert code in (0, 2)
    if code == 0:
        yaml.safe_load(capsys.readouterr().out)  # what it printed is a valid config
