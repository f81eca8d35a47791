"""Sharding throughput: build (mix + FLAC encode, audio seconds per CPU second) and loader (examples/s).

Targets: build >= 500x real time per core; loader >= 300 examples/s per worker.
Run: ``python benchmarks/bench_sharding.py [--clips 40] [--batches 60]`` (single process, 1 core busy).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core per worker, as in a build/loader process

import numpy as np  # noqa: E402

BUILD_TARGET_X = 500.0
LOADER_TARGET = 300.0


def _fake_dns_tree(root: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """Real-sized DNS-like sources: 20 clean files of 30 s, 20 noise files of 10 s (16 kHz PCM_16)."""
    import soundfile as sf

    from sharding.recipes.synth import Voice, procedural_speech

    for i in range(20):
        x = procedural_speech(rng, Voice.from_id(i), 30 * 16000)
        sf.write(root / "clean" / f"book_{i:05d}_chp_0001_reader_{i:05d}_0.wav", x, 16000, subtype="PCM_16")
    for i in range(20):
        sf.write(root / "noise" / f"noise_{i}.wav", 0.1 * rng.standard_normal(160000), 16000, subtype="PCM_16")
    return root / "clean", root / "noise"


def bench_build(tmp: Path, clips: int) -> dict:
    from sharding.audio import encode_flac
    from sharding.mixing import dns_snr_mixer
    from sharding.writer import build

    rng = np.random.default_rng(0)
    (tmp / "clean").mkdir()
    (tmp / "noise").mkdir()
    clean_dir, noise_dir = _fake_dns_tree(tmp, rng)
    # mixing + encoding alone (10 s pairs)
    clean, noise = rng.standard_normal(160000) * 0.1, rng.standard_normal(160000) * 0.1
    t0 = time.process_time()
    n = 50
    for _ in range(n):
        noisy, c, _ = dns_snr_mixer(clean, noise, 5, -25)
        encode_flac(noisy), encode_flac(c)
    mix_encode_ms = (time.process_time() - t0) / n * 1000
    # full dns2020 recipe: read sources, activity checks, mix, encode, tar, sha256, manifest
    opts = {"clean_dir": str(clean_dir), "noise_dir": str(noise_dir), "train_clips": clips, "valid_clips": 0,
            "valid_noise_percent": 0}
    t0 = time.process_time()
    result = build("dns2020", tmp / "shards", opts, shard_samples=max(1, clips // 4))
    cpu = time.process_time() - t0
    seconds = result["manifests"]["train"]["seconds"]
    return {"mix_encode_ms_per_10s_pair": round(mix_encode_ms, 2),
            "mix_encode_x_realtime": round(10_000 / mix_encode_ms, 1),
            "dns2020_build_audio_s": seconds, "dns2020_build_cpu_s": round(cpu, 3),
            "build_x_realtime_per_core": round(seconds / cpu, 1),
            "build_ratio_to_target": round(seconds / cpu / BUILD_TARGET_X, 2)}


def bench_loader(shards: Path, batches: int) -> dict:
    import torch

    from sharding.stream import TrainStream

    torch.set_num_threads(1)
    s = TrainStream(shards, segment_samples=32000, batch_size=8, seed=0, rank=0, world_size=1)
    next(s)  # index the shards
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(s)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_s = batches * 8 / wall
    return {"loader_examples_per_s_per_worker": round(per_s, 1), "loader_cpu_ms_per_example":
            round(cpu / (batches * 8) * 1000, 3), "loader_examples_per_cpu_s": round(batches * 8 / cpu, 1),
            "loader_ratio_to_target": round(per_s / LOADER_TARGET, 2),
            "segment_s": 2.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=40, help="10 s clips to build")
    ap.add_argument("--batches", type=int, default=60, help="batches of 8 x 2 s to load")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = bench_build(tmp, args.clips)
        out.update(bench_loader(tmp / "shards", args.batches))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
