"""Compressed STFT helpers: shapes, compression, and perfect reconstruction."""

import math

import pytest
import torch

from training.stft import STFTSpec, mag_pha_istft, mag_pha_stft


@pytest.mark.parametrize(
    "spec,n,frames", [(STFTSpec(400, 100, 400), 32000, 321), (STFTSpec(510, 120, 510), 30600, 256)]
)
def test_shapes(spec, n, frames):
    wav = torch.randn(2, n)
    mag, pha, com = mag_pha_stft(wav, spec)
    assert mag.shape == pha.shape == (2, spec.n_freq, frames)
    assert com.shape == (2, spec.n_freq, frames, 2)
    assert spec.n_frames(n) == frames


def test_compression_and_phase():
    spec = STFTSpec(400, 100, 400)
    t = torch.arange(16000) / 16000
    wav = torch.sin(2 * math.pi * 1000 * t)[None]
    mag, pha, com = mag_pha_stft(wav, spec)
    x = torch.stft(
        wav, 400, 100, 400, torch.hann_window(400), center=True, pad_mode="reflect", return_complex=True
    )
    torch.testing.assert_close(mag, (x.abs() ** 2 + 1e-9).sqrt() ** 0.3, rtol=1e-4, atol=1e-5)
    k = 25  # the 1 kHz bin
    torch.testing.assert_close(pha[0, k, 10:-10], x.angle()[0, k, 10:-10], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(com[..., 0], mag * torch.cos(pha))


@pytest.mark.parametrize("spec", [STFTSpec(400, 100, 400), STFTSpec(510, 120, 510)])
def test_round_trip(spec):
    torch.manual_seed(0)
    n = spec.hop * 50
    wav = torch.randn(3, n)
    mag, pha, _ = mag_pha_stft(wav, spec)
    back = mag_pha_istft(mag, pha, spec, length=n)
    torch.testing.assert_close(back, wav, rtol=1e-3, atol=1e-3)


def test_invalid_spec():
    with pytest.raises(ValueError, match="STFTSpec"):
        STFTSpec(400, 0, 400)
