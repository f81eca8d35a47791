"""Training data from any WebDataset source: a real HTTP server and a real S3 server (moto) on 127.0.0.1,
``pipe:`` commands and brace patterns give the batches of the local folder, resume exactly (also across
sources), survive a dropped connection and stop with one line naming the shard when it stays down.

Reference: the same corpus read from the local folder by seeking (the fast path); every remote source
is read front to back through webdataset's tar reader and must give bitwise the same batches.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from shard_servers import S3_ENV, http_server, s3_server, upload

from sharding.errors import SourceError
from sharding.shards import check_source, open_source
from sharding.sources import ShardReadError, open_at
from sharding.stream import TrainStream, iter_utterances, shard_order
from sharding.tario import write_tar

ROOT = Path(__file__).resolve().parents[1]
SEG = 4000


def make(source, **kw) -> TrainStream:
    args = dict(segment_samples=SEG, batch_size=3, seed=5, rank=1, world_size=2)
    args.update(kw)
    return TrainStream(source, **args)


def take(stream, n):
    out = [next(stream) for _ in range(n)]
    stream.close()
    return out


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x["noisy"], y["noisy"]) and torch.equal(x["clean"], y["clean"])
                                    and torch.equal(x["norm"], y["norm"]) for x, y in zip(a, b))


def resumed(source, state, n, **kw):
    s = make(source, **kw)
    s.load_state_dict(json.loads(json.dumps(state)))
    return take(s, n)


@pytest.fixture(scope="module")
def served(demo_corpus):
    """(corpus folder, base URL of a range-capable HTTP server whose root holds it as ``corpus/``)."""
    root = demo_corpus.parent
    with http_server(root) as url:
        yield demo_corpus, f"{url}/{demo_corpus.name}"


def test_shard_order_bounds_what_a_sequential_reader_holds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, window = int(rng.integers(1, 400)), int(rng.integers(1, 64))
        order = shard_order(n, window, [1, 2, n])
        assert sorted(order) == list(range(n))
        assert all(order[t] < t + window for t in range(n))  # never needs a sample beyond the window
    # shards no larger than the window: the uniform permutation the stream always used
    assert list(shard_order(6, 256, [5, 0, 1, 2, 0x0BDE])) == list(np.random.default_rng([5, 0, 1, 2, 0x0BDE])
                                                                    .permutation(6))


def test_http_folder_and_pattern_give_the_local_batches_and_resume(served):
    corpus, url = served
    local = take(make(corpus), 10)
    assert same(local, take(make(url), 10))  # folder URL (manifest at URL/train/manifest.json)
    assert same(local, take(make(f"{url}/train/shard-{{000000..000003}}.tar"), 10))
    assert same(local, take(make(corpus, reader="sequential"), 10))  # the local files read front to back
    # small window: the in-shard order differs from the permutation, seek and sequential still agree
    small = take(make(corpus, shuffle_window=2), 10)
    assert same(small, take(make(url, shuffle_window=2), 10))
    assert not same(small, local)
    # exact resume at a random step, across sources: a local run's state resumed over HTTP and back
    cut = random.Random(os.getpid()).randrange(1, 9)
    s = make(corpus)
    take(s, cut)
    assert same(local[cut:], resumed(url, s.state_dict(), 10 - cut))
    h = make(url)
    take(h, cut)
    assert same(local[cut:], resumed(corpus, h.state_dict(), 10 - cut))
    with pytest.raises(SourceError, match="shuffle_window"):
        make(url, shuffle_window=2).load_state_dict(h.state_dict())


def test_http_utterances_and_counts(served):
    corpus, url = served
    assert [k for k, _, _ in iter_utterances(f"{url}/valid")] == [k for k, _, _ in iter_utterances(corpus / "valid")]
    assert open_source(url).num_samples == open_source(corpus).num_samples == 24


def test_s3_source_gives_the_local_batches_and_resumes(demo_corpus, monkeypatch):
    local = take(make(demo_corpus, num_workers=2), 6)
    with s3_server() as endpoint:
        for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        upload(endpoint, demo_corpus, "corpora", "demo")
        s = make("s3://corpora/demo", num_workers=2)
        assert same(local[:2], take(s, 2))
        assert same(local[2:], resumed("s3://corpora/demo/train/shard-{000000..000003}.tar", s.state_dict(), 4,
                                       num_workers=2))
        assert len(list(iter_utterances("s3://corpora/demo/valid"))) == 3
        raw = (demo_corpus / "train" / "shard-000001.tar").read_bytes()
        f, total = open_at("s3://corpora/demo/train/shard-000001.tar", 1000)  # how a dropped read resumes
        assert (f.read(), total) == (raw[1000:], len(raw))
        with pytest.raises(SourceError, match="NoSuchBucket"):
            open_source("s3://missing-bucket/demo")
        with pytest.raises(SourceError, match="no manifest at s3://corpora/nothing/manifest.json"):
            open_source("s3://corpora/nothing")


@pytest.mark.parametrize("ranges", [True, False])
def test_a_dropped_connection_is_resumed_where_it_broke(demo_corpus, ranges, caplog):
    local = take(make(demo_corpus), 8)
    caplog.set_level(logging.WARNING)
    with http_server(demo_corpus.parent, ranges=ranges, drop_after=5000, drop_times=1) as url:
        assert same(local, take(make(f"{url}/{demo_corpus.name}"), 8))  # every shard dropped once mid-way
    assert sum("connection closed early at byte 5000; retrying" in r.getMessage() for r in caplog.records) >= 2


@pytest.mark.parametrize("workers", [0, 2])
def test_a_connection_that_stays_down_stops_with_one_line(demo_corpus, workers, monkeypatch):
    monkeypatch.setenv("SE_SHARD_RETRIES", "1")
    with http_server(demo_corpus.parent, drop_after=5000, drop_times=-1) as url:
        s = make(f"{url}/{demo_corpus.name}", num_workers=workers)
        with pytest.raises(ShardReadError) as e:
            take(s, 8)
    line = str(e.value)
    assert "\n" not in line and "/train/shard-00000" in line and ".tar: read failed at byte 5000 of " in line
    assert "after 1 retries (connection closed early)" in line


def test_pipe_commands_are_counted_once_and_cached(demo_corpus, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    caplog.set_level(logging.WARNING)
    spec = f"pipe:cat {demo_corpus}/train/shard-{{000000..000003}}.tar"
    assert same(take(make(demo_corpus), 6), take(make(spec), 6))
    assert sum("counting the samples of 4 shards" in r.getMessage() for r in caplog.records) == 1
    cached = list((tmp_path / "cache" / "se-orchestrator" / "manifests").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["num_samples"] == 24
    caplog.clear()
    assert open_source(spec).num_samples == 24 and not caplog.records  # read from the cache
    monkeypatch.setenv("SE_SHARD_RETRIES", "0")
    with pytest.raises(ShardReadError, match="^pipe:cat /nonexistent/shard-000000.tar: read failed at byte 0 "
                                             "after 0 retries .command exit status 1.$"):
        take(make("pipe:cat /nonexistent/shard-000000.tar"), 1)  # a failing command: named, not an empty epoch


def test_bad_shards_read_sequentially_match_the_seek_path(tmp_path):
    rng = np.random.default_rng(0)

    def good(key):
        import io

        import soundfile as sf

        clean = (0.1 * rng.standard_normal(6000)).astype(np.float32)
        out = {"__key__": key, "json": b"{}"}
        for name, x in (("noisy", clean + 0.02), ("clean", clean)):
            buf = io.BytesIO()
            sf.write(buf, x, 16000, format="FLAC", subtype="PCM_16")
            out[f"{name}.flac"] = buf.getvalue()
        return out

    d = tmp_path / "train"
    d.mkdir()
    write_tar(d / "shard-000000.tar", [good("a0"), {"__key__": "bad", "noisy.flac": b"x", "clean.flac": b"y"},
                                       good("a1"), good("a2")])
    write_tar(d / "shard-000001.tar", [good(f"b{i}") for i in range(5)])
    raw = (d / "shard-000001.tar").read_bytes()
    (d / "shard-000001.tar").write_bytes(raw[: len(raw) // 2])  # truncated mid-shard
    streams = [make(d, rank=0, world_size=1, batch_size=2, reader=r, shuffle_window=3) for r in ("seek", "sequential")]
    a, b = (take(s, 6) for s in streams)
    assert same(a, b)
    assert streams[0].stats() == streams[1].stats() and streams[0].stats()["skipped_corrupt"] >= 3


def test_preflight_accepts_remote_sources_and_names_an_unreachable_one(served, tmp_path):
    from orchestrator.preflight import check_data
    from orchestrator.sweeps.plan import read_manifest

    corpus, url = served
    from training.config import load_run_config

    cfg = load_run_config(base={"data": {"train": url, "valid": f"{url}/train/shard-{{000000..000001}}.tar"},
                                "eval": {"testsets": []}})
    assert check_data(cfg, "cell a") == []
    assert read_manifest(url, "train").num_samples == 24  # the cost plan counts it too
    dead = load_run_config(base={"data": {"train": "http://127.0.0.1:9/c/train", "valid": f"{url}/nope"},
                                 "eval": {"testsets": []}})
    problems = check_data(dead, "cell a")
    assert len(problems) == 2 and all("\n" not in p for p in problems)
    assert "data.train: http://127.0.0.1:9/c/train/manifest.json: not reachable (" in problems[0]
    assert "data.valid: " in problems[1] and "no manifest at" in problems[1]
    with pytest.raises(SourceError, match=r"nothere/shard-000000.tar: not found \(HTTP 404"):
        check_source(f"{url}/nothere/shard-{{000000..000001}}.tar", "train")  # no manifest: nothing counted
    with pytest.raises(SourceError, match="pipe:cat /nonexistent/shard-000000.tar: not reachable"):
        check_source("pipe:cat /nonexistent/shard-000000.tar", "train")


# ----------------------------------------------------------------- a training run from HTTP, SIGTERM, resume
def _run(cfg: Path, workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "training.run", "--config", str(cfg), "--workdir", str(workdir)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_training_from_http_resumes_bitwise_after_sigterm(served, tmp_path):
    from training.checkpoint import MARKER, load_file

    corpus, url = served
    steps = 6

    def config(train: str, valid: str) -> Path:
        path = tmp_path / f"{len(list(tmp_path.glob('*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump({
            "model": {"name": "rwsa-xs", "options": {"hidden": 4, "num_blocks": 1, "level_heads": 2,
                                                     "middle_heads": 4}},
            "data": {"train": train, "valid": valid, "valid_limit": 1, "segment_samples": 1800, "batch_size": 2,
                     "num_workers": 0},
            "loss": {"discriminator": False},
            "trainer": {"max_steps": steps, "val_every": steps, "ckpt_every": 2, "log_every": 2, "pesq_workers": 0,
                        "num_threads": 1},
            "mlflow": {"enabled": False}}))
        return path

    straight = _run(config(str(corpus / "train"), str(corpus)), tmp_path / "local")  # reference: the local folder
    assert straight.wait(600) == 0, straight.stderr.read().decode()[-3000:]
    remote = config(url, url)  # corpus folder URLs: train/ and valid/ manifests found under them
    p = _run(remote, tmp_path / "http")
    deadline = time.monotonic() + 600
    while not (tmp_path / "http" / "checkpoints" / "step-000002" / MARKER).exists():
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))
    p.send_signal(signal.SIGTERM)
    assert p.wait(600) == 75
    stopped = json.loads((tmp_path / "http" / "progress.json").read_text())["step"]
    assert 2 <= stopped < steps
    again = _run(remote, tmp_path / "http")
    assert again.wait(600) == 0, again.stderr.read().decode()[-3000:]
    a, b = (load_file(tmp_path / w / "checkpoints" / f"step-{steps:06d}" / "state.pt")["generator"]
            for w in ("local", "http"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "http" / "progress.json").read_text())["last_val_pesq"] > 1.0  # validated


def test_fault_point_before_a_shard_opens(demo_corpus, monkeypatch):
    from common import faults

    try:
        faults.configure("stream.shard_open=raise@rank=1")
        assert len(take(make(demo_corpus, rank=0, prefetch_factor=0), 6)) == 6  # another rank: never
        faults.configure("stream.shard_open=raise@rank=1@hit=2")  # hits count from here
        s = make(demo_corpus, prefetch_factor=0)  # rank 1: its second shard (after 2 batches)
        assert len([next(s), next(s)]) == 2
        with pytest.raises(faults.FaultInjected, match=r"stream.shard_open \(hit 2\)"):
            next(s)
    finally:
        faults.configure(None)
    # DataLoader workers take the rank process's SE_FAULTS (not the forkserver's, started earlier)
    monkeypatch.setenv("SE_FAULTS", "stream.shard_open=raise@worker=1")
    with pytest.raises(faults.FaultInjected, match="stream.shard_open"):
        take(make(demo_corpus, num_workers=2), 4)
