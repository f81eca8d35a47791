"""Model registry: exact parameter counts, shapes, gradients, determinism, enhance()."""

import pytest
import torch

from training.model_names import DISCRIMINATOR_MIN_FRAMES, FRAMING, PARAMS, segment_problem
from training.models import UnknownModelError, build_model, list_models, model_info
from training.models.base import SpectralGenerator
from training.stft import STFTSpec

# The exact counts are stated once, in training/model_names.PARAMS; these tests build every model to
# check them (the paper's rounded counts: tests/test_models_baselines.py, tests/test_fidelity_*).
EXPECTED_PARAMS = PARAMS
GENERATORS = [n for n in EXPECTED_PARAMS if n != "metric-discriminator"]


def _n_params(model):
    return sum(p.numel() for p in model.parameters())  # shared modules once


def test_registry_lists_every_model():
    assert list_models() == list(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_exact_parameter_counts(name):
    model = build_model(name, seed=0)
    assert _n_params(model) == EXPECTED_PARAMS[name]
    assert model_info(name).params == EXPECTED_PARAMS[name]
    if name in GENERATORS:  # the torch-free framing the pre-submit checks use is the built model's
        f = FRAMING[name]
        assert model.stft == model_info(name).stft == STFTSpec(f.n_fft, f.hop, f.win)
        assert model.frame_multiple == f.frame_multiple
        assert segment_problem(name, model.segment_samples, discriminator=True) is None  # the default crop


def test_mpsenet_within_one_percent_of_paper():
    assert abs(_n_params(build_model("mpsenet")) - 2.05e6) / 2.05e6 < 0.01


def test_options_as_keywords():
    assert _n_params(build_model("mambattention", share_tf=False)) == 2_392_913
    assert _n_params(build_model("rwsa-s", share_resolution=False)) == 1_968_296
    m = build_model("mambattention", attn_position="after", order="ft")
    assert all(b.attn_position == "after" and b.order == "ft" for b in m.blocks)
    with pytest.raises(UnknownModelError, match="nope"):
        build_model("nope")
    with pytest.raises(UnknownModelError, match="bad option"):
        build_model("semamba", colour="red")
    with pytest.raises(ValueError, match="order"):
        build_model("mambattention", order="xy")


def test_model_info_stft_and_segment():
    info = model_info("mambattention")
    assert (info.stft.n_fft, info.stft.hop, info.stft.win, info.segment_samples) == (400, 100, 400, 32_000)
    assert info.stft.n_frames(info.segment_samples) == 321
    info = model_info("rwsa-xs")
    assert (info.stft.n_fft, info.stft.hop, info.stft.win, info.segment_samples) == (510, 120, 510, 30_600)
    assert info.stft.n_frames(info.segment_samples) == 256 and info.stft.n_freq == 256


def test_attention_sharing_structure():
    m = build_model("mambattention")
    assert all(b.freq_attention is None and b.attention is not None for b in m.blocks)
    assert all(b.attention is None for b in build_model("semamba").blocks)
    r = build_model("rwsa-s")
    for enc, dec in zip(r.encoder1.blocks, r.decoder1.blocks):
        assert enc.attention is dec.attention and enc.attention.attn.num_heads == 4
    for enc, dec in zip(r.encoder2.blocks, r.decoder2.blocks):
        assert enc.attention is dec.attention
    assert len({id(b.attention) for b in r.middle.blocks}) == 4
    assert all(b.attention.attn.num_heads == 8 for b in r.middle.blocks)
    u = build_model("rwsa-s-unshared")
    assert all(e.attention is not d.attention for e, d in zip(u.encoder1.blocks, u.decoder1.blocks))
    n = build_model("rwsa-s-noattn")
    assert not any(isinstance(x, torch.nn.MultiheadAttention) for x in n.modules())


def _spectra(model, frames, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = model.stft.n_freq
    mag = torch.rand(batch, f, frames, generator=g)
    pha = (torch.rand(batch, f, frames, generator=g) * 2 - 1) * torch.pi
    return mag, pha


def _fwd_bwd(model, frames):
    mag, pha = _spectra(model, frames)
    out_mag, out_pha, com = model(mag, pha)
    assert out_mag.shape == out_pha.shape == mag.shape
    assert com.shape == (*mag.shape, 2)
    assert torch.isfinite(com).all() and (out_mag >= 0).all()
    assert out_pha.abs().max() <= torch.pi + 1e-6
    (out_mag.mean() + out_pha.mean() + com.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


# Every architecture and ablation code path at a short segment (T = 8). The larger RWSA presets
# differ from rwsa-xs only in width/depth; their own short runs are marked slow (~1 min each here).
FAST = [
    ("semamba", {}),
    ("mambattention", {}),
    ("mambattention-attn-after", {}),
    ("mambattention-unshared", {}),
    ("mambattention-ft", {}),
    ("mpsenet", {}),
    ("mpsenet-official", {}),
    ("lstm-senet", {}),
    ("xlstm-senet", {}),
    ("lstm-attention", {}),
    ("xlstm-attention", {}),
    ("rwsa-xs", {}),
    ("rwsa-xs", {"share_resolution": False}),
    ("rwsa-xs", {"attention": False}),
]


@pytest.mark.parametrize("name,options", FAST)
def test_forward_backward_short_segment(name, options):
    torch.manual_seed(0)
    _fwd_bwd(build_model(name, seed=0, **options), frames=8)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rwsa-s", "rwsa-m", "rwsa-s-unshared", "rwsa-s-noattn"])
def test_forward_backward_short_segment_large_rwsa(name):
    _fwd_bwd(build_model(name, seed=0), frames=8)


@pytest.mark.slow
@pytest.mark.parametrize("name", GENERATORS)
def test_forward_backward_training_shape(name):
    model = build_model(name, seed=0)
    _fwd_bwd(model, frames=model.stft.n_frames(model.segment_samples))


def test_rwsa_needs_frame_multiple_of_4():
    model = build_model("rwsa-xs", seed=0)
    with pytest.raises(ValueError, match="multiple of 4"):
        model(*_spectra(model, 6))


def test_fewest_frames_are_the_real_limits():
    """`FRAMING[...].min_frames` and `DISCRIMINATOR_MIN_FRAMES` (training/model_names.py) are where the
    layers stop working: RWSA at 4 frames (T/4 = 1 for the deformable convolutions), the discriminator at 15."""
    rwsa = build_model("rwsa-xs", seed=0, hidden=4, num_blocks=1, level_heads=2, middle_heads=4)
    need = FRAMING["rwsa-xs"].min_frames
    assert need == 8 and rwsa(*_spectra(rwsa, need))[0].shape[2] == need
    with pytest.raises(ValueError, match="H, W >= 2"):
        rwsa(*_spectra(rwsa, need - rwsa.frame_multiple))
    D = build_model("metric-discriminator", seed=0).train()
    for f in (201, 256):
        x = torch.rand(2, f, DISCRIMINATOR_MIN_FRAMES)
        assert D(x, x).shape == (2, 1)
        with pytest.raises(RuntimeError):
            D(x[..., :-1], x[..., :-1])


@pytest.mark.parametrize("name", ["mambattention", "rwsa-xs"])
def test_same_seed_same_init_and_output(name):
    a, b, c = build_model(name, seed=3), build_model(name, seed=3), build_model(name, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    x = _spectra(a, 8, batch=1)
    torch.testing.assert_close(a(*x)[2], b(*x)[2], rtol=0, atol=0)


def test_ablations_change_the_function():
    x = _spectra(build_model("semamba"), 8, batch=1)
    base = build_model("mambattention", seed=1).eval()
    for opts in ({"attn_position": "after"}, {"order": "ft"}):
        other = build_model("mambattention", seed=1, **opts).eval()
        other.load_state_dict(base.state_dict())  # same weights, different wiring
        assert not torch.allclose(base(*x)[0], other(*x)[0])


@pytest.mark.parametrize("name", ["semamba", "rwsa-xs"])
def test_enhance_any_length_and_rms_normalisation(name):
    model = build_model(name, seed=0).eval()
    assert isinstance(model, SpectralGenerator)
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(2, 1234, generator=g) * 0.1
    with torch.no_grad():
        out = model.enhance(wav)
        out1 = model.enhance(wav[0])
        scaled = model.enhance(wav * 4.0)
    assert out.shape == wav.shape and out1.shape == (1234,)
    torch.testing.assert_close(out1, out[0], rtol=1e-4, atol=1e-6)
    # The input is normalised to RMS 1 and the output scaled back: enhance is scale-equivariant.
    # (A power-of-two factor keeps the normalised input bit-identical; other factors can move a
    # phase of +-pi across the branch cut, which the model sees as a different input.)
    torch.testing.assert_close(scaled, out * 4.0, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(model.enhance(torch.zeros(500))).all()


def test_discriminator():
    d = build_model("metric-discriminator", seed=0)
    clean, est = torch.rand(2, 201, 321), torch.rand(2, 201, 321)
    y = d(clean, est)
    assert y.shape == (2, 1) and ((y > 0) & (y < 1)).all()
    y.sum().backward()
    with pytest.raises(ValueError, match="clean_mag"):
        d(clean, est[:, :, :10])


def test_cli_models_json(capsys):
    import json

    from orchestrator.cli import main

    assert main(["models", "--json", "--names", "metric-discriminator,semamba,rwsa-xs"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["metric-discriminator", "semamba", "rwsa-xs"]
    assert [r["params"] for r in rows] == [181_650, 2_258_769, 1_024_360]
    assert [r["gmacs_2s"] for r in rows] == [None, 94.989, 25.237]
    assert [(r["n_fft"], r["hop"], r["frame_multiple"]) for r in rows] == [(None, None, None), (400, 100, 1),
                                                                          (510, 120, 4)]


def test_cli_models_table_and_bad_name(capsys):
    from orchestrator.cli import main

    assert main(["models", "--names", "metric-discriminator"]) == 0
    out = capsys.readouterr().out
    assert "metric-discriminator" in out and "181,650" in out and "GMACs/2s" in out
    assert main(["models", "--names", "semamba,nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["models", "--no-time"]) == 2
    assert "--no-time: only with --measure" in capsys.readouterr().err


def test_cli_models_lists_registry_without_torch():
    """The user path: `orchestrate models` in a fresh process lists every model with its parameters from
    the tables, at once, and never imports torch (-X importtime names every module imported)."""
    import subprocess
    import sys
    import time

    from training.model_names import PARAMS

    code = "import sys; from orchestrator.cli import main; raise SystemExit(main(['models']))"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          timeout=60)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[2:]}
    assert rows == {n: f"{p:,d}" for n, p in PARAMS.items()}
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "training.model_names" in imported  # the listing was read from the tables
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
    assert wall < 10  # < 1 s on an idle 2-core machine; slack for a loaded CI


@pytest.mark.slow
def test_cli_models_measure_equals_table(capsys):
    """`--measure` rebuilds the model and recounts: the same params and G-MACs as the table, and says so."""
    import json

    from orchestrator.cli import main

    assert main(["models", "--measure", "--no-time", "--json", "--names", "rwsa-xs"]) == 0
    out = capsys.readouterr()
    measured = json.loads(out.out)[0]
    assert "measuring 1 model(s)" in out.err
    assert main(["models", "--json", "--names", "rwsa-xs"]) == 0
    table = json.loads(capsys.readouterr().out)[0]
    assert measured["params"] == table["params"] == 1_024_360
    assert measured["gflops"] == pytest.approx(table["gmacs_2s"], abs=5e-4)
    assert (measured["n_fft"], measured["hop"]) == (table["n_fft"], table["hop"])
