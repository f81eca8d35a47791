"""Long-audio chunked enhancement: exact reconstruction, LTI equivalence away from edges, flat memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from training.evaluation.chunking import chunk_weights, crossfade_ramp, enhance_long, plan_chunks

SR = 16000


def signal(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.1


FIR = torch.tensor([0.5, -0.3, 0.2, 0.1, -0.05, 0.02, 0.01], dtype=torch.float32)


def fir(x: torch.Tensor) -> torch.Tensor:
    """Causal 7-tap FIR with zero initial state (an LTI 'model' whose output depends on 6 past samples)."""
    k = FIR.numel()
    y = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (k - 1, 0))[None, None], FIR.flip(0)[None, None])
    return y[0, 0]


@pytest.mark.parametrize("n,chunk,overlap", [(10, 10, 2), (25, 10, 2), (26, 10, 5), (1000, 100, 30),
                                             (1001, 100, 0), (999, 100, 50), (217, 100, 30)])
def test_plan_covers_every_sample_with_weights_summing_to_one(n, chunk, overlap):
    chunks = plan_chunks(n, chunk, overlap)
    total = np.zeros(n)
    for c in chunks:
        assert 0 <= c.start <= c.keep_from < c.end <= n and c.end - c.start == min(chunk, n)
        total[c.start : c.end] += chunk_weights(c)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert chunks[0].start == 0 and chunks[-1].end == n


def test_plan_paper_mode_is_non_overlapping_ten_second_chunks():
    chunks = plan_chunks(29 * SR, 10 * SR, mode="paper")
    assert [(c.start, c.end) for c in chunks] == [(0, 160000), (160000, 320000), (320000, 464000)]
    with pytest.raises(ValueError, match="does not overlap"):
        plan_chunks(100, 10, 2, mode="paper")
    with pytest.raises(ValueError, match="overlap_samples must be in"):
        plan_chunks(100, 10, 6)
    with pytest.raises(ValueError, match="mode"):
        plan_chunks(100, 10, 0, mode="hann")


def test_crossfade_halves_sum_to_one_and_are_smooth():
    up = crossfade_ramp(64)
    np.testing.assert_allclose(up + up[::-1], 1.0, atol=1e-12)  # sin^2 + cos^2
    assert np.all(np.diff(up) > 0) and up[0] < 1e-3 and up[-1] > 1 - 1e-3


@pytest.mark.parametrize("mode,overlap", [("ola", 800), ("ola", 0), ("paper", 0)])
def test_identity_reconstructs_exactly(mode, overlap):
    x = signal(5 * SR + 123)
    y = enhance_long(lambda t: t.clone(), x, chunk_samples=SR, overlap_samples=overlap, mode=mode)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1e-7, rtol=0)


def test_pointwise_function_is_exact_everywhere_and_tensor_in_tensor_out():
    x = torch.from_numpy(signal(3 * SR + 7, seed=1))
    y = enhance_long(lambda t: torch.tanh(5 * t), x, chunk_samples=4000, overlap_samples=1000)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape
    torch.testing.assert_close(y, torch.tanh(5 * x), atol=2e-7, rtol=0)


def test_fir_matches_whole_file_away_from_chunk_starts():
    x = signal(4 * SR + 55, seed=2)
    whole = fir(torch.from_numpy(x)).numpy()
    chunk, overlap, taps = 8000, 1600, FIR.numel()
    y = enhance_long(fir, x, chunk_samples=chunk, overlap_samples=overlap)
    edges = np.zeros(x.size, bool)
    for c in plan_chunks(x.size, chunk, overlap)[1:]:
        edges[c.start : c.start + taps - 1] = True  # a chunk's first taps-1 outputs miss their past
    np.testing.assert_allclose(y[~edges], whole[~edges], atol=1e-6)
    # at the edges the wrong samples enter with the tiny start of the fade-in: still close
    assert np.max(np.abs(y - whole)) < 1e-3 * np.max(np.abs(whole))
    # the papers' hard cuts are wrong right at each boundary (what the crossfade avoids)
    paper = enhance_long(fir, x, chunk_samples=chunk, mode="paper")
    cuts = np.zeros(x.size, bool)
    for start in range(chunk, x.size, chunk):
        cuts[start : start + taps - 1] = True
    np.testing.assert_allclose(paper[~cuts], whole[~cuts], atol=1e-6)
    assert np.max(np.abs(paper[cuts] - whole[cuts])) > 1e-3


def test_output_length_mismatch_is_refused():
    with pytest.raises(ValueError, match="returned 99 samples for a 100-sample chunk"):
        enhance_long(lambda t: t[:-1], np.zeros(300, np.float32), chunk_samples=100, overlap_samples=10,
                     min_samples=0)
    with pytest.raises(ValueError, match=r"mono audio \[N\]"):
        enhance_long(lambda t: t, np.zeros((2, 300), np.float32), chunk_samples=100)


def _peak_bytes(seconds: int, chunk: int, overlap: int) -> int:
    x = signal(seconds * SR)
    tracemalloc.start()
    tracemalloc.reset_peak()
    enhance_long(lambda t: 0.5 * t, x, chunk_samples=chunk, overlap_samples=overlap)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_memory_is_the_output_buffer_plus_one_chunk():
    chunk, overlap = 2 * SR, SR // 4
    out_60 = 60 * SR * 4  # float32 output buffer of 60 s
    peak_60 = _peak_bytes(60, chunk, overlap)
    peak_20 = _peak_bytes(20, chunk, overlap)
    per_chunk = chunk * 4
    assert peak_60 < out_60 + 4 * per_chunk, (peak_60, out_60)
    # what is not the output buffer does not grow with the length
    assert abs((peak_60 - out_60) - (peak_20 - 20 * SR * 4)) < per_chunk


def test_per_chunk_gain_is_crossfaded_without_a_seam():
    """A model that normalises each chunk's level (as RMS normalisation does) applies a different gain
    per chunk: the crossfade turns the step between gains into a smooth ramp; hard cuts keep the step."""
    n, chunk, overlap = 4 * SR, SR, 1600
    x = np.linspace(0.1, 1.0, n, dtype=np.float32)  # rising level: every chunk gets another gain

    def normalise(t: torch.Tensor) -> torch.Tensor:
        return t * (0.5 / torch.sqrt(torch.mean(t**2)))

    gain_ola = enhance_long(normalise, x, chunk, overlap) / x
    gain_cut = enhance_long(normalise, x, chunk, mode="paper") / x
    step = np.max(np.abs(np.diff(gain_cut)))  # the largest jump at a hard cut
    assert step > 0.1
    # with the crossfade, no sample-to-sample change exceeds the step spread over the ramp (pi/2 / L)
    assert np.max(np.abs(np.diff(gain_ola))) < 1.6 * step / overlap + 1e-5
