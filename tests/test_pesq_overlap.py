"""The discriminator's PESQ targets are off the step's critical path (training/loop.py).

With `pesq_overlap` (default) the targets are awaited only after the generator's backward and
optimizer step; with the authors' order they are awaited before it. Both orders train (finite
losses, both optimizers step) on the real tiny model, and the real PesqPool scores the batch.
"""

from __future__ import annotations

import pytest
import torch

from training.loop import StepContext, train_step
from training.losses import LossWeights
from training.models import build_model
from training.pesq_targets import PesqPool

TINY = {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}


class RecordingPool:
    """The real PesqPool (in-process), recording when its job is submitted and awaited."""

    def __init__(self, events: list):
        self.pool, self.events = PesqPool(0), events

    def submit(self, clean, est):
        self.events.append("pesq_submit")
        job = self.pool.submit(clean, est)
        events = self.events

        class Job:
            def result(self):
                events.append("pesq_wait")
                return job.result()

        return Job()


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core host torch's spinning threads are many times slower
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("overlap", [True, False])
def test_pesq_targets_awaited_after_generator_backward_only_with_overlap(overlap, one_thread):
    torch.manual_seed(0)
    events: list[str] = []
    G = build_model("rwsa-xs", seed=0, **TINY)
    D = build_model("metric-discriminator", seed=1)
    opt = lambda m: torch.optim.AdamW(m.parameters(), lr=5e-4)  # noqa: E731
    opt_g = opt(G)
    opt_g.register_step_post_hook(lambda *a: events.append("g_step"))
    ctx = StepContext(G, D, opt_g, opt(D), G.stft, LossWeights(), torch.device("cpu"), 1,
                      RecordingPool(events), pesq_overlap=overlap)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(1800) / 16000
    clean = (0.3 * torch.sin(2 * torch.pi * 220 * t) * (1 + torch.sin(2 * torch.pi * 3 * t)))[None].repeat(2, 1)
    batch = {"clean": clean, "noisy": clean + 0.05 * torch.randn(2, 1800, generator=g)}
    d0 = [p.detach().clone() for p in D.parameters()]
    out = train_step(ctx, batch)
    order = [e for e in events if e in ("pesq_submit", "pesq_wait", "g_step")]
    if overlap:
        assert order == ["pesq_submit", "g_step", "pesq_wait"]
    else:
        assert order == ["pesq_submit", "pesq_wait", "g_step"]
    assert all(torch.isfinite(torch.tensor(out[k])) for k in ("loss_g", "loss_d"))
    assert ctx.counters["nonfinite_skipped"] == 0
    assert any(not torch.equal(a, b) for a, b in zip(d0, D.parameters()))  # D stepped too
