"""A DNS-sized corpus index: 1.08 M clips in 10,000 shards builds, verifies and streams (issue 24).

The clips are tiny (10 ms of noise, FLAC): the index, not the audio, is measured. Steps and what is timed:

1. build: 10,000 shards through the real tar writer (`tario.write_tar`), then their manifest by the
   real indexer for shards written elsewhere (`writer.index_shards` = `orchestrate shard index`);
2. verify: `verify.verify(decode=False)` (manifest, sizes, sha256, counts of every shard);
3. manifest load (`manifest.read_manifest`) and `list_shards` (+ with size checks, as skip_bad=false);
4. stream start-up per rank, 8 ranks x 4 DataLoader workers, each rank a process of its own (run
   ``--parallel`` at a time, default 1: 2 cores cannot hold 8 ranks' 48 processes at once): constructor,
   first batch, CPU seconds spent, resident memory of the rank's main process and of each worker (RSS;
   USS = its own pages);
5. resume start-up in the middle of an epoch (every slot half-way through its epoch's shards),
   against the fresh start of the same rank;
6. epoch reshuffle: the per-epoch shard permutation of all 32 slots, and locating a position 50
   epochs deep (what a resume far into training computes).

Goals: first batch <= 10 s, <= 500 MB per worker, resume no slower than a fresh start.
Run: ``python benchmarks/bench_corpus_index.py [--clips 1080000] [--shards 10000] [--keep DIR]``
(``--keep DIR``: build there once, reuse on the next run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RANKS, WORKERS, BATCH, SEG = 8, 4, 4, 1600
FIRST_BATCH_TARGET_S, WORKER_MB_TARGET = 10.0, 500.0


def _pool(n: int = 16) -> list[dict]:
    import numpy as np

    from sharding.audio import encode_flac

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        clean = (0.05 * rng.standard_normal(160)).astype(np.float32)
        out.append({"noisy.flac": encode_flac(clean + 0.01), "clean.flac": encode_flac(clean),
                    "json": json.dumps({"seconds": 0.01}).encode()})
    return out


def _write_shards(args: tuple) -> int:
    split_dir, first, last, per = args
    from sharding.tario import write_tar

    pool = _pool()
    for s in range(first, last):
        write_tar(Path(split_dir) / f"shard-{s:06d}.tar",
                  ({"__key__": f"c{i:08d}", **pool[i % len(pool)]} for i in range(s * per, (s + 1) * per)))
    return last - first


def build(root: Path, clips: int, shards: int) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    from sharding.writer import index_shards

    split_dir = root / "train"
    split_dir.mkdir(parents=True)
    per = clips // shards
    t0 = time.perf_counter()
    chunks = [(str(split_dir), a, min(shards, a + 500), per) for a in range(0, shards, 500)]
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(_write_shards, chunks))
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index_shards(split_dir)
    return {"write_s": write_s, "index_s": time.perf_counter() - t0}


def _rss_mb(p) -> tuple[float, float]:
    info = p.memory_full_info()
    return info.rss / 2**20, info.uss / 2**20


def rank_child(root: str, rank: int, resume: bool) -> None:
    """One rank: a fresh start, or a resume with every slot half-way through its epoch; prints JSON."""
    import psutil
    import torch

    from sharding.stream import TrainStream, epoch_assignment

    t0 = time.perf_counter()
    s = TrainStream(root, segment_samples=SEG, batch_size=BATCH, seed=0, rank=rank, world_size=RANKS,
                    num_workers=WORKERS)
    construct = time.perf_counter() - t0
    if resume:
        state = s.state_dict()
        cfg = s.cfg
        half = [sum(cfg.shards[i].samples for i in epoch_assignment(cfg, 0, rank * WORKERS + w)) // 2
                for w in range(WORKERS)]
        state.update(positions=half, batches=sum(half) // BATCH)
        s.load_state_dict(state)
    next(s)
    first = time.perf_counter() - t0
    me = psutil.Process()
    workers = [w for fs in me.children() if "forkserver" in " ".join(fs.cmdline()) for w in fs.children()]
    cpu = sum(sum(p.cpu_times()[:2]) for p in [me, *me.children(recursive=True)])
    out = {"rank": rank, "construct_s": construct, "first_batch_s": first, "main": _rss_mb(me),
           "workers": [_rss_mb(w) for w in workers], "cpu_s": cpu}
    del torch
    s.close()
    print(json.dumps(out), flush=True)


def run_ranks(root: Path, parallel: int) -> tuple[list[dict], list[dict]]:
    """(fresh, resumed) of every rank; fresh and resumed runs interleaved, their order alternating by
    rank, so a change of machine load between them does not pass for a difference."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    jobs = [(r, resume) for r in range(RANKS) for resume in ((False, True) if r % 2 == 0 else (True, False))]
    results: dict[tuple[int, bool], dict] = {}
    for i in range(0, len(jobs), parallel):
        batch = jobs[i : i + parallel]
        procs = [subprocess.Popen([sys.executable, __file__, "--rank-child", str(root), str(r)]
                                  + (["--resume"] if resume else []), stdout=subprocess.PIPE, env=env, text=True)
                 for r, resume in batch]
        for job, p in zip(batch, procs):
            stdout, _ = p.communicate(timeout=900)
            if p.returncode:
                raise RuntimeError(f"rank child {job} failed (rc {p.returncode})")
            results[job] = json.loads(stdout.strip().splitlines()[-1])
    return [results[(r, False)] for r in range(RANKS)], [results[(r, True)] for r in range(RANKS)]


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=1_080_000)
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--keep", help="build the corpus here (once) and keep it")
    ap.add_argument("--parallel", type=int, default=1, help="rank processes at a time")
    ap.add_argument("--rank-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_child:
        rank_child(args.rank_child[0], int(args.rank_child[1]), args.resume)
        return
    with tempfile.TemporaryDirectory() as d:
        root = Path(args.keep) if args.keep else Path(d) / "corpus"
        built = build(root, args.clips, args.shards) if not (root / "train" / "manifest.json").exists() else {}
        report(root, built, args.parallel)


def report(root: Path, built: dict, parallel: int) -> None:
    import numpy as np

    from sharding.manifest import read_manifest
    from sharding.shards import list_shards
    from sharding.stream import StreamConfig, _locate, epoch_assignment
    from sharding.verify import verify

    split = root / "train"
    man_path = split / "manifest.json"
    manifest = read_manifest(man_path)
    rows = [("corpus", f"{manifest.num_samples:,} clips in {len(manifest.shards):,} shards, manifest "
                       f"{man_path.stat().st_size / 1e6:.1f} MB")]
    if built:
        rows += [("build: write shards (2 processes)", f"{built['write_s']:.1f} s"),
                 ("build: index_shards -> manifest.json", f"{built['index_s']:.1f} s")]
    t0 = time.perf_counter()
    rep = verify(root, decode=False)
    rows.append(("verify (sha256, counts; no decode)", f"{time.perf_counter() - t0:.1f} s, "
                                                       f"{'ok' if rep.ok else rep.problems[:3]}"))
    rows.append(("manifest load (read_manifest)", f"{timed(lambda: read_manifest(man_path)) * 1000:.0f} ms"))
    rows.append(("list_shards", f"{timed(lambda: list_shards(root)) * 1000:.0f} ms"))
    rows.append(("list_shards, check_sizes (skip_bad=false)",
                 f"{timed(lambda: list_shards(root, check_sizes=True)) * 1000:.0f} ms"))
    refs = tuple(list_shards(root))
    cfg = StreamConfig(refs, SEG, BATCH, 0, RANKS * WORKERS, "convert")
    slots = RANKS * WORKERS
    rows.append((f"epoch reshuffle ({slots} slots' shard lists)",
                 f"{timed(lambda: [epoch_assignment(cfg, 7, j) for j in range(slots)]) * 1000:.0f} ms"))
    deep = 50 * manifest.num_samples // slots
    rows.append(("locate a position 50 epochs deep (1 slot)", f"{timed(lambda: _locate(cfg, 3, deep), 1) * 1000:.0f} ms"))
    width = max(len(k) for k, _ in rows)
    print(f"corpus index at DNS scale ({RANKS} ranks x {WORKERS} workers, batch {BATCH} per rank)")
    for k, v in rows:
        print(f"  {k:{width}s}  {v}")
    fresh, resumed = run_ranks(root, parallel)
    print(f"\nper rank ({parallel} rank processes at a time; RSS / USS in MB; targets: first batch <= "
          f"{FIRST_BATCH_TARGET_S:g} s, <= {WORKER_MB_TARGET:g} MB per worker, resume <= fresh start)")
    print(f"{'rank':>4s} {'construct':>9s} {'1st batch':>9s} {'CPU-s':>6s} {'resume 1st':>10s} {'CPU-s':>6s} "
          f"{'resume/fresh':>12s} {'main RSS/USS':>13s} {'worker RSS/USS (max)':>21s}")
    for f, r in zip(fresh, resumed):
        wr = max(w[0] for w in f["workers"] + r["workers"])
        wu = max(w[1] for w in f["workers"] + r["workers"])
        print(f"{f['rank']:4d} {f['construct_s']:9.2f} {f['first_batch_s']:9.2f} {f['cpu_s']:6.1f} "
              f"{r['first_batch_s']:10.2f} {r['cpu_s']:6.1f} {r['first_batch_s'] / f['first_batch_s']:12.2f} "
              f"{f['main'][0]:6.0f}/{f['main'][1]:<6.0f} {wr:10.0f}/{wu:<10.0f}")
    print("CPU-s: CPU seconds of the rank's processes (main, forkserver, 4 workers) up to its first batch, "
          "import of torch included")
    fb = [f["first_batch_s"] for f in fresh]
    rb = [r["first_batch_s"] for r in resumed]
    wmax = max(w[0] for x in fresh + resumed for w in x["workers"])
    print(f"\nfirst batch: median {np.median(fb):.2f} s, max {max(fb):.2f} s ({max(fb) / FIRST_BATCH_TARGET_S:.2f} of "
          f"target); resume: median {np.median(rb):.2f} s ({np.median(rb) / np.median(fb):.2f} x fresh); worker RSS "
          f"max {wmax:.0f} MB ({wmax / WORKER_MB_TARGET:.2f} of target); workers per rank seen: "
          f"{sorted({len(x['workers']) for x in fresh + resumed})}")


if __name__ == "__main__":
    main()
