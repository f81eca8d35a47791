"""WebDataset interop both ways, with real shards: `webdataset.WebDataset` reads the shards our
writer produced; shards another pipeline wrote with plain `webdataset.ShardWriter` (WAV members,
no json) are indexed by `orchestrate shard index` and trained on."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from orchestrator.cli import main as cli_main
from sharding.tario import index_tar, iter_samples, read_members

REPO = Path(__file__).resolve().parent.parent


def test_webdataset_reads_our_shards(demo_data):
    import webdataset as wds

    tars = sorted((demo_data / "train").glob("*.tar"))
    assert len(tars) == 2
    for tar in tars:
        ours = index_tar(tar)
        theirs = list(wds.WebDataset(str(tar), shardshuffle=False))
        assert [s["__key__"] for s in theirs] == list(ours.samples) and len(theirs) == 4
        for s in theirs:
            members = ours.samples[s["__key__"]]
            assert set(members) == {"noisy.flac", "clean.flac", "json"} <= set(s)
            assert read_members(tar, members) == {k: s[k] for k in members}
            clean, sr = sf.read(io.BytesIO(s["clean.flac"]), dtype="float32")
            assert sr == 16000 and abs(len(clean) / sr - json.loads(s["json"])["seconds"]) < 1e-3
        assert [s["__key__"] for s in iter_samples(tar)] == list(ours.samples)  # our own reader: wds too


def _wav(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_shards_from_webdataset_shardwriter_are_indexed_and_trained_on(demo_data, tmp_path):
    import webdataset as wds

    from sharding.stream import iter_utterances

    ext = tmp_path / "ext"
    for split in ("train", "valid"):
        (ext / split).mkdir(parents=True)
        with wds.ShardWriter(str(ext / split / "part-%04d.tar"), maxcount=3, verbose=0) as sink:
            for key, noisy, clean in iter_utterances(demo_data / split):
                sink.write({"__key__": key, "noisy.wav": _wav(noisy), "clean.wav": _wav(clean)})
    assert cli_main(["shard", "index", str(ext)]) == 0
    m = json.loads((ext / "train" / "manifest.json").read_text())
    assert m["num_samples"] == 8 and [s["samples"] for s in m["shards"]] == [3, 3, 2]
    assert m["fields"] == ["noisy.wav", "clean.wav"] and m["sample_rate"] == 16000 and m["recipe"] == "external"
    first = ext / "train" / m["shards"][0]["name"]
    assert m["shards"][0]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    ref = json.loads((demo_data / "train" / "manifest.json").read_text())["seconds"]
    assert abs(m["seconds"] - ref) < 1e-3  # the same audio, durations from the WAV headers
    # a sample without clean audio is refused, naming the file and the key
    bad = tmp_path / "bad"
    bad.mkdir()
    with wds.TarWriter(str(bad / "x.tar")) as sink:
        sink.write({"__key__": "k1", "noisy.wav": _wav(np.zeros(160, np.float32))})
    assert cli_main(["shard", "index", str(bad)]) == 2
    # and trained on: two steps of the real trainer
    work = tmp_path / "run"
    overrides = ["model.name=rwsa-xs", "model.options={hidden: 8, num_blocks: 1}",
                 f"data.train={ext / 'train'}", f"data.valid={ext / 'valid'}", "data.segment_samples=1800",
                 "data.batch_size=2", "data.valid_limit=1", "trainer.max_steps=2", "trainer.val_every=2",
                 "trainer.ckpt_every=2", "trainer.pesq_workers=0", "trainer.num_threads=1",
                 "loss.discriminator=false", "mlflow.enabled=false"]
    r = subprocess.run([sys.executable, "-m", "training.run", "--workdir", str(work), *overrides], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((work / "progress.json").read_text())["step"] == 2
