"""`orchestrate models`: the model registry from the torch-free tables (`training.model_names`), at once;
`--measure` recounts FLOPs and times one CPU forward per model (torch, minutes on CPU)."""

from __future__ import annotations

import argparse
import json
import sys

from orchestrator.errors import UserError

NAME = "models"
HELP = ("the model catalogue: every registered model with parameters and G-MACs per 2 s, from the known "
        "tables (--measure recounts FLOPs and times one CPU forward per model)")
EPILOG = """columns:
  params         trainable parameters (shared modules once)
  GMACs/2s       full count, G multiply-accumulates for 2 s of 16 kHz audio, batch 1
                 (training/model_names.GMACS_2S; the tests recount it)
  stft           n_fft/hop in samples; frames a multiple of N (min M)
with --measure (builds every model with torch: minutes on CPU; says it is measuring):
  GFLOPs/2s      the same full count, recounted
  GFLOPs(thop)   the papers' convention (thop 0.1.1 rules) on the papers' input:
                 (1, 256, 256) spectra for RWSA-MambaUNet, 2 s (T = 321) for the others
  fwd CPU s      one no-grad forward on 2 s, batch 1 (skip with --no-time)
examples:
  orchestrate models                              # every model, from the tables (no torch, < 2 s)
  orchestrate models --names rwsa-xs,mambattention --json
  orchestrate models --measure --names rwsa-xs    # recount FLOPs and time one CPU forward
  orchestrate models --measure --json --no-time   # recount only (every model: minutes)
For timed inference (RTF) on a test set, or of a trained checkpoint: `orchestrate report efficiency`.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--names", help="comma-separated model names (default: every registered model)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of objects")
    p.add_argument("--measure", action="store_true",
                   help="build each model (torch): recount FLOPs (full and thop) and time one CPU forward")
    p.add_argument("--no-time", action="store_true", help="with --measure: skip the CPU forward timing")


def table_rows(names: list[str]) -> list[dict]:
    """Rows ``{name, kind, params, gmacs_2s, n_fft, hop, frame_multiple, min_frames}`` from the torch-free
    tables; ``gmacs_2s`` and the framing are None for the discriminator."""
    from training.model_names import DISCRIMINATOR_NAMES, FRAMING, GMACS_2S, PARAMS

    rows = []
    for n in names:
        f = FRAMING.get(n)
        rows.append({"name": n, "kind": "discriminator" if n in DISCRIMINATOR_NAMES else "generator",
                     "params": PARAMS[n], "gmacs_2s": GMACS_2S.get(n),
                     "n_fft": f.n_fft if f else None, "hop": f.hop if f else None,
                     "frame_multiple": f.frame_multiple if f else None, "min_frames": f.min_frames if f else None})
    return rows


def format_rows(rows: list[dict]) -> str:
    """Plain-text table of `table_rows`."""
    head = f"{'model':26s} {'params':>10s} {'GMACs/2s':>9s}  stft"
    lines = [head, "-" * (len(head) + 30)]
    for r in rows:
        g = "-" if r["gmacs_2s"] is None else f"{r['gmacs_2s']:.2f}"
        stft = "-"
        if r["n_fft"]:
            stft = f"{r['n_fft']}/{r['hop']}"
            if r["frame_multiple"] > 1 or r["min_frames"] > 1:
                stft += f"; frames a multiple of {r['frame_multiple']} (min {r['min_frames']})"
        lines.append(f"{r['name']:26s} {r['params']:>10,d} {g:>9s}  {stft}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from training.model_names import PARAMS

    names = list(PARAMS)
    if args.names:
        names = [n.strip() for n in args.names.split(",") if n.strip()]
        unknown = [n for n in names if n not in PARAMS]
        if unknown:
            raise UserError(f"--names: unknown model {unknown[0]!r}; known: {', '.join(PARAMS)}")
    if args.no_time and not args.measure:
        raise UserError("--no-time: only with --measure (the default listing times nothing)")
    if not args.measure:
        rows = table_rows(names)
        print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
        return 0
    print(f"measuring {len(names)} model(s): building each, recounting FLOPs"
          f"{'' if args.no_time else ' and timing one CPU forward on 2 s'} (torch; minutes on CPU)",
          file=sys.stderr, flush=True)
    from training.models.summary import describe_models, format_table  # torch: only when measuring

    rows = describe_models(names, time_forward=not args.no_time)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
