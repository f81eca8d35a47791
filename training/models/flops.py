"""Analytic FLOP counter (forward hooks, one forward pass). Counts are multiply-accumulates (MACs),
which is what the papers call "FLOPs" (they use thop, which counts MACs).

Two conventions:

``"full"`` — every multiply-accumulate of the forward pass that scales with the input:
  - Conv1d/Conv2d: ``out_elems * C_in/groups * prod(kernel)``; ConvTranspose: ``in_elems * C_out/groups
    * prod(kernel)``; deformable conv: its conv MACs + 4 MACs (bilinear) per sampled value.
  - Linear: ``rows * in * out``, also Mamba's ``in_proj``/``dt_proj`` applied as raw matmuls.
  - Selective scan, per (batch, channel, step, state): 3 for ``exp(delta*A)`` and ``delta*B*u``
    (delta*A, delta*u, *B), 2 for the state update, 1 for the C read-out; plus ``D*u`` and the gate.
  - Multi-head attention: Q/K/V/out projections ``4 * N*L*C^2`` plus ``QK^T`` and ``AV``, ``2 * N*L^2*C``.
  - LSTM: per step ``4 H (I + P)`` (+ ``H P`` with a projection); mLSTM block: its linear/conv modules,
    the block-diagonal q/k/v ``3 * N*L*E*4`` and the parallel cell ``2 * N*L^2*E`` (E = inner width).
    The ``"thop"`` convention has no rule for either (the papers' LSTM/xLSTM FLOPs are not reproduced).
  - Normalisation (Batch/Instance/Layer/RMS): ``2 * elems``, doubled with an affine weight (thop's rule).
  Pointwise activations, softmax, additions and reshapes are not counted.

``"thop"`` — the convention behind the papers' numbers (``thop.profile`` 0.1.1 as the authors call it):
  only modules thop has rules for and sees *called as modules*: Conv1d/2d and ConvTranspose1d/2d
  (``out_elems * C_in/groups * prod(kernel)``, also for transposed convs, bias ignored), nn.Linear
  (``out_elems * in_features``; in Mamba that is ``x_proj`` and ``out_proj`` only, ``in_proj``/``dt_proj``
  being raw matmuls), Batch/Instance/LayerNorm (``2 * elems``, x2 if affine) and PReLU (``elems``:
  thop switches the model to eval mode, where its PReLU rule counts). Zero for the selective scan,
  everything inside nn.MultiheadAttention, RMSNorm, other activations and the deformable conv (no
  rule). thop's bookkeeping quirk is reproduced too: it attaches one hook per *path* from the root to
  a module (``model.apply``) and sums per path (``named_children`` walk), so a module shared by
  ``p`` parents (RWSA's shared attention LayerNorms, p = 3) counts ``p**2`` times per call.
  Mamba's conv1d runs in a fused kernel, not as a module call; the Mamba rule adds the MACs thop
  counts for that Conv1d call (output before the causal crop). With it, RWSA-MambaUNet XS/S/M
  give 9.22 / 14.90 / 28.47 G on a (1, 256, 256) input and MambAttention 65.52 G on 2 s
  (T = 321), as published (SEMamba: 65.46 G; its paper table says 64.46).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn as nn

from training.mamba.mixer import Mamba
from training.models.deform_conv import DeformConv2d
from training.models.recurrent import MLSTMBlock
from training.models.tf_blocks import AttentionModule

_CONV = (nn.Conv1d, nn.Conv2d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d)
_NORM = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LayerNorm,
)  # fmt: skip
CONVENTIONS = ("full", "thop")


def _norm_macs(m, x) -> int:
    affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
    return 2 * x.numel() * (2 if affine else 1)


def _thop_hook(m, x, y) -> int | None:
    """thop's count for one call of ``m``, or None when thop has no rule for its exact type."""
    t = type(m)
    if t in _CONV + _CONVT:
        return y.numel() * (x[0].shape[1] // m.groups) * math.prod(m.kernel_size)
    if t is nn.Linear:
        return y.numel() * m.in_features
    if t in _NORM:
        return _norm_macs(m, x[0])
    if t is nn.PReLU:
        return x[0].numel()
    if t is Mamba:  # its conv1d runs in a fused kernel, not as a module call: count that call
        return _mamba_conv_macs(m, x[0])
    return None


def _mamba_conv_macs(m, x0) -> int:
    """MACs thop counts for Mamba's depthwise ``conv1d`` call (output before the causal crop)."""
    b, length, _ = x0.shape
    k = m.conv1d.kernel_size[0]
    return b * m.d_inner * (length + k - 1) * k


def _scan_macs(b: int, d: int, length: int, n: int) -> int:
    return b * d * length * (6 * n + 2)


def _full_hook(m, x, y) -> int | None:
    """Full MAC count of one call of ``m`` (composite modules count their raw operations only)."""
    t = type(m)
    x0 = x[0]
    if t in _CONV:
        return y.numel() * (x0.shape[1] // m.groups) * math.prod(m.kernel_size)
    if t in _CONVT:
        return x0.numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)
    if isinstance(m, nn.Linear) and t is not nn.modules.linear.NonDynamicallyQuantizableLinear:
        return y.numel() * m.in_features
    if t in _NORM or type(m).__name__ == "RMSNorm":
        return _norm_macs(m, x0) if t in _NORM else 4 * x0.numel()
    if t is DeformConv2d:
        k = math.prod(m.weight.shape[2:])
        cols = x0.shape[0] * x0.shape[1] * k * y.shape[2] * y.shape[3]
        return y.numel() * m.weight.shape[1] * k + 4 * cols
    if t is Mamba:
        b, length, _ = x0.shape
        e = m.d_inner
        raw = b * length * (m.d_model * 2 * e + m.dt_rank * e)  # in_proj, dt_proj (raw matmuls)
        return raw + _mamba_conv_macs(m, x0) + _scan_macs(b, e, length, m.d_state)
    if t is AttentionModule:  # its MHA: in/out projections + QK^T + AV
        n, length, c = x0.shape  # batch_first
        return 4 * n * length * c * c + 2 * n * length * length * c
    if t is nn.LSTM:  # one layer, batch_first: 4 gates on (input, projected state), then the projection
        n, length, i = x0.shape
        h, p = m.hidden_size, m.proj_size or m.hidden_size
        dirs = 2 if m.bidirectional else 1
        return dirs * n * length * (4 * h * (i + p) + (h * p if m.proj_size else 0))
    if t is MLSTMBlock:  # its raw parts: block-diagonal q/k/v (3x) and the cell's q k^T and C v
        n, length, _ = x0.shape
        inner = m.skip.numel()
        return 3 * n * length * inner * m.q_proj.block + 2 * n * length * length * inner
    return None


def count_macs(model: nn.Module, inputs: tuple, convention: str = "full") -> int:
    """MACs of ``model(*inputs)`` under ``convention`` (see the module docstring)."""
    return count_all(model, inputs, (convention,))[convention]


def count_all(model: nn.Module, inputs: tuple, conventions=CONVENTIONS) -> dict[str, int]:
    """MACs of one forward ``model(*inputs)`` under each convention (the model runs in eval mode,
    as thop runs it, and is put back in its previous mode)."""
    bad = [c for c in conventions if c not in CONVENTIONS]
    if bad:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {bad[0]!r}")
    hook_fns = {"full": _full_hook, "thop": _thop_hook}
    totals = {c: defaultdict(int) for c in conventions}

    def hook(mod, x, y):
        for c in conventions:
            macs = hook_fns[c](mod, x, y)
            if macs:
                totals[c][id(mod)] += int(macs)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    out = {}
    if "full" in totals:
        out["full"] = sum(totals["full"].values())
    if "thop" in totals:
        paths: dict[int, int] = defaultdict(int)  # root-to-module paths, as model.apply/dfs see them

        def visit(module: nn.Module):
            paths[id(module)] += 1
            if not _thop_leaf(module):
                for _, child in module.named_children():
                    visit(child)

        visit(model)
        out["thop"] = sum(total * paths[key] ** 2 for key, total in totals["thop"].items())
    return out


def _thop_leaf(m: nn.Module) -> bool:
    return type(m) in _CONV + _CONVT + _NORM or type(m) in (nn.Linear, nn.PReLU)


def _freq_bins(model: nn.Module) -> int:
    stft = getattr(model, "stft", None)
    return stft.n_freq if stft is not None else 201  # the discriminator: 400/100 spectra


def flops_input(model: nn.Module, frames: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(mag, pha)`` (or ``(clean, est)``) of ``[batch, F, frames]`` for ``model``'s STFT."""
    g = torch.Generator().manual_seed(0)
    f = _freq_bins(model)
    return torch.rand(batch, f, frames, generator=g), torch.rand(batch, f, frames, generator=g) * 6 - 3


def paper_frames(model: nn.Module) -> int:
    """Frames of the papers' FLOP input: T = 256 for the 510/120 models (RWSA), 2 s (T = 321) otherwise."""
    stft = getattr(model, "stft", None)
    return 256 if stft is not None and stft.n_fft == 510 else 321


def frames_per_2s(model: nn.Module) -> int:
    """Frames ``enhance`` uses for 2 s of 16 kHz audio (rounded up to the model's frame multiple)."""
    stft = getattr(model, "stft", None)
    if stft is None:
        return 321
    mult = getattr(model, "frame_multiple", 1)
    frames = -(-32_000 // stft.hop) + 1
    return -(-frames // mult) * mult


def model_gflops(model: nn.Module) -> dict:
    """``{"gflops": full G-MACs per 2 s of audio, "gflops_thop": paper-convention G-MACs on the
    papers' input}`` (batch 1); one forward when both inputs coincide, two otherwise."""
    full_t, paper_t = frames_per_2s(model), paper_frames(model)
    if full_t == paper_t:
        counts = count_all(model, flops_input(model, full_t))
    else:
        counts = {
            "full": count_macs(model, flops_input(model, full_t), "full"),
            "thop": count_macs(model, flops_input(model, paper_t), "thop"),
        }
    return {"gflops": counts["full"] / 1e9, "gflops_thop": counts["thop"] / 1e9}
