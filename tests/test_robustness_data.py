"""The data side under bad shards (issue 14, cases 6, 7, 10): shards built by the real demo recipe, a
bad sample written by the real tar writer, real training runs and `orchestrate shard verify`."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections import Counter

import pytest
from robustness_helpers import corpus, error_lines, orchestrate, run, tiny_config, train_cmd, write_config  # noqa: F401

from sharding.errors import SourceError
from sharding.stream import TrainStream
from sharding.tario import index_tar, read_members, write_tar


def _drop_member(split_dir, shard: str, member: str) -> str:
    """Rewrite ``shard`` with the real tar writer, its first sample lacking ``member``; manifest updated."""
    path = split_dir / shard
    idx = index_tar(path)
    samples = []
    for i, (key, members) in enumerate(idx.samples.items()):
        blobs = read_members(path, members)
        if i == 0:
            del blobs[member]
            dropped = key
        samples.append({"__key__": key, **blobs})
    write_tar(path, samples)
    manifest = json.loads((split_dir / "manifest.json").read_text())
    for s in manifest["shards"]:
        if s["name"] == shard:
            s["bytes"] = path.stat().st_size
            s["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (split_dir / "manifest.json").write_text(json.dumps(manifest))
    return dropped


@pytest.fixture
def copy(corpus, tmp_path):  # noqa: F811
    out = tmp_path / "corpus"
    shutil.copytree(corpus, out)
    return out


def test_skip_bad_false_fails_on_a_missing_member(copy, tmp_path):
    key = _drop_member(copy / "train", "shard-000000.tar", "clean.flac")
    # skip_bad=true (default): skipped and counted
    stream = TrainStream(copy / "train", segment_samples=1800, batch_size=2, seed=0, rank=0, world_size=1,
                         prefetch_factor=0)
    for _ in range(4):
        next(stream)
    assert stream.stats()["skipped_corrupt"] >= 1
    # skip_bad=false: the stream raises, and a training run ends in one line, exit 2 (before: skipped)
    with pytest.raises(SourceError, match=f"sample {key}: no clean.flac/.wav member"):
        s = TrainStream(copy / "train", segment_samples=1800, batch_size=2, seed=0, rank=0, world_size=1,
                        prefetch_factor=0, skip_bad=False)
        for _ in range(4):
            next(s)
    cfg = write_config(tmp_path / "c.yaml", tiny_config(copy, max_steps=4, skip_bad=False))
    r = run(train_cmd(cfg, tmp_path / "run"))
    assert r.returncode == 2
    (line,) = error_lines(r.stderr)
    assert "data.skip_bad=false" in line and key in line


def test_killed_build_and_missing_shard_fail_before_training(copy, tmp_path):
    (copy / "train" / "manifest.json").unlink()  # a build killed before its finalize step: .parts/ left
    cfg = write_config(tmp_path / "c.yaml", tiny_config(copy))
    r = run(train_cmd(cfg, tmp_path / "run1"))
    assert r.returncode == 2  # before: trained silently on the shards that existed
    (line,) = error_lines(r.stderr)
    assert "the shard build did not finish" in line
    assert not (tmp_path / "run1" / "checkpoints").exists()
    # a manifest listing a shard that is gone
    r = orchestrate("shard", "build", "demo", "--out", str(tmp_path / "c2"), "speech=procedural", "train_clips=4",
                    "valid_clips=1", "test_clips=0", "--shard-samples", "2", "min_seconds=1.0", "max_seconds=1.2")
    assert r.returncode == 0, r.stderr[-2000:]
    (tmp_path / "c2" / "train" / "shard-000001.tar").unlink()
    cfg = write_config(tmp_path / "c2.yaml", tiny_config(tmp_path / "c2"))
    r = run(train_cmd(cfg, tmp_path / "run2"))
    assert r.returncode == 2
    (line,) = error_lines(r.stderr)
    assert "lists shard-000001.tar, which is missing" in line


def test_truncated_shard_with_skip_bad_false_fails_before_training(copy, tmp_path):
    shard = copy / "train" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    cfg = write_config(tmp_path / "c.yaml", tiny_config(copy, skip_bad=False))
    r = run(train_cmd(cfg, tmp_path / "run"))
    assert r.returncode == 2
    (line,) = error_lines(r.stderr)
    assert "shard-000001.tar" in line and "truncated or replaced" in line


def test_shard_verify_with_a_corrupt_manifest(copy):
    (copy / "valid" / "manifest.json").write_text('{"shards": [{"name": ')  # cut off mid-write by another tool
    r = orchestrate("shard", "verify", str(copy))
    assert "Traceback" not in r.stderr
    assert r.returncode == 1  # problems found (before: a JSONDecodeError traceback)
    assert "valid/manifest.json: not a valid manifest (JSONDecodeError" in r.stdout + r.stderr


def test_stream_counts_are_unchanged_for_good_data(copy):
    """Guard: the checks above cost nothing on a good corpus (same batches, no skips)."""
    stream = TrainStream(copy / "train", segment_samples=1800, batch_size=2, seed=0, rank=0, world_size=1,
                         prefetch_factor=0, skip_bad=False)
    for _ in range(4):
        next(stream)
    assert Counter(stream.stats())["skipped_corrupt"] == 0
    assert sys.modules["sharding.stream"].list_shards(copy / "train", check_sizes=True)
