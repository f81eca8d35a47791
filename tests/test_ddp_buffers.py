"""BatchNorm running statistics stay equal across 2 gloo ranks (MP-SENet's Conformer).

Gradients are averaged explicitly (no DDP wrapper), so before this each rank kept its own running
mean/var, drifting with its own data. Two real gloo processes on CPU: the helper averages exactly,
and a real `train_step` of a small MP-SENet on different data per rank leaves equal buffers.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp

from training import distributed


def _bn_buffers(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items() if "running_" in k}


def _work(rank: int, out: str) -> None:
    from training.loop import StepContext, train_step
    from training.losses import LossWeights
    from training.models import build_model
    from training.pesq_targets import PesqPool

    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    bn = torch.nn.BatchNorm1d(3)
    bn(torch.randn(8, 3, generator=g) * (rank + 1) + rank)
    local = _bn_buffers(bn)
    distributed.average_batchnorm_stats(bn)

    G = build_model("mpsenet", seed=0, channels=16, num_blocks=1)
    D = build_model("metric-discriminator", seed=1)
    opt = lambda m: torch.optim.SGD(m.parameters(), lr=1e-3)  # noqa: E731
    ctx = StepContext(G, D, opt(G), opt(D), G.stft, LossWeights(), torch.device("cpu"), 2, PesqPool(0))
    clean = 0.1 * torch.randn(1, 400 * 15, generator=g)
    train_step(ctx, {"clean": clean, "noisy": clean + 0.05 * torch.randn(clean.shape, generator=g)})
    torch.save({"local": local, "synced": _bn_buffers(bn), "G": _bn_buffers(G)}, Path(out) / f"r{rank}.pt")


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    distributed.init(distributed.DistEnv(rank=rank, world_size=2, master_port=port), torch.device("cpu"))
    ok = False
    try:
        _work(rank, out)  # its models and handles are gone when it returns
        ok = True
    finally:
        distributed.leave(ok)


def test_batchnorm_running_stats_equal_across_two_gloo_ranks(tmp_path):
    from training.run import free_port

    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt") for r in (0, 1))
    for k in r0["local"]:
        assert not torch.allclose(r0["local"][k], r1["local"][k])
        torch.testing.assert_close(r0["synced"][k], (r0["local"][k] + r1["local"][k]) / 2)
        assert torch.equal(r0["synced"][k], r1["synced"][k])
    assert r0["G"]  # MP-SENet has BatchNorm buffers
    for k in r0["G"]:
        assert torch.equal(r0["G"][k], r1["G"][k]), k
