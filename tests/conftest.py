"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


# ----- training engine fixtures (tests/test_training*.py, tests/test_ddp.py) -------------------------
@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """A small procedural demo corpus (train 24 clips of 1-1.5 s in 4 shards, valid 3), built once."""
    from sharding.recipes.demo import prepare_demo

    out = tmp_path_factory.mktemp("demo_corpus")
    prepare_demo(out, speech="procedural", train_clips=24, valid_clips=3, test_clips=0, shard_samples=6,
                 min_seconds=1.0, max_seconds=1.5)
    return out
