"""Shard writer: manifests, deterministic bytes across executors, resume, metadata, SLURM plan."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sharding.build_job import run_finalize, run_task
from sharding.errors import SourceError
from sharding.recipes import get_recipe, list_recipes
from sharding.recipes.demo import prepare_demo
from sharding.tario import write_tar
from sharding.writer import build

OPTS = dict(speech="procedural", train_clips=12, valid_clips=3, test_clips=3, min_seconds=0.5, max_seconds=1.0)


def shas(out: Path) -> dict[str, str]:
    return {f"{s}/{sh['name']}": sh["sha256"] for s in ("train", "valid", "test")
            for sh in json.loads((out / s / "manifest.json").read_text())["shards"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w1")
    prepare_demo(out, shard_samples=5, **OPTS)
    return out


def test_manifest_contents(built):
    m = json.loads((built / "train" / "manifest.json").read_text())
    assert m["recipe"] == "demo" and m["options"]["train_clips"] == 12 and m["split"] == "train"
    assert [s["samples"] for s in m["shards"]] == [5, 5, 2] and m["num_samples"] == 12
    assert m["seconds"] == pytest.approx(sum(s["seconds"] for s in m["shards"]))
    assert 12 * 0.5 <= m["seconds"] <= 12 * 1.0
    for s in m["shards"]:
        assert (built / "train" / s["name"]).stat().st_size == s["bytes"]
    assert not list(built.rglob(".*.tmp*"))


def test_tar_members_and_headers_are_deterministic(built):
    with tarfile.open(built / "train" / "shard-000000.tar") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names[:3] == ["train-000000000.clean.flac", "train-000000000.json", "train-000000000.noisy.flac"]
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
        meta = json.loads(tar.extractfile("train-000000000.json").read())
        clean, sr = sf.read(io.BytesIO(tar.extractfile("train-000000000.clean.flac").read()))
        noisy, _ = sf.read(io.BytesIO(tar.extractfile("train-000000000.noisy.flac").read()))
    assert sr == 16000 and sf.info(io.BytesIO(tar_bytes(built, "train-000000000.clean.flac"))).subtype == "PCM_16"
    for k in ("snr_db", "level_dbfs", "speaker", "noise_type", "source_clean", "source_noise", "offset_clean"):
        assert k in meta
    snr = 10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2))
    assert snr == pytest.approx(meta["snr_db"], abs=0.2)
    assert 20 * np.log10(np.sqrt(np.mean(noisy**2))) == pytest.approx(meta["level_dbfs"], abs=0.2)
    assert -5 <= meta["snr_db"] <= 15 and meta["seconds"] == pytest.approx(len(clean) / 16000)


def tar_bytes(out, name):
    with tarfile.open(out / "train" / "shard-000000.tar") as tar:
        return tar.extractfile(name).read()


def test_same_bytes_with_two_processes_and_slurm_tasks(built, tmp_path):
    two = tmp_path / "two"
    prepare_demo(two, shard_samples=5, num_workers=2, **OPTS)
    assert shas(two) == shas(built)
    # The SLURM path: the plan, then each array task run here as the job would (the orchestrator's
    # SLURM launcher submits exactly these functions: tests/test_sharding_slurm.py)
    from sharding.executors import task_ranges, write_plan
    from sharding.writer import resolve_plan

    sl = tmp_path / "slurm"
    norm, tasks = resolve_plan("demo", OPTS, shard_samples=5)
    plan = write_plan("demo", norm, sl, tasks, 2)
    assert json.loads(plan.read_text())["ranges"] == [list(r) for r in task_ranges(len(tasks), 2)] and len(task_ranges(len(tasks), 2)) == 2
    assert not (sl / "train").exists()  # planning built nothing
    for task in range(2):
        run_task(plan, task)
    run_finalize(plan)
    assert shas(sl) == shas(built)


def test_ray_executor_same_bytes(built, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    build("demo", out, OPTS, shard_samples=5, executor="ray", num_workers=2)
    assert shas(out) == shas(built)


def test_resume_skips_complete_shards_and_rebuilds_missing(built, tmp_path):
    out = tmp_path / "r"
    prepare_demo(out, shard_samples=5, **OPTS)
    keep = out / "train" / "shard-000000.tar"
    mtime = keep.stat().st_mtime_ns
    (out / "train" / "shard-000001.tar").unlink()  # as if the job died before this shard
    (out / "train" / ".parts" / "shard-000001.json").unlink()
    (out / "train" / ".parts" / "shard-000002.json").unlink()  # tar renamed, sidecar lost
    (out / "train" / ".shard-000001.tar.tmp999").write_bytes(b"partial")  # a killed writer's temp file
    prepare_demo(out, shard_samples=5, **OPTS)
    assert keep.stat().st_mtime_ns == mtime
    assert not list(out.rglob("*.tmp*"))
    assert shas(out) == shas(built)


def test_rebuild_with_other_options_into_same_folder_is_refused(built, tmp_path):
    out = tmp_path / "o"
    prepare_demo(out, shard_samples=5, **OPTS)
    with pytest.raises(SourceError, match="other recipe options"):
        prepare_demo(out, shard_samples=5, seed=9, **OPTS)
    with pytest.raises(SourceError, match="shard size"):
        prepare_demo(out, shard_samples=4, **OPTS)
    assert shas(out) == shas(built)


def test_different_seed_changes_data_and_splits_use_disjoint_speakers(built, tmp_path):
    out = tmp_path / "s1"
    prepare_demo(out, shard_samples=5, seed=1, **OPTS)
    assert shas(out)["train/shard-000000.tar"] != shas(built)["train/shard-000000.tar"]
    corpus = get_recipe("demo").open(get_recipe("demo").parse_options(OPTS))
    spk = {s: set(corpus.speakers[s]) for s in ("train", "valid", "test")}
    assert not (spk["train"] & spk["valid"]) and not (spk["train"] & spk["test"]) and not (spk["valid"] & spk["test"])


def test_options_validated_before_work(tmp_path):
    with pytest.raises(SourceError, match="recipe demo: unknown key .bogus. \\(valid keys: .*seed"):
        build("demo", tmp_path / "x", {"bogus": 1})
    with pytest.raises(SourceError, match="train_clips expects an integer, got .many."):
        build("demo", tmp_path / "x", {"train_clips": "many"})
    with pytest.raises(SourceError, match="snr_db"):
        build("demo", tmp_path / "x", {"snr_db_min": "20", "snr_db_max": "10"})
    with pytest.raises(SourceError, match="unknown recipe"):
        get_recipe("nope")
    with pytest.raises(SourceError, match="executor"):
        build("demo", tmp_path / "x", OPTS, executor="mpi")
    assert not (tmp_path / "x" / "train").exists()
    assert {"demo", "pairs", "dns2020", "vb-demandex", "ears-wham"} <= set(list_recipes())
    opts = get_recipe("demo").parse_options({"train_clips": "7", "snr_db_min": "-2.5", "speech": "procedural"})
    assert opts.train_clips == 7 and opts.snr_db_min == -2.5


def test_write_tar_rejects_bad_samples(tmp_path):
    with pytest.raises(ValueError, match="key"):
        write_tar(tmp_path / "a.tar", [{"x.flac": b"1"}])
    with pytest.raises(ValueError, match="bytes"):
        write_tar(tmp_path / "a.tar", [{"__key__": "k", "x": "text"}])
    assert not (tmp_path / "a.tar").exists()


def test_demo_with_espeak_when_installed(tmp_path):
    from sharding.recipes.synth import espeak_available

    if not espeak_available():
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    out = tmp_path / "e"
    prepare_demo(out, speech="espeak", train_clips=3, valid_clips=1, test_clips=1, min_seconds=1, max_seconds=2)
    meta = json.loads((out / "train" / "manifest.json").read_text())
    assert meta["num_samples"] == 3
    with tarfile.open(out / "train" / "shard-000000.tar") as tar:
        info = json.loads(tar.extractfile("train-000000000.json").read())
    assert info["speech_engine"] == "espeak" and "+" in info["speaker"]
    again = tmp_path / "e2"
    prepare_demo(again, speech="espeak", train_clips=3, valid_clips=1, test_clips=1, min_seconds=1, max_seconds=2)
    assert shas(again) == shas(out)


def test_killed_build_resumes_to_identical_bytes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    ref = tmp_path / "ref"
    prepare_demo(ref, shard_samples=1, **OPTS)
    out = tmp_path / "killed"
    code = f"from sharding.recipes.demo import prepare_demo; prepare_demo({str(out)!r}, shard_samples=1, **{OPTS!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent)
    parts = out / "train" / ".parts"
    deadline = time.monotonic() + 60
    while not (parts.exists() and len(list(parts.glob("*.json"))) >= 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("*.json")))
    assert 2 <= done < 12 and not (out / "train" / "manifest.json").exists()
    prepare_demo(out, shard_samples=1, **OPTS)
    assert shas(out) == shas(ref)


def test_task_ranges():
    from sharding.executors import task_ranges

    assert task_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)] and task_ranges(3, 0) == [(0, 1), (1, 2), (2, 3)]
    assert task_ranges(2, 5) == [(0, 1), (1, 2)]
