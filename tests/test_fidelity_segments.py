"""The RWSA evaluation protocol (whole-utterance RMS normalisation, non-overlapping segments, the last
aligned to the end and kept whole, the one before trimmed: the authors' seam) against a direct loop over
the segments and an index map of the authors' rule, and the mode choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.evaluation.protocol import resolve_mode
from training.evaluation.segment_eval import SegmentEnhancer, enhance_segments, segment_plan
from training.models import build_model
from training.stft import inverse_rms, mag_pha_istft, mag_pha_stft

TINY = {"hidden": 4, "num_blocks": 1, "level_heads": 2, "middle_heads": 4}
SEG = 1800  # 16 frames of hop 120: a valid RWSA length (the real one is 30,600 = 256 frames)


def test_segment_plan():
    assert segment_plan(30_600, 30_600) == [(0, 30_600)]
    assert segment_plan(100, 30_600) == [(0, 100)]
    assert segment_plan(61_200, 30_600) == [(0, 30_600), (30_600, 30_600)]
    # 70,000 = 2 x 30,600 + 8,800: the end-aligned segment is kept whole, the one before keeps 8,800
    assert segment_plan(70_000, 30_600) == [(0, 30_600), (30_600, 8_800), (39_400, 30_600)]
    with pytest.raises(ValueError, match="segment"):
        segment_plan(10, 0)


def authors_source_starts(n: int, seg: int) -> np.ndarray:
    """For each output sample, the input start of the segment that produced it, by the authors' rule
    (RWSA-MambaUNet inference.py, process_audio_segment, written out here): n // seg plain segments, and
    when n % seg = r > 0 one more taken from the last seg samples; the plain segment before it is cut to
    its first r output samples and the end-aligned one is appended whole."""
    if n <= seg:
        return np.zeros(n, dtype=np.int64)
    k, r = divmod(n, seg)
    pieces = [(i * seg, seg) for i in range(k)]
    if r:
        pieces[-1] = ((k - 1) * seg, r)
        pieces.append((n - seg, seg))
    return np.concatenate([np.full(length, start) for start, length in pieces])


class _Unused(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


@pytest.mark.parametrize("n", [25, 30, 7, 41, 59])
def test_index_map_follows_the_authors_seam(n):
    """Feed the sample indices through a "model" that returns each segment minus its first input sample:
    output sample j is then j minus the start of the segment that produced it, which must be the authors'."""
    seg = 10
    x = np.arange(1, n + 1, dtype=np.float32)
    out = enhance_segments(_Unused(), x, seg, batch=2, forward=lambda segs: segs - segs[:, :1])
    source = np.arange(n) - np.rint(out).astype(np.int64)
    np.testing.assert_array_equal(source, authors_source_starts(n, seg) if n > seg else np.zeros(n, np.int64))
    if n == 25:  # the map the closing note shows: segments at 0, 10 and 15; 10 keeps 5 samples, 15 all 10
        assert source.tolist() == [0] * 10 + [10] * 5 + [15] * 10


def test_matches_a_direct_loop_over_segments():
    torch.manual_seed(0)
    G = build_model("rwsa-xs", seed=0, **TINY).eval()
    wav = np.random.default_rng(0).standard_normal(4 * SEG + 700).astype(np.float32) * 0.3
    wav[: SEG] *= 5.0  # a loud first segment: per-segment normalisation would differ
    got = enhance_segments(G, wav, SEG, batch=3)
    # the direct loop: normalise the whole utterance, each segment alone through the model
    # (the contract's 1/RMS, `inverse_rms`: one ulp more or less flips phases of the first STFT frame)
    norm = float(inverse_rms(torch.from_numpy(wav)))
    x = torch.from_numpy(wav) * norm
    n = len(wav)
    starts = list(range(0, n - SEG, SEG)) + [n - SEG]
    expected = np.zeros(n, np.float32)
    with torch.no_grad():
        for s in starts:  # in order: the end-aligned last segment overwrites the overlap (the authors' seam)
            mag, pha, _ = mag_pha_stft(x[None, s : s + SEG], G.stft)
            mag, pha, _ = G(mag, pha)
            expected[s : s + SEG] = mag_pha_istft(mag, pha, G.stft, length=SEG)[0].numpy()
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
