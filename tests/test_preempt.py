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
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    p = Preemption(margin_s=0).install()
    try:
        assert not p.should_stop()
        os.kill(os.getpid(), sig)
        assert p.signum == sig  # handled, process still alive
        assert p.should_stop() and signal.Signals(sig).name in p.reason
    finally:
        p.uninstall()
        for s, h in before.items():  # an agreed stop leaves its late-signal handler: not in pytest's process
            signal.signal(s, h)
    assert EXIT_PREEMPTED == 75


LATE_SIGNAL = """
import os, signal, sys, time
from training.preempt import Preemption
p = Preemption(margin_s=0).install()
if sys.argv[1] == "stop":
    os.kill(os.getpid(), signal.SIGTERM)
    assert p.should_stop()  # another rank may have agreed first: the stop is under way
p.uninstall()
os.kill(os.getpid(), signal.SIGTERM)  # the relay's signal, reaching this rank after the stop was agreed
time.sleep(0.2)
sys.exit(75)
"""


@pytest.mark.parametrize("case", ["stop", "no-stop"])
def test_a_stop_signal_after_the_agreed_stop_does_not_kill_the_teardown(case):
    """Seen on Ray: rank 1 stopped because rank 0 asked, finished its checkpoint and restored the default
    handlers; the relay's SIGTERM then reached it and it died with -15 (a healthy rank counted failed).
    Without an agreed stop, uninstall restores the default action (the signal kills, as before)."""
    import subprocess
    import sys

    rc = subprocess.run([sys.executable, "-c", LATE_SIGNAL, case], cwd=os.path.dirname(os.path.dirname(__file__)),
                        timeout=60).returncode
    assert rc == (75 if case == "stop" else -signal.SIGTERM)


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


def _exit_under_sigterms(ignore: bool) -> int:
    """A child that handles SIGTERM in Python (as the trainer's late handler does), imports torch (a
    long finalisation), optionally calls `ignore_stop_signals`, and exits 75; SIGTERM is sent to it every
    millisecond from when it is about to exit until it has exited. Its exit code."""
    import subprocess
    import sys

    code = ("import signal, sys, torch; from training.run import ignore_stop_signals; "
            "signal.signal(signal.SIGTERM, lambda *a: None); "
            f"{'ignore_stop_signals(); ' if ignore else ''}print('exiting', flush=True); sys.exit(75)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "exiting"
    while p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            break
        time.sleep(0.001)
    return p.wait(timeout=60)


def test_a_stop_signal_after_the_exit_code_is_decided_does_not_change_it():
    """`python -m training.run` ignores the stop signals once `main` returned: the finalisation that follows
    resets Python's handlers to the default, and a SIGTERM then (the Ctrl-C relay reaching rank 0 after
    rank 1 stopped both: seen on Ray as 'training process exited -15') turned 75 into -15."""
    assert _exit_under_sigterms(ignore=False) == -signal.SIGTERM  # the failure this guards against
    assert _exit_under_sigterms(ignore=True) == 75
