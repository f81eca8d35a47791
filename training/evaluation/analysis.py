"""Figures of the MambAttention paper: spectrograms (Figure 2) and t-SNE of latent features (Figures 3-4).

- ``spectrogram_png(path, {"noisy": x, "clean": y, "enhanced": z})``: log-magnitude spectrograms of
  16 kHz signals stacked vertically (n_fft 512, hop 128, dB re the loudest bin, 80 dB range).
- ``latent_vector(model, wav)``: the output of the model's last TF block (the features fed to the
  magnitude decoder, ``model.features``), averaged over time → one vector of C·F' values per utterance.
- ``tsne_png(path, {name: [vectors]})``: a 2-D t-SNE (scikit-learn, fixed seed) of all vectors,
  coloured by group (test set, or test set × noisy/clean for Figure 4).
Everything is written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.atomic import atomic_write
from training.stft import mag_pha_stft

SAMPLE_RATE = 16000


def _atomic_savefig(fig, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    return path


def _figure(rows: int, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(rows, 1, figsize=(9, height * rows), squeeze=False)


def spectrogram_png(path: str | Path, signals: dict[str, np.ndarray], title: str = "") -> Path:
    """Stacked log-magnitude spectrograms (dB) of float32 16 kHz signals; returns the PNG path."""
    plt, (fig, axes) = _figure(len(signals), 2.2)
    window = np.hanning(512).astype(np.float32)
    for ax, (name, x) in zip(axes[:, 0], signals.items(), strict=True):
        spec = torch.stft(torch.as_tensor(np.asarray(x, np.float32)), 512, 128, window=torch.from_numpy(window),
                          return_complex=True).abs().numpy()
        db = 20 * np.log10(spec + 1e-8)
        db = np.maximum(db, db.max() - 80)
        dur = len(x) / SAMPLE_RATE
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", extent=(0, dur, 0, SAMPLE_RATE / 2000))
        ax.set_ylabel(f"{name}\nkHz")
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        axes[0, 0].set_title(title)
    try:
        return _atomic_savefig(fig, Path(path))
    finally:
        plt.close(fig)


@torch.no_grad()
def latent_vector(model: torch.nn.Module, wav: np.ndarray) -> np.ndarray:
    """Time-averaged output of the model's last block for one utterance (RMS-normalised like ``enhance``)."""
    x = torch.as_tensor(np.asarray(wav, np.float32))[None]
    x = x / x.pow(2).mean().sqrt().clamp_min(1e-8)
    mag, pha, _ = mag_pha_stft(x, model.stft)
    mult = getattr(model, "frame_multiple", 1)
    pad = (-mag.shape[-1]) % mult
    if pad:
        mag = torch.nn.functional.pad(mag, (0, pad))
        pha = torch.nn.functional.pad(pha, (0, pad))
    feats, _ = model.features(torch.stack([mag, pha], 1).transpose(2, 3))  # [B, C, T, F']
    return feats.mean(dim=2).flatten().numpy()


def tsne_png(path: str | Path, groups: dict[str, list[np.ndarray]], seed: int = 0, title: str = "") -> Path:
    """2-D t-SNE of every vector, one colour per group; returns the PNG path."""
    from sklearn.manifold import TSNE

    names = [n for n, vs in groups.items() if vs]
    data = np.stack([v for n in names for v in groups[n]])
    labels = np.array([i for i, n in enumerate(names) for _ in groups[n]])
    if len(data) < 3:
        raise ValueError(f"t-SNE needs at least 3 utterances in all, got {len(data)}")
    data = (data - data.mean(0)) / (data.std(0) + 1e-8)
    emb = TSNE(n_components=2, perplexity=min(30.0, (len(data) - 1) / 3), random_state=seed,
               init="pca").fit_transform(data)
    plt, (fig, axes) = _figure(1, 6)
    ax = axes[0, 0]
    for i, n in enumerate(names):
        pts = emb[labels == i]
        ax.scatter(pts[:, 0], pts[:, 1], s=12, label=f"{n} ({len(pts)})")
    ax.legend()
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    try:
        return _atomic_savefig(fig, Path(path))
    finally:
        plt.close(fig)
