"""Validation: one pass over the validation utterances (`validate`) and the run's periodic validation
with its best step (`Validator`).

`validate` enhances each utterance with the run's protocol (`training.evaluation.protocol.enhancer_for`,
the same as the end-of-job evaluation and `orchestrate evaluate`/`enhance`) and averages PESQ/ESTOI/SI-SDR/SSNR over every rank's share. `Validator` runs it every
`trainer.val_every` steps and at the last one, logs `val/<metric>` (and once per session the scores of
the unprocessed input, `val/noisy_<metric>`, at step 0), and keeps the best PESQ and its step: a part
of the checkpoint (`best_pesq`, `best_step`); the caller writes `best/` when it improves.

Rehearsal (`trainer.rehearse_step_s` > 0, benchmarks/rehearse.py): the same cadence, names and points,
but the values are synthetic (`synthetic_scores`) and neither the model nor the metrics run.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from training import distributed

VAL_METRICS = ("pesq", "estoi", "si_sdr", "ssnr")
NUM_CLIPS = 3  # validation clips kept for the artifacts (rank 0)


class Validator:
    """Periodic validation of one rank (see module docstring); built by `training.build`."""

    def __init__(self, cfg, *, device: torch.device, rank: int, world_size: int, enhancer):
        self.valid, self.limit = cfg.data.valid, cfg.data.valid_limit
        self.every, self.max_steps, self.num_workers = cfg.trainer.val_every, cfg.trainer.max_steps, cfg.trainer.pesq_workers
        self.device, self.rank, self.world_size, self.enhancer = device, rank, world_size, enhancer
        self.rehearse = cfg.trainer.rehearse_step_s > 0
        self.best_pesq, self.best_step = -math.inf, -1
        self.last: dict[str, float] = {}  # this session's newest scores
        self.noisy: dict[str, float] | None = None  # the input's scores, once per session
        self.clips: list = []

    def state_dict(self) -> dict:
        return {"best_pesq": self.best_pesq, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best_pesq, self.best_step = float(state["best_pesq"]), int(state["best_step"])

    def due(self, step: int) -> bool:
        return bool(self.valid) and ((bool(self.every) and step % self.every == 0) or step == self.max_steps)

    def run(self, G: torch.nn.Module, step: int, tracker) -> tuple[dict[str, float], bool]:
        """Collective: validate `G` at `step`, log to `tracker`; returns (metrics incl. `n`, improved)."""
        from sharding.stream import iter_utterances

        if self.rehearse:
            val, clips = synthetic_scores(step, self.max_steps, with_noisy=self.noisy is None), []
        else:
            utts = iter_utterances(self.valid, limit=self.limit, split="valid")
            val, clips = validate(G, utts, device=self.device, rank=self.rank, world_size=self.world_size,
                                  num_workers=self.num_workers, keep_clips=NUM_CLIPS if self.rank == 0 else 0,
                                  with_noisy=self.noisy is None, enhancer=self.enhancer)
        if self.noisy is None:
            self.noisy = {k: val.pop(k) for k in list(val) if k.startswith("noisy_")}
            tracker.log({f"val/{k}": v for k, v in self.noisy.items()}, 0)
        self.clips, self.last = clips, val
        improved = math.isfinite(val["pesq"]) and val["pesq"] > self.best_pesq
        if improved:
            self.best_pesq, self.best_step = val["pesq"], step
        tracker.log(self.logged(val), step)
        return val, improved

    def logged(self, val: dict[str, float]) -> dict[str, float]:
        """`val/<metric>` of a validation and `val/best_pesq` (what is logged, and what `on_validation` gets)."""
        return {f"val/{k}": v for k, v in val.items() if k != "n"} | {"val/best_pesq": self.best_pesq}


def synthetic_scores(step: int, max_steps: int, *, with_noisy: bool) -> dict[str, float]:
    """Rehearsal stand-in for `validate`'s result: deterministic values rising with `step` under the same
    keys (`n` = 0: no utterance was enhanced)."""
    out = {"n": 0.0} | {m: 1.0 + step / max(1, max_steps) for m in VAL_METRICS}
    if with_noisy:
        out |= {f"noisy_{m}": 1.0 for m in VAL_METRICS}
    return out


def validate(
    G: torch.nn.Module,
    utterances,
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    keep_clips: int = 0,
    with_noisy: bool = False,
    enhancer=None,
) -> tuple[dict[str, float], list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]:
    """Mean PESQ/ESTOI/SI-SDR/SSNR over `utterances` ((key, noisy, clean) of all ranks; this rank
    enhances every `world_size`-th) and, with `with_noisy`, of the unprocessed input
    (`noisy_<metric>`); `enhancer`: the run's protocol (`training.evaluation.protocol.enhancer_for`; default
    the model's own `enhance` on the whole utterance). Returns (metrics incl. `n`, up to `keep_clips`
    (key, noisy, clean, enhanced))."""
    from training.evaluation.inference import Enhancer
    from training.evaluation.metrics import evaluate_pairs
    from training.evaluation.protocol import WHOLE_SECONDS

    enhancer = enhancer or Enhancer(G, chunk_seconds=WHOLE_SECONDS, overlap_seconds=0.0, device=device)
    was_training = G.training
    G.eval()
    pairs, noisy_pairs, clips = [], [], []
    try:
        for i, (key, noisy, clean) in enumerate(utterances):
            if i % world_size != rank:
                continue
            enh = enhancer.enhance(noisy)
            pairs.append((key, clean, enh))
            if with_noisy:
                noisy_pairs.append((key, clean, noisy))
            if len(clips) < keep_clips:
                clips.append((key, noisy, clean, enh))
    finally:
        G.train(was_training)
    rows = evaluate_pairs(pairs + noisy_pairs, num_workers=num_workers, metrics=VAL_METRICS, progress=False)
    sums = torch.zeros(2 * len(VAL_METRICS) * 2 + 1, dtype=torch.float64)
    for j, row in enumerate(rows):
        off = 0 if j < len(pairs) else 2 * len(VAL_METRICS)
        for m_i, m in enumerate(VAL_METRICS):
            v = row.get(m, math.nan)
            if isinstance(v, float) and math.isfinite(v):
                sums[off + 2 * m_i] += v
                sums[off + 2 * m_i + 1] += 1
    sums[-1] = len(pairs)
    sums = distributed.all_reduce(sums.to(device)).cpu()
    out = {"n": float(sums[-1])}
    for prefix, off in (("", 0), ("noisy_", 2 * len(VAL_METRICS))):
        if prefix and not with_noisy:
            continue
        for m_i, m in enumerate(VAL_METRICS):
            s, c = float(sums[off + 2 * m_i]), float(sums[off + 2 * m_i + 1])
            out[prefix + m] = s / c if c else math.nan
    return out, clips
