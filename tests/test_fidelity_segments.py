"""The RWSA evaluation protocol (whole-utterance RMS normalisation, non-overlapping segments, the last
aligned to the end) against a direct loop over the segments, and the mode choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.evaluation.segment_eval import SegmentEnhancer, enhance_segments, resolve_mode, segment_starts
from training.models import build_model
from training.stft import mag_pha_istft, mag_pha_stft

TINY = {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}
SEG = 1800  # 16 frames of hop 120: a valid RWSA length (the real one is 30,600 = 256 frames)


def test_segment_starts():
    assert segment_starts(30_600, 30_600) == [0]
    assert segment_starts(100, 30_600) == [0]
    assert segment_starts(61_200, 30_600) == [0, 30_600]
    assert segment_starts(70_000, 30_600) == [0, 30_600, 39_400]  # last aligned to the end


def test_matches_a_direct_loop_over_segments():
    torch.manual_seed(0)
    G = build_model("rwsa-xs", seed=0, **TINY).eval()
    wav = np.random.default_rng(0).standard_normal(4 * SEG + 700).astype(np.float32) * 0.3
    wav[: SEG] *= 5.0  # a loud first segment: per-segment normalisation would differ
    got = enhance_segments(G, wav, SEG, batch=3)
    # the direct loop: normalise the whole utterance, each segment alone through the model
    # (the same float32 formula as the contract: a random-init model's phase is chaotic in its input)
    norm = float(torch.rsqrt(torch.from_numpy(wav).pow(2).mean()))
    x = torch.from_numpy(wav) * norm
    n = len(wav)
    starts = list(range(0, n - SEG, SEG)) + [n - SEG]
    expected = np.zeros(n, np.float32)
    covered = 0
    with torch.no_grad():
        for s in starts:
            mag, pha, _ = mag_pha_stft(x[None, s : s + SEG], G.stft)
            mag, pha, _ = G(mag, pha)
            y = mag_pha_istft(mag, pha, G.stft, length=SEG)[0].numpy()
            expected[covered : s + SEG] = y[covered - s :]
            covered = s + SEG
    expected /= np.float32(norm)
    assert got.shape == wav.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    # not what per-segment normalisation (G.enhance on each segment) gives
    per_seg = np.concatenate([G.enhance(torch.from_numpy(wav[s : s + SEG])).detach().numpy() for s in starts[:-1]])
    assert not np.allclose(per_seg, got[: len(per_seg)], atol=1e-3 * np.abs(got).max())


class _Identity(torch.nn.Module):
    """Returns its input spectrum: the protocol must then give back the input (STFT round trip)."""

    def __init__(self, stft):
        super().__init__()
        self.stft, self.w = stft, torch.nn.Parameter(torch.zeros(1))

    def forward(self, mag, pha):
        return mag, pha, None


def test_identity_model_reconstructs_input_short_and_long():
    G = build_model("rwsa-xs", seed=0, **TINY)
    ident = _Identity(G.stft)
    for n in (500, SEG, 3 * SEG + 1):
        wav = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
        out = enhance_segments(ident, wav, SEG)
        np.testing.assert_allclose(out[50:-50], wav[50:-50], atol=1e-4)  # edges: STFT border frames
    enh = SegmentEnhancer(ident, segment=SEG)
    assert enh.enhance(wav).shape == wav.shape and enh.seconds_audio == pytest.approx(len(wav) / 16000)


def test_resolve_mode():
    assert resolve_mode("auto", "rwsa-xs", validation=True) == "rwsa_segments"
    assert resolve_mode("auto", "rwsa-m", validation=False) == "rwsa_segments"
    assert resolve_mode("auto", "mambattention", validation=True) == "whole"
    assert resolve_mode("auto", "mambattention", validation=False) == "chunked"
    assert resolve_mode("whole", "rwsa-xs", validation=True) == "whole"
    with pytest.raises(ValueError, match="eval.mode"):
        resolve_mode("bogus", "rwsa-xs", validation=True)
