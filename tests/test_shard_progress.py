"""Shard build progress (sharding/progress.py) on a real demo build: log lines, totals, terminal bar."""

from __future__ import annotations

import logging

from sharding import executors
from sharding.progress import ShardProgress
from sharding.recipes.demo import prepare_demo
from sharding.writer import _part_path, build_shard, resolve_plan

OPTS = dict(train_clips=4, valid_clips=2, test_clips=0, min_seconds=1.0, max_seconds=1.2, speech="procedural")


def test_build_logs_files_hours_and_rate(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sharding.progress")
    out = prepare_demo(tmp_path / "c", shard_samples=2, **OPTS)
    seconds = sum(m["seconds"] for m in out["manifests"].values())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shard build:")]
    assert lines, "no progress line logged"
    assert lines[-1].startswith("shard build: files 6/6  shards 3/3  ")
    assert f"{seconds / 3600:.2f} h of audio" in lines[-1]
    assert " audio s/s  " in lines[-1] and " files/s  ETA 0m00s" in lines[-1]


def test_periodic_lines_and_terminal_bar(tmp_path, capsys):
    norm, tasks = resolve_plan("demo", OPTS, shard_samples=1)
    parts = [(_part_path(tmp_path, t), t.stop - t.start) for t in tasks]
    with ShardProgress(parts, interval_s=0.0, poll_s=0.02) as p:
        executors.run_local(build_shard, [("demo", norm, str(tmp_path), t) for t in tasks], 1)
    files = [int(line.split("files ")[1].split("/")[0]) for line in p.lines]
    assert len(p.lines) >= 2 and files == sorted(files) and files[-1] == 6  # periodic, then the final line
    # rebuilding: everything already done counts as done, not towards the rate
    with ShardProgress(parts, tty=True) as q:
        executors.run_local(build_shard, [("demo", norm, str(tmp_path), t) for t in tasks], 1)
    assert q.stats()["files"] == 6 and q.stats()["files_per_s"] == 0.0
    assert "shards" in capsys.readouterr().err  # the tqdm bar
