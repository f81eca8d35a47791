"""TrainStream / iter_utterances: shapes, split by rank, determinism, exact resume, bad input."""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sharding.errors import SourceError
from sharding.recipes.demo import prepare_demo
from sharding.stream import StreamConfig, TrainStream, epoch_assignment, iter_utterances, list_shards
from sharding.tario import write_tar

SEG = 8000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    prepare_demo(out, speech="procedural", train_clips=30, valid_clips=4, test_clips=4, shard_samples=6,
                 min_seconds=0.8, max_seconds=1.6)
    return out


def make(corpus, **kw) -> TrainStream:
    args = dict(segment_samples=SEG, batch_size=3, seed=5, rank=0, world_size=1)
    args.update(kw)
    return TrainStream(corpus, **args)


def take(stream, n):
    return [next(stream) for _ in range(n)]


def same(a, b) -> bool:
    return all(torch.equal(x["noisy"], y["noisy"]) and torch.equal(x["clean"], y["clean"]) for x, y in zip(a, b))


def test_batches_shape_dtype_and_counts(corpus):
    s = make(corpus)
    b = next(s)
    assert set(b) == {"noisy", "clean", "norm"}
    assert b["noisy"].shape == (3, SEG) and b["noisy"].dtype == torch.float32
    assert len(s) == 30 // 3
    take(s, 24)  # well past one epoch: the stream is infinite
    st = s.stats()
    assert st["batches"] == 25 and st["samples"] == 75 and st["skipped_corrupt"] == 0


def test_epoch_assignment_splits_shards_by_slot_and_reshuffles():
    cfg = StreamConfig(tuple(range(10)), SEG, 2, seed=1, num_slots=4, on_mismatch="convert")
    for e in range(3):
        parts = [epoch_assignment(cfg, e, j) for j in range(4)]
        flat = sorted(i for p in parts for i in p)
        assert flat == list(range(10))  # every shard once per epoch, no slot overlap
    assert epoch_assignment(cfg, 0, 0) != epoch_assignment(cfg, 1, 0)
    few = StreamConfig(tuple(range(3)), SEG, 2, seed=1, num_slots=8, on_mismatch="convert")
    assert all(len(epoch_assignment(few, 0, j)) >= 1 for j in range(8))  # more slots than shards


def test_ranks_differ_and_yield_equal_batches(corpus):
    # 5 shards over 2 ranks: unequal shard counts, yet both ranks keep yielding (infinite stream).
    r0, r1 = make(corpus, rank=0, world_size=2), make(corpus, rank=1, world_size=2)
    a, b = take(r0, 15), take(r1, 15)
    assert len(a) == len(b) == 15
    assert not torch.equal(a[0]["clean"], b[0]["clean"])
    assert len(r0) == len(r1) == 30 // (2 * 3)


def test_deterministic_per_seed(corpus):
    assert same(take(make(corpus), 4), take(make(corpus), 4))
    assert not same(take(make(corpus), 1), take(make(corpus, seed=6), 1))


