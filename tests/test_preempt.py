"""Preemption flag, SLURM time limit and the environment parsing of training.distributed."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest

from training import distributed
from training.preempt import EXIT_PREEMPTED, Preemption


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM])
def test_signal_only_sets_flag_and_stop_is_agreed(sig):
    p = Preemption(margin_s=0).install()
    try:
        assert not p.should_stop()
        os.kill(os.getpid(), sig)
        assert p.signum == sig  # handled, process still alive
        assert p.should_stop() and signal.Signals(sig).name in p.reason
    finally:
        p.uninstall()
    assert EXIT_PREEMPTED == 75


def test_time_limit_margin():
    assert not Preemption(margin_s=60, end_time=time.time() + 3600).should_stop()
    p = Preemption(margin_s=60, end_time=time.time() + 30)
    assert p.should_stop() and "time limit" in p.reason


def test_parse_slurm_duration():
    assert distributed.parse_slurm_duration("1-02:03:04") == ((24 + 2) * 60 + 3) * 60 + 4
    assert distributed.parse_slurm_duration("05:00") == 300
    assert distributed.parse_slurm_duration("UNLIMITED") is None


def test_slurm_end_time_from_env_and_from_fake_squeue(tmp_path, monkeypatch):
    assert distributed.slurm_end_time({"SLURM_JOB_END_TIME": "1234.5"}) == 1234.5
    squeue = tmp_path / "squeue"
    squeue.write_text('#!/bin/sh\n[ "$3" = "77" ] && echo "  1:00:00" \n')
    squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    end = distributed.slurm_end_time({"SLURM_JOB_ID": "77"})
    assert end is not None and abs(end - (time.time() + 3600)) < 5
    assert distributed.slurm_end_time({}) is None


def test_expand_nodelist():
    assert distributed.expand_nodelist("nid[001-003,7],gpu1") == ["nid001", "nid002", "nid003", "nid7", "gpu1"]
    assert distributed.expand_nodelist("node1") == ["node1"]


def test_env_from_torchrun_slurm_and_single(monkeypatch):
    e = distributed.env_from({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "123"})
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.master_port, e.source) == (1, 4, 1, "h", 123, "torchrun")
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the built-in parser is used
    e = distributed.env_from({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3",
                              "SLURM_JOB_NODELIST": "nid[005-006]", "SLURM_JOB_ID": "42"})
    assert (e.rank, e.world_size, e.master_addr, e.master_port, e.source) == (3, 8, "nid005", 20042, "slurm")
    e = distributed.env_from({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "a",
                              "MASTER_ADDR": "127.0.0.1"})
    assert e.master_addr == "127.0.0.1"
    assert distributed.env_from({}).world_size == 1
