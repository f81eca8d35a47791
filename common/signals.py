"""The signals that ask a run to stop at a step boundary, checkpoint and exit 75 (requeue me).

SIGUSR1/SIGUSR2: SLURM's ``--signal`` before the time limit (and a preemption's notice); SIGTERM:
``scancel``, a preemption, torchrun's shutdown, the launchers' Ctrl-C relay. The training process
handles them (`training.preempt`); whatever sits between a scheduler and the training process (the
SLURM task wrapper, local DDP spawning) forwards them; helper processes ignore them. Places that
also treat Ctrl-C write ``(*STOP_SIGNALS, signal.SIGINT)``.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
