"""Preemption: signals only set a flag; ranks agree at a step boundary, checkpoint, exit 75.

SIGUSR1 / SIGUSR2 / SIGTERM (SLURM's `--signal`, `scancel`, torchrun's shutdown, a requeue) call a
handler that does nothing but record the signal: checkpointing inside a handler can deadlock on
collectives. The loop asks `Preemption.should_stop()` once per step; it all-reduces MAX of the
local flag, so every rank saves at the same step and the run exits with `EXIT_PREEMPTED`.
Under SLURM the job's end time is read once (`distributed.slurm_end_time`) and the run stops the
same way when less than `margin_s` seconds remain.
"""

from __future__ import annotations

import logging
import signal
import time

import torch

from common.rundir import EXIT_PREEMPTED  # noqa: F401 (re-exported)
from common.signals import STOP_SIGNALS
from training import distributed

log = logging.getLogger(__name__)


class Preemption:
    """Signal flag + SLURM deadline, agreed across ranks at step boundaries."""

    def __init__(self, margin_s: float = 300.0, end_time: float | None = None):
        self.margin_s = float(margin_s)
        self.end_time = end_time
        self.signum: int | None = None
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> Preemption:
        for s in STOP_SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals cannot be handled here
                log.warning("preemption signals not installed (not in the main thread)")
                break
        return self

    def uninstall(self) -> None:
        """Restore the previous handlers; after an agreed stop (``reason`` set) keep a handler that drops
        the stop signals instead: the process is ending preempted, and a late stop signal (the relay
        reaching a rank after its peers agreed, a second ``scancel``) must not kill its teardown (exit
        -15 instead of 75, a healthy rank counted as failed). A handler, not SIG_IGN: an ignored signal
        would stay ignored in the programs this process starts."""
        for s, prev in self._previous.items():
            signal.signal(s, _late_stop_signal if self.reason is not None else prev)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def local_request(self) -> str | None:
        """Why this rank wants to stop now (a signal, the time limit) or None."""
        if self.signum is not None:
            return f"signal {signal.Signals(self.signum).name}"
        if self.end_time is not None and time.time() > self.end_time - self.margin_s:
            return f"time limit (< {self.margin_s:.0f} s left)"
        return None

    def should_stop(self, device: torch.device | str = "cpu") -> bool:
        """Collective: True on every rank when any rank was signalled or is out of time."""
        local = self.local_request()
        stop = distributed.any_rank(local is not None, torch.device(device))
        if stop and self.reason is None:
            self.reason = local or "another rank asked to stop"
        return stop


def _late_stop_signal(signum, frame) -> None:
    """A stop signal after the stop was agreed: nothing to do, the process is already stopping."""


def from_environment(margin_s: float) -> Preemption:
    """A Preemption with the SLURM job's end time (None outside SLURM)."""
    return Preemption(margin_s=margin_s, end_time=distributed.slurm_end_time())
