"""The LR schedule: ExponentialLR(0.99) stepped once per epoch (training clips // global batch),
checked against the authors' formula lr * 0.99 ** floor(step / epoch_steps) -- in a simulated loop
and in the real Trainer on the demo corpus (24 training clips)."""

from __future__ import annotations

import math

import pytest
import torch

from training.config import ConfigError, load_run_config
from training.schedule import epoch_boundary, lr_at, resolve_epoch_steps, train_clips


def test_lr_at_is_the_authors_formula():
    assert lr_at(0, 5e-4, 0.99, 1355) == 5e-4
    assert lr_at(1354, 5e-4, 0.99, 1355) == 5e-4
    assert lr_at(1355, 5e-4, 0.99, 1355) == pytest.approx(5e-4 * 0.99)
    assert lr_at(550_000, 5e-4, 0.99, 1355) == pytest.approx(5e-4 * 0.99 ** 405)
    # the DNS numbers: 950k steps at ~135,000 steps per epoch -> factor 0.99**7 ~ 0.93
    assert lr_at(950_000, 1.0, 0.99, 135_000) == pytest.approx(0.932065, rel=1e-5)


def test_exponential_lr_stepped_at_epoch_boundaries_matches_formula():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=5e-4)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)
    epoch_steps = 7
    for step in range(1, 60):  # the Trainer's order: optimizer step, count it, then maybe sched.step()
        opt.step()
        if epoch_boundary(step, epoch_steps):
            sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(step, 5e-4, 0.99, epoch_steps), rel=1e-12), step
    assert not epoch_boundary(0, 7) and epoch_boundary(14, 7) and not epoch_boundary(15, 7)


def test_resolve_epoch_steps_from_the_manifest(demo_corpus):
    clips = train_clips(demo_corpus / "train")
    assert clips == 24 and train_clips(demo_corpus) == 24  # corpus folder or split folder
    assert resolve_epoch_steps(None, clips, 2) == 12
    assert resolve_epoch_steps("auto", clips, 5) == 4  # floor: partial last batch is not an epoch step
    assert resolve_epoch_steps(None, clips, 64) == 1
    assert resolve_epoch_steps(1000, None, 8) == 1000  # explicit wins, no manifest needed
    with pytest.raises(ConfigError, match="optim.epoch_steps"):
        resolve_epoch_steps("sometimes", clips, 2)
    with pytest.raises(ConfigError, match="no clips"):
        resolve_epoch_steps(None, 0, 2)


def test_config_accepts_null_auto_or_integer():
    assert load_run_config().optim.epoch_steps is None  # the default derives the authors' epoch
    assert load_run_config(None, ["optim.epoch_steps=auto"]).optim.epoch_steps == "auto"
    assert load_run_config(None, ["optim.epoch_steps=1355"]).optim.epoch_steps == 1355
    for bad in ("optim.epoch_steps=0", "optim.epoch_steps=often"):
        with pytest.raises(ConfigError, match="epoch_steps"):
            load_run_config(None, [bad])


def test_trainer_decays_once_per_derived_epoch(demo_corpus, tmp_path):
    """The real Trainer, 13 steps of a tiny model at global batch 2 on 24 clips: one decay at step 12."""
    import torch

    from training import distributed
    from training.build import build_trainer

    cfg = load_run_config(None, [
        "model.name=rwsa-xs", "model.options={hidden: 4, num_blocks: 1, level_heads: 2, middle_heads: 4}",
        f"data.train={demo_corpus / 'train'}", "data.valid=null", "data.segment_samples=1800", "data.batch_size=2",
        "trainer.max_steps=13", "trainer.ckpt_every=100", "trainer.log_every=100", "trainer.pesq_workers=0",
        "trainer.num_threads=1", "loss.discriminator=false", "mlflow.enabled=false",
    ])
    tr = build_trainer(cfg, tmp_path / "run", distributed.DistEnv(), torch.device("cpu"))
    try:
        assert tr.parts.epoch_steps == 12
        tr.open_tracker()
        seen: dict[int, float] = {}

        class Recording:  # the real stream; records the LR in force for the step about to run
            def __init__(self, inner):
                self.inner = inner

            def __next__(self):
                seen[tr.step + 1] = tr.parts.opt_g.param_groups[0]["lr"]
                return next(self.inner)

            def __getattr__(self, name):
                return getattr(self.inner, name)

        tr.parts.stream = Recording(tr.parts.stream)
        assert tr.fit() == 0
        # the LR in force while taking step s is the one after s-1 steps
        assert seen == {s: pytest.approx(lr_at(s - 1, 5e-4, 0.99, 12), rel=1e-12) for s in range(1, 14)}
        assert tr.parts.opt_g.param_groups[0]["lr"] == pytest.approx(lr_at(13, 5e-4, 0.99, 12), rel=1e-12)
        assert math.isclose(seen[13], 5e-4 * 0.99)
    finally:
        tr.close()
