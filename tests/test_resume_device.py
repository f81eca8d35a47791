"""Resume on any device: rank files load to CPU, RNG states go back onto the right generators.

Before the fix the Trainer loaded its checkpoint with `map_location=self.device`; on a GPU the RNG
states then arrived on `cuda:N` and `set_rng_state` failed, so every requeue exited 1. Without a GPU
the same crash is reproduced with the `meta` device: a Trainer whose device is not the CPU resumes
a checkpoint written by the real trainer (2 steps). The CUDA generators themselves cannot run
here: `torch.cuda` is replaced by a recorder in one test (said there).
"""

from __future__ import annotations

import torch

from training import distributed, seeding
from training.build import build_trainer
from training.checkpoint import load_file
from training.config import load_run_config
from training.trainer import Trainer

TINY_MODEL = {"name": "rwsa-xs", "options": {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}}


def _cfg(corpus, steps: int):
    return load_run_config(base={
        "name": "resume-device", "model": TINY_MODEL,
        "data": {"train": str(corpus / "train"), "valid": None, "segment_samples": 1800, "batch_size": 2},
        "trainer": {"max_steps": steps, "ckpt_every": 2, "log_every": 2, "pesq_workers": 0, "num_threads": 1},
        "mlflow": {"enabled": False},
    })


def _trainer(corpus, wd, steps: int) -> Trainer:
    t = build_trainer(_cfg(corpus, steps), wd, distributed.DistEnv(), torch.device("cpu"))
    t.resume()
    t.open_tracker()
    return t


def test_resume_with_a_non_cpu_device_restores_weights_rng_and_loader(demo_corpus, tmp_path):
    wd = tmp_path / "run"
    first = _trainer(demo_corpus, wd, 2)
    try:
        assert first.fit() == 0
    finally:
        first.close()
    folder = wd / "checkpoints" / "step-000002"
    saved_rank = load_file(folder / "rank-0.pt")

    second = build_trainer(_cfg(demo_corpus, 4), wd, distributed.DistEnv(), torch.device("cpu"))
    try:
        torch.manual_seed(12345)  # something else than the saved stream
        second.device = torch.device("meta")  # stands for cuda:N: any map_location but the CPU crashed
        assert second.resume() == 2
        assert torch.equal(torch.get_rng_state(), saved_rank["rng"]["torch"])
        state = load_file(folder / "state.pt")
        for k, v in second.parts.generator.state_dict().items():
            assert v.device.type == "cpu" and torch.equal(v, state["generator"][k]), k
        # the optimizer moments follow the parameters' device, not the file's
        for st in second.parts.opt_g.state.values():
            assert st["exp_avg"].device.type == "cpu"
        assert second.parts.stream.state_dict() == saved_rank["loader"]
    finally:
        second.close()


def test_rng_states_from_any_device_restore_onto_each_cuda_generator(monkeypatch):
    """The CUDA generators are replaced by a recorder (no GPU here): each captured state reaches
    `torch.cuda.set_rng_state` as a CPU ByteTensor for its own device index, even when the file
    was loaded elsewhere (here: states stored as int64 copies, as a foreign map_location could)."""
    state = seeding.rng_state()
    cuda_states = [torch.full((16,), i + 1, dtype=torch.uint8) for i in range(2)]
    state["cuda"] = [s.to(torch.int64) for s in cuda_states]
    state["torch"] = state["torch"].to(torch.int64)
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": calls.append((s, device)))
    before = torch.get_rng_state()
    seeding.set_rng_state(state)
    assert torch.equal(torch.get_rng_state(), before)
    assert [d for _, d in calls] == [0, 1]
    for (s, _), want in zip(calls, cuda_states):
        assert s.device.type == "cpu" and s.dtype == torch.uint8 and torch.equal(s, want)

    # fewer devices than states: the first ones are restored, no crash
    calls.clear()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    seeding.set_rng_state(state)
    assert [d for _, d in calls] == [0]
    # no CUDA at all: skipped
    calls.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seeding.set_rng_state(state)
    assert calls == []
