"""`orchestrate analyze`: the papers' figures — spectrograms (Fig. 2) and t-SNE of latent features (Figs. 3-4)."""

from __future__ import annotations

import argparse

from orchestrator.cliutil import positive_int

NAME = "analyze"
HELP = "figures: noisy/clean/enhanced spectrograms, t-SNE of the last block's features"
EPILOG = """examples:
  orchestrate analyze spectrogram runs/demo/cells/rwsa-xs_s0 --testset data/demo/test --files 3 --out figs/
  orchestrate analyze spectrogram CKPT --testset ~/vbdx_test --keys p232_001,p257_010 --out figs/
  orchestrate analyze tsne CKPT --testset ~/vbdx_test --testset ~/dns_noreverb --testset ~/ears_wham --out figs/
  orchestrate analyze tsne CKPT --testset A --testset B --with-clean --limit 100 --out figs/   # Figure 4
PNGs are written to --out and logged as artifacts of the checkpoint's MLflow run (figures/).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["spectrogram", "tsne"], help="which figure")
    p.add_argument("checkpoint", help="run directory, checkpoint directory or state.pt")
    p.add_argument("--testset", action="append", required=True, help="test set folder (repeatable for tsne)")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    p.add_argument("--keys", help="spectrogram: comma-separated utterance keys")
    p.add_argument("--files", type=positive_int, default=2, help="spectrogram: first N utterances when --keys is not given")
    p.add_argument("--limit", type=positive_int, default=200, help="tsne: utterances per test set (default 200)")
    p.add_argument("--with-clean", action="store_true", help="tsne: also embed the clean references (Figure 4)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the PNGs to MLflow")


def run(args: argparse.Namespace) -> int:
    from orchestrator.figures import spectrogram_figures, tsne_figure

    if args.kind == "spectrogram":
        keys = args.keys.split(",") if args.keys else None
        paths = spectrogram_figures(args.checkpoint, args.testset[0], args.out, keys=keys, first=args.files,
                                    log_mlflow=not args.no_mlflow)
    else:
        paths = [tsne_figure(args.checkpoint, args.testset, args.out, limit=args.limit,
                             with_clean=args.with_clean, log_mlflow=not args.no_mlflow)]
    for p in paths:
        print(p)
    return 0
