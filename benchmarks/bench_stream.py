"""Training stream from every source: samples/s per worker against the FLAC-decode limit, resume start-up.

One run, one table. Reference: the decode limit -- `sharding.stream._decode_crop` (what the stream does
per sample: decode the whole noisy utterance for its RMS, a 2-s crop of clean) on the same samples held
in memory, in this process, measured between the sources (so machine load hits both alike). Sources:
the local folder read by seeking (the automatic choice for local files), the same files read front to
back (the remote code path), a real HTTP server and moto's S3 server on 127.0.0.1 (child processes,
tests/shard_servers.py). "Per worker" = one process decoding in its own thread (``num_workers=0``,
no prefetch): what each DataLoader worker does. Targets: >= 300 samples/s per worker from every
source; resume start-up (load_state_dict to the first batch, in the middle of a 1 GB shard) < 5 s.

Run: ``python benchmarks/bench_stream.py [--seconds 3] [--batches 60] [--repeats 3] [--resume-gb 1]``
(needs the dev extra: boto3 + moto[server]).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core per worker

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

TARGET = 300.0
RESUME_TARGET_S = 5.0
SEG, BATCH = 32000, 8


def _pool(n: int, seconds: float, seed: int = 0) -> list[dict]:
    """``n`` distinct speech-like noisy/clean pairs of ``seconds`` (FLAC PCM_16, as the recipes write)."""
    from sharding.audio import encode_flac
    from sharding.recipes.synth import Voice, procedural_speech

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        clean = procedural_speech(rng, Voice.from_id(i), int(seconds * 16000)).astype(np.float32)
        noisy = clean + (0.05 * rng.standard_normal(len(clean))).astype(np.float32)
        out.append({"noisy.flac": encode_flac(noisy), "clean.flac": encode_flac(clean), "json": b"{}"})
    return out


def write_corpus(split_dir: Path, pool: list[dict], clips: int, shard_clips: int) -> Path:
    """``clips`` samples (the pool repeated under new keys) in shards of ``shard_clips`` + manifest."""
    from sharding.tario import write_tar
    from sharding.writer import index_shards

    split_dir.mkdir(parents=True)
    for s in range(0, clips, shard_clips):
        write_tar(split_dir / f"shard-{s // shard_clips:06d}.tar",
                  ({"__key__": f"c{i:08d}", **pool[i % len(pool)]} for i in range(s, min(clips, s + shard_clips))))
    index_shards(split_dir)
    return split_dir


def stream(source: str, **kw):
    from sharding.stream import TrainStream

    return TrainStream(source, segment_samples=SEG, batch_size=BATCH, seed=0, rank=0, world_size=1,
                       prefetch_factor=0, **kw)


def _cpu_s() -> float:
    """CPU seconds of this process and its children (the HTTP / S3 servers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def source_rate(source: str, batches: int, **kw) -> tuple[float, float]:
    """(samples/s wall, samples per CPU-second of this process and the server) after the first batch."""
    s = stream(source, **kw)
    next(s)
    t0, c0 = time.perf_counter(), _cpu_s()
    for _ in range(batches):
        next(s)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    s.close()
    return batches * BATCH / wall, batches * BATCH / cpu


def decode_rate(samples: list[dict], n: int) -> tuple[float, float]:
    """The decode limit: `_decode_crop` on in-memory samples (no I/O, no tar, no batching)."""
    from sharding.stream import _decode_crop

    t0, c0 = time.perf_counter(), _cpu_s()
    for i in range(n):
        _decode_crop(samples[i % len(samples)], SEG, np.random.default_rng(i), "convert", Counter())
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return n / wall, n / cpu


def resume_startup(source: str, position: int) -> float:
    """Seconds from load_state_dict (a state at raw ``position`` of a one-shard corpus) to the first batch."""
    s = stream(source)
    state = s.state_dict()
    state.update(positions=[position], batches=position // BATCH)
    t0 = time.perf_counter()
    r = stream(source)
    r.load_state_dict(state)
    next(r)
    dt = time.perf_counter() - t0
    r.close()
    return dt


def _fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):8.1f} ({min(xs):.0f}-{max(xs):.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="clip length (3 s ~ VB-DemandEx; DNS 2020: 10)")
    ap.add_argument("--clips", type=int, default=640, help="clips in the throughput corpus")
    ap.add_argument("--batches", type=int, default=60, help="batches of 8 x 2 s timed per source and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resume-gb", type=float, default=1.0, help="size of the resume shard (0: skip)")
    args = ap.parse_args()

    import torch
    from shard_servers import S3_ENV, http_server, s3_server, upload

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pool = _pool(48, args.seconds)
        write_corpus(tmp / "tp" / "train", pool, args.clips, 64)
        resume_n = 0
        if args.resume_gb > 0:
            per = sum(len(v) for v in pool[0].values()) + 3 * 512
            resume_n = int(args.resume_gb * 1e9 / per)
            write_corpus(tmp / "big" / "train", pool, resume_n, resume_n)
            big_bytes = (tmp / "big" / "train" / "shard-000000.tar").stat().st_size
        with http_server(tmp) as url, s3_server() as endpoint:
            os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint})
            upload(endpoint, tmp / "tp", "bench", "tp")
            if resume_n:
                upload(endpoint, tmp / "big", "bench", "big")
            sources = {"local folder (seek)": (str(tmp / "tp"), {}),
                       "local folder (front to back)": (str(tmp / "tp"), {"reader": "sequential"}),
                       "HTTP 127.0.0.1": (f"{url}/tp", {}),
                       "S3 (moto) 127.0.0.1": ("s3://bench/tp", {})}
            samples = [dict(p) for p in pool]
            rows: dict[str, list[tuple[float, float]]] = {k: [] for k in ["FLAC-decode limit", *sources]}
            for _ in range(args.repeats):  # interleaved: load drifts hit every row alike
                rows["FLAC-decode limit"].append(decode_rate(samples, args.batches * BATCH))
                for name, (src, kw) in sources.items():
                    rows[name].append(source_rate(src, args.batches, **kw))
            resume = {}
            if resume_n:
                mid = resume_n // 2
                resume = {"local folder (seek)": resume_startup(str(tmp / "big"), mid),
                          "HTTP 127.0.0.1": resume_startup(f"{url}/big", mid),
                          "S3 (moto) 127.0.0.1": resume_startup("s3://bench/big", mid)}
    limit = statistics.median(w for w, _ in rows["FLAC-decode limit"])
    print(f"stream throughput per worker: {args.seconds:g}-s clips, batch {BATCH} x {SEG / 16000:g} s crops, "
          f"{args.clips} clips in shards of 64, {args.repeats} repeats x {args.batches} batches "
          f"(median (min-max); machine shared: compare the ratios)")
    climit = statistics.median(c for _, c in rows["FLAC-decode limit"])
    print("samples/s: wall clock of one decoding thread; per CPU-s: per CPU-second of it and the server "
          "(a dedicated core's rate)")
    print(f"{'source':30s} {'samples/s':>18s} {'/ decode':>9s} {'/ 300':>6s} {'per CPU-s':>10s} {'/ decode':>9s} "
          f"{'/ 300':>6s}")
    for name, vals in rows.items():
        wall = statistics.median(w for w, _ in vals)
        cpu = statistics.median(c for _, c in vals)
        print(f"{name:30s} {_fmt([w for w, _ in vals]):>18s} {wall / limit:9.2f} {wall / TARGET:6.2f} "
              f"{cpu:10.1f} {cpu / climit:9.2f} {cpu / TARGET:6.2f}")
    if resume:
        print(f"\nresume start-up (load_state_dict -> first batch) in the middle of one "
              f"{big_bytes / 1e9:.2f} GB shard ({resume_n} clips, position {resume_n // 2}); target < {RESUME_TARGET_S:g} s")
        for name, secs in resume.items():
            print(f"{name:30s} {secs:8.2f} s   {secs / RESUME_TARGET_S:5.2f} of target")


if __name__ == "__main__":
    main()
