"""The learning-rate schedule as the authors run it: ExponentialLR(gamma) stepped once per epoch.

An epoch is one pass over the training clips: ``epoch_steps = clips // global_batch`` (training
clips counted in the split's manifest, global batch = world_size x per-rank batch = the config's
``data.batch_size``), or the config's explicit ``optim.epoch_steps``. After ``step`` optimizer
steps the learning rate is ``lr * gamma ** floor(step / epoch_steps)`` (`lr_at`).

    n = resolve_epoch_steps(cfg.optim.epoch_steps, train_clips(cfg.data.train), cfg.data.batch_size)
    ...after each optimizer step:  if epoch_boundary(step, n): sched.step()
"""

from __future__ import annotations

import math
from pathlib import Path

from common.config import ConfigError

AUTO = "auto"


def lr_at(step: int, lr: float, gamma: float, epoch_steps: int) -> float:
    """The authors' learning rate after ``step`` optimizer steps: lr * gamma ** floor(step / epoch_steps)."""
    return lr * gamma ** math.floor(step / epoch_steps)


def epoch_boundary(step: int, epoch_steps: int) -> bool:
    """True when optimizer step number ``step`` (1-based count of steps done) completes an epoch."""
    return step > 0 and step % epoch_steps == 0


def train_clips(train: str | Path) -> int:
    """Training clips of a shard source (a split folder, a corpus folder holding ``train/``, a pattern or
    URL: `sharding.shards`), from its manifest."""
    from sharding.shards import open_source

    return open_source(train, "train").num_samples


def resolve_epoch_steps(setting: int | str | None, num_clips: int | None, global_batch: int) -> int:
    """Steps per epoch: ``setting`` when it is an integer, else (None / "auto") the clips of the
    training split divided by the global batch (at least 1). ConfigError when it cannot be derived."""
    if isinstance(setting, int) and not isinstance(setting, bool):
        if setting < 1:
            raise ConfigError(f"optim.epoch_steps must be >= 1, got {setting}", "optim.epoch_steps")
        return setting
    if setting not in (None, AUTO):
        raise ConfigError(f"optim.epoch_steps: expected an integer, null or 'auto', got {setting!r}",
                          "optim.epoch_steps")
    if not num_clips or num_clips < 1:
        raise ConfigError("optim.epoch_steps: cannot derive it, the training split has no clips", "optim.epoch_steps")
    if global_batch < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {global_batch}", "data.batch_size")
    return max(1, num_clips // global_batch)