@pytest.mark.parametrize("num_workers,cut", [(0, 4), (0, 11), (2, 5)])
def test_resume_is_bitwise_identical(corpus, num_workers, cut):
    full = take(make(corpus, num_workers=num_workers, rank=1, world_size=2), cut + 6)
    s = make(corpus, num_workers=num_workers, rank=1, world_size=2)
    take(s, cut)
    state = json.loads(json.dumps(s.state_dict()))  # survives a JSON/ckpt round trip
    resumed = make(corpus, num_workers=num_workers, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert same(full[cut:], take(resumed, 6))
    assert resumed.stats()["batches"] == cut + 6


def test_workers_stream_matches_itself_and_state_mismatch_refused(corpus):
    a = take(make(corpus, num_workers=2), 4)
    b = take(make(corpus, num_workers=2), 4)
    assert same(a, b)
    s = make(corpus, num_workers=2)
    with pytest.raises(SourceError, match="num_workers"):
        s.load_state_dict(make(corpus).state_dict())


def test_short_clips_are_zero_padded(corpus):
    s = make(corpus, segment_samples=16000 * 3, batch_size=2)
    b = next(s)
    assert torch.all(b["clean"][:, -16000:] == 0)  # clips are <= 1.6 s
    assert torch.any(b["clean"][:, :8000] != 0)


def test_iter_utterances_full_length(corpus):
    utts = list(iter_utterances(corpus / "valid"))
    assert len(utts) == 4 and len(list(iter_utterances(corpus / "valid", limit=2))) == 2
    meta = json.loads((corpus / "valid" / "manifest.json").read_text())
    assert sum(len(c) for _, _, c in utts) / 16000 == pytest.approx(meta["seconds"], abs=1e-3)
    key, noisy, clean = utts[0]
    assert key.startswith("valid-") and noisy.dtype == np.float32 and noisy.shape == clean.shape
    with pytest.raises(SourceError, match="corpus folder"):
        list(iter_utterances(corpus))
    assert len(list(iter_utterances(corpus, split="test"))) == 4


# ----------------------------------------------------------------- bad input
def _flac(x, sr=16000, fmt="FLAC", subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _sample(key, noisy, clean, sr=16000, fmt="FLAC", subtype="PCM_16"):
    ext = "flac" if fmt == "FLAC" else "wav"
    return {"__key__": key, f"noisy.{ext}": _flac(noisy, sr, fmt, subtype),
            f"clean.{ext}": _flac(clean, sr, fmt, subtype), "json": b"{}"}


def _good(key, rng, n=12000):
    clean = (0.1 * rng.standard_normal(n)).astype(np.float32)
    return _sample(key, clean + 0.05 * rng.standard_normal(n).astype(np.float32), clean)


def test_bad_samples_are_skipped_counted_and_warned(tmp_path, caplog):
    rng = np.random.default_rng(0)
    d = tmp_path / "train"
    d.mkdir()
    z = np.zeros(12000, np.float32)
    nan = np.full(12000, np.nan, np.float32)
    samples = [_good("g0", rng), {"__key__": "bad", "noisy.flac": b"not audio", "clean.flac": b"junk"},
               _good("g1", rng), _sample("silent", z + 0.1, z),
               _sample("nan", nan, nan, fmt="WAV", subtype="FLOAT"), _good("g2", rng)]
    write_tar(d / "shard-000000.tar", samples)
    write_tar(d / "shard-000001.tar", [_good(f"h{i}", rng) for i in range(4)])
    raw = (d / "shard-000001.tar").read_bytes()
    (d / "shard-000001.tar").write_bytes(raw[: len(raw) // 2])  # truncated mid-shard
    caplog.set_level(logging.WARNING)
    s = TrainStream(d, segment_samples=SEG, batch_size=2, seed=0, rank=0, world_size=1)
    take(s, 6)
    st = s.stats()
    assert st["rejected_silent"] >= 1 and st["rejected_nonfinite"] >= 1 and st["skipped_corrupt"] >= 2
    assert any("bad" in r.getMessage() and "shard-000000.tar" in r.getMessage() for r in caplog.records)
    assert any("truncated" in r.getMessage() for r in caplog.records)
    stats = Counter()
    keys = [k for k, _, _ in iter_utterances(d, stats=stats)]
    assert keys[:3] == ["g0", "g1", "g2"] and stats["rejected_silent"] == 1 and stats["rejected_nonfinite"] == 1


def test_wrong_rate_and_stereo_converted_or_rejected(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "s"
    d.mkdir()
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], 1).astype(np.float32) * 0.3
    write_tar(d / "shard-000000.tar", [_sample("st", stereo, stereo, sr=44100), _good("g", rng)])
    s = TrainStream(d, segment_samples=16000, batch_size=2, seed=0, rank=0, world_size=1)
    b = next(s)
    assert s.stats()["converted"] == 1 and b["clean"].shape == (2, 16000)
    (key, noisy, clean), *_ = list(iter_utterances(d / "shard-000000.tar"))
    assert key == "st" and len(clean) == 16000  # 1 s at 44.1 kHz -> 16 kHz
    assert np.max(np.abs(clean)) == pytest.approx(0.3 * 0.75, rel=0.02)  # mono mix of 1.0 and 0.5
    r = TrainStream(d, segment_samples=4000, batch_size=1, seed=0, rank=0, world_size=1, on_mismatch="reject")
    take(r, 3)
    assert r.stats()["rejected_format"] >= 1 and r.stats()["converted"] == 0


def test_missing_or_empty_folder_is_source_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        TrainStream(tmp_path / "nope", segment_samples=SEG, batch_size=2, seed=0, rank=0, world_size=1)
    with pytest.raises(SourceError, match="no manifest"):
        TrainStream(tmp_path, segment_samples=SEG, batch_size=2, seed=0, rank=0, world_size=1)
    with pytest.raises(SourceError, match="rank"):
        TrainStream(tmp_path, segment_samples=SEG, batch_size=2, seed=0, rank=2, world_size=2)


def test_all_bad_shard_raises_instead_of_spinning(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    write_tar(d / "shard-000000.tar", [{"__key__": f"b{i}", "noisy.flac": b"x", "clean.flac": b"y"} for i in range(3)])
    with pytest.raises(SourceError, match="no decodable sample"):
        next(TrainStream(d, segment_samples=SEG, batch_size=2, seed=0, rank=0, world_size=1))


def test_manifest_counts_used(corpus):
    refs = list_shards(corpus / "train")
    assert [r.samples for r in refs] == [6] * 5


def test_truncated_shard_with_manifest_counts_missing_samples(corpus, tmp_path):
    d = tmp_path / "train"
    shutil.copytree(corpus / "train", d)
    raw = (d / "shard-000002.tar").read_bytes()
    (d / "shard-000002.tar").write_bytes(raw[: len(raw) // 3])
    s = TrainStream(d, segment_samples=SEG, batch_size=3, seed=5, rank=0, world_size=1)
    take(s, 10)  # one nominal epoch = 30 samples, >= 4 of them lost in the cut
    assert s.stats()["skipped_corrupt"] >= 4
    assert s.stats()["samples"] == 30


def test_shard_vanishing_mid_run_is_skipped_not_fatal(corpus, tmp_path, caplog):
    d = tmp_path / "train"
    shutil.copytree(corpus / "train", d)
    s = TrainStream(d, segment_samples=SEG, batch_size=3, seed=5, rank=0, world_size=1)
    next(s)
    (d / "shard-000003.tar").unlink()  # e.g. a parallel-FS hiccup or a cleanup gone wrong
    caplog.set_level(logging.WARNING)
    take(s, 12)
    assert s.stats()["skipped_corrupt"] >= 6
    assert any("shard-000003.tar" in r.getMessage() for r in caplog.records)


def test_prefetch_thread_keeps_order_and_stops(corpus):
    import time

    s = make(corpus)
    assert same(take(s, 5), take(make(corpus, prefetch_factor=0), 5))
    thread = s._it._thread
    assert thread.is_alive()
    s.close()
    deadline = time.monotonic() + 5
    while thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not thread.is_alive()
    assert same(take(s, 2), take(make(corpus, prefetch_factor=0), 7)[5:])  # close() resumes in place


def test_more_slots_than_shards_with_workers_resumes(corpus):
    # 4 ranks x 2 workers = 8 slots over 5 shards: shards repeat within an epoch, nothing hangs.
    full = take(make(corpus, rank=3, world_size=4, num_workers=2), 7)
    s = make(corpus, rank=3, world_size=4, num_workers=2)
    take(s, 3)
    r = make(corpus, rank=3, world_size=4, num_workers=2)
    r.load_state_dict(s.state_dict())
    assert same(full[3:], take(r, 4))


def test_starting_workers_leaves_the_global_torch_rng_alone(corpus):
    """A resumed run restores the RNG and then starts the loader: that start must not draw from it
    (it did: DataLoader's base seed came from the global generator, so resume with workers was not exact)."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    s = make(corpus, num_workers=1)
    try:
        next(s)
        after = torch.get_rng_state()
    finally:
        s.close()
    assert torch.equal(after, before)


def test_a_state_from_before_the_window_resumes_with_the_whole_shard_order(corpus):
    """A checkpoint written before `shuffle_window` existed (no such key) read each shard in a whole-shard
    permutation; it resumes in that order, whatever window this stream was built with (here 2, smaller
    than the 6-sample shards, so the orders differ), and keeps it in its later states."""
    from sharding.stream import WHOLE_SHARD

    old = make(corpus, shuffle_window=WHOLE_SHARD)
    take(old, 2)
    state = old.state_dict()
    del state["shuffle_window"]
    expected = take(old, 4)
    new = make(corpus, shuffle_window=2)
    new.load_state_dict(state)
    assert same(take(new, 4), expected)
    assert new.state_dict()["shuffle_window"] == WHOLE_SHARD
    assert not same(take(make(corpus, shuffle_window=2), 6), take(make(corpus, shuffle_window=WHOLE_SHARD), 6))
