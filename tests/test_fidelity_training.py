"""The authors' training details: input normalised by the noisy RMS of the whole utterance (before
cropping), and the discriminator fed the generator's compressed magnitude itself."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import torch

from sharding.stream import TrainStream
from sharding.tario import write_tar
from training.loop import StepContext, train_step
from training.losses import LossWeights
from training.models import build_model
from training.pesq_targets import PesqPool
from training.stft import mag_pha_stft

TINY = {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}


def _flac(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def test_stream_norm_is_the_whole_utterance_noisy_rms(tmp_path):
    rng = np.random.default_rng(0)
    n = 48000  # 3 s: a loud first second, then quiet -- crop RMS and whole RMS differ a lot
    clean = (0.05 * rng.standard_normal(n)).astype(np.float32)
    noisy = clean + np.concatenate([0.5 * rng.standard_normal(16000), 0.01 * rng.standard_normal(n - 16000)])
    noisy = noisy.astype(np.float32)
    d = tmp_path / "train"
    d.mkdir()
    write_tar(d / "shard-000000.tar", [{"__key__": "u0", "noisy.flac": _flac(noisy), "clean.flac": _flac(clean),
                                        "json": b"{}"}])
    whole, _ = sf.read(io.BytesIO(_flac(noisy)), dtype="float32")  # as stored (16-bit)
    expected = 1.0 / np.sqrt(np.mean(whole.astype(np.float64) ** 2))
    s = TrainStream(d, segment_samples=8000, batch_size=4, seed=0, rank=0, world_size=1, prefetch_factor=0)
    crop_norms = []
    for _ in range(3):
        b = next(s)
        assert b["norm"].shape == (4, 1) and b["norm"].dtype == torch.float32
        np.testing.assert_allclose(b["norm"].numpy(), expected, rtol=1e-6)
        crop_norms += (1 / b["noisy"].double().pow(2).mean(-1).sqrt()).tolist()
    assert max(abs(c / expected - 1) for c in crop_norms) > 0.5  # the crop's own RMS would differ


def _ctx(**weights):
    torch.manual_seed(0)
    G = build_model("rwsa-xs", seed=0, **TINY)
    D = build_model("metric-discriminator", seed=1)
    opt = lambda m: torch.optim.AdamW(m.parameters(), lr=5e-4, betas=(0.8, 0.99), weight_decay=0.01)  # noqa: E731
    return StepContext(G, D, opt(G), opt(D), G.stft, LossWeights(**weights), torch.device("cpu"), 1, PesqPool(0))


def _batch():
    g = torch.Generator().manual_seed(0)
    clean = 0.1 * torch.randn(2, 1800, generator=g)
    return {"clean": clean, "noisy": clean + 0.05 * torch.randn(2, 1800, generator=g),
            "norm": torch.tensor([[3.0], [0.5]])}


def test_train_step_scales_by_batch_norm_and_feeds_d_the_generator_magnitude():
    ctx = _ctx()
    batch = _batch()
    g_in, g_out, d_in = [], [], []

    def on_g(m, args, out):
        g_in.append(args[0].detach())
        g_out.append(out[0].detach())

    ctx.generator.register_forward_hook(on_g)
    ctx.discriminator.register_forward_hook(lambda m, a, out: d_in.append((a[0].detach(), a[1].detach())) and None)
    train_step(ctx, batch)
    expected_mag, _, _ = mag_pha_stft(batch["noisy"] * batch["norm"], ctx.spec)
    assert torch.allclose(g_in[0], expected_mag, atol=1e-6)  # scaled by the given norm, not the crop RMS
    clean_mag, _, _ = mag_pha_stft(batch["clean"] * batch["norm"], ctx.spec)
    # D calls (order set by trainer.pesq_overlap): (clean, clean), (clean, mag.detach()) for D's update and
    # (clean, mag) for G's metric loss: D sees the generator's compressed magnitude itself, twice
    assert len(d_in) == 3 and all(torch.allclose(a, clean_mag, atol=1e-6) for a, _ in d_in)
    assert sum(torch.allclose(b, clean_mag, atol=1e-6) for _, b in d_in) == 1
    assert sum(torch.equal(b, g_out[0]) for _, b in d_in) == 2


def test_metric_loss_gradient_stays_out_of_the_phase_path():
    ctx = _ctx(magnitude=0.0, complex=0.0, time=0.0, phase=0.0, consistency=0.0, metric=1.0)
    train_step(ctx, _batch())
    pha = [p.grad for p in ctx.generator.phase_decoder.parameters()]
    mag = [p.grad for p in ctx.generator.mask_decoder.parameters()]
    assert all(g is None or not g.any() for g in pha)
    assert any(g is not None and g.abs().sum() > 0 for g in mag)


def test_mpsenet_official_discriminator_sees_the_restft_magnitude():
    """The official MP-SENet train.py feeds D |STFT(iSTFT(G))|^0.3 of the enhanced waveform (for D's update
    and G's metric loss), not the generator's magnitude; the corrected `mpsenet` keeps the generator's."""
    from training.stft import mag_pha_istft

    batch = _batch()
    for name, restft in (("mpsenet-official", True), ("mpsenet", False)):
        torch.manual_seed(0)
        G = build_model(name, seed=0, channels=8, num_blocks=1, n_head=2)
        D = build_model("metric-discriminator", seed=1)
        opt = lambda m: torch.optim.AdamW(m.parameters(), lr=5e-4)  # noqa: E731
        ctx = StepContext(G, D, opt(G), opt(D), G.stft, LossWeights(), torch.device("cpu"), 1, PesqPool(0),
                          pesq_overlap=False)
        g_out, d_in = [], []
        G.register_forward_hook(lambda m, a, out, g_out=g_out: g_out.append((out[0].detach(), out[1].detach())) and None)
        D.register_forward_hook(lambda m, a, out, d_in=d_in: d_in.append(a[1].detach()) and None)
        train_step(ctx, batch)
        mag, pha = g_out[0]
        restft_mag, _, _ = mag_pha_stft(mag_pha_istft(mag, pha, G.stft, length=1800), G.stft)
        assert (restft_mag - mag).abs().max() > 1e-2  # the two candidates differ: the check can fail
        fake = d_in[1:]  # (clean, clean) first (pesq_overlap=False: D's update), then (clean, est) twice
        assert len(fake) == 2
        want = restft_mag if restft else mag
        assert all(torch.allclose(b, want, atol=1e-5) for b in fake), name
