"""sharding: corpus recipes -> WebDataset shards -> resumable, rank-balanced streaming. Knows no models.

Modules::

    recipes/        demo, pairs, dns2020, vb-demandex, ears-wham (+ registry: get_recipe, list_recipes)
    writer.py       build(recipe, out_dir, options, executor=local|ray, num_workers=...) -> manifests;
                    index_shards(dir): manifests for webdataset.ShardWriter output
    executors.py    process pool, Ray tasks, the plan a SLURM array reads; build_job.py: one array task
    stream.py       TrainStream (training batches), iter_utterances (validation/eval), read_shard
    shards.py       a source (folder, brace pattern, http(s)/s3 URL, pipe:) -> shards with sample counts
    manifest.py     the one manifest.json reader; sources.py: remote bytes (retrying ShardStream)
    verify.py       verify(dir) -> VerifyReport, stats(dir) -> dict
    audio.py, mixing.py, loudness.py, tario.py, testing.py   audio I/O, mixers, BS.1770, tar I/O, fakes

``from sharding import build, verify, stats, TrainStream, iter_utterances`` works (lazy imports).
"""

from __future__ import annotations

_LAZY = {
    "build": "sharding.writer", "verify": "sharding.verify", "stats": "sharding.verify",
    "TrainStream": "sharding.stream", "iter_utterances": "sharding.stream", "get_recipe": "sharding.recipes",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sharding' has no attribute {name!r}")
