"""`orchestrate evaluate`: enhance a test set with a checkpoint and score it (PESQ, ESTOI, SI-SDR, SSNR)."""

from __future__ import annotations

import argparse
import json
import sys

from orchestrator.cliutil import config_value, positive_int
from training.config import RunConfig
from training.evaluation.protocol import MODES

NAME = "evaluate"
HELP = "score a checkpoint on test sets (per-file CSV, summary, MLflow)"
EPILOG = """examples:
  orchestrate evaluate runs/demo/cells/rwsa-xs_s0 --testset data/demo/test
  orchestrate evaluate runs/x/checkpoints/best --testset ~/data/vb_demandex_test --name vbdx --json
  orchestrate evaluate CKPT --testset DIR --metrics pesq,si_sdr --chunk-seconds 10 --overlap-seconds 0
  orchestrate evaluate --noisy-only --testset data/ears_wham_v2_official/test     # is it the paper's data?
A test set is a folder with clean/ and noisy/ (files matched by name; any rate/channels), a noisy/-only
folder (reference-free metrics only), or a shard set (manifest.json + shard-*.tar).
Every metric's mean is over the same files: a file for which some metric is undefined (e.g. a silent
clean reference) is "excluded" from all means and counted; a file that cannot be read or enhanced is
"failed". The per-file CSV has a status column (ok / excluded / failed) with the reason.
Results are kept per file as they finish (REPORT_DIR/NAME.files.jsonl): after an interruption, run the
same command again and only the files not yet done are enhanced (delete that file to start over). Without a terminal (a batch job, a log
file) a progress line (files done/total, audio s/s, ETA) is logged every 5 % or 30 s.
Exit codes: 0 all files scored; 2 bad input (nothing done); 3 some files failed (the others are scored
and reported, the failed ones listed at the end).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="run directory, checkpoint directory or state.pt (not with --noisy-only)")
    p.add_argument("--noisy-only", action="store_true",
                   help="no model: print the test sets' noisy-input metrics beside the papers' noisy rows")
    p.add_argument("--paper", choices=("vb_demandex", "dns_no_reverb", "ears_wham_v2"),
                   help="paper row to compare with (--noisy-only; default: guessed from the test set name)")
    p.add_argument("--testset", action="append", required=True, help="test set folder (repeatable)")
    p.add_argument("--name", help="name of the test set in reports and MLflow (default: folder name)")
    p.add_argument("--out", help="report folder (default: RUN_DIR/eval)")
    p.add_argument("--metrics", help="comma-separated metrics (default: the run config's eval.metrics)")
    p.add_argument("--workers", type=config_value(RunConfig, "eval.num_workers"), default=2,
                   help="processes that each enhance and score whole files (default 2; 1: enhance here while "
                        "one process scores; 0: all in this process); the numbers are the same whatever the count")
    p.add_argument("--chunk-seconds", type=config_value(RunConfig, "eval.chunk_seconds"), help="enhance in chunks of this length")
    p.add_argument("--overlap-seconds", type=config_value(RunConfig, "eval.overlap_seconds"), help="chunk overlap (0 = the papers' plain 10 s cuts)")
    p.add_argument("--mode", choices=MODES,
                   help="how files are enhanced (default: the run config's eval.mode; docs/fidelity.md)")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N files")
    p.add_argument("--save-audio", action="store_true", help="also write the enhanced files")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the run's)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")


def run(args: argparse.Namespace) -> int:
    from training.kernels import omp_wait

    omp_wait.passive()  # before torch is imported
    if args.noisy_only:
        return _noisy_only(args)
    if not args.checkpoint:
        from orchestrator.errors import UserError

        raise UserError("evaluate: give a checkpoint (or --noisy-only)")
    from orchestrator.evaluate_and_enhance import EXIT_SOME_FAILED, evaluate
    from training.kernels import malloc_tuning

    malloc_tuning.tune()  # before the model's first forward pass

    summaries = evaluate(
        args.checkpoint,
        args.testset,
        out_dir=args.out,
        name=args.name,
        metrics=args.metrics.split(",") if args.metrics else None,
        num_workers=args.workers,
        chunk_seconds=args.chunk_seconds,
        overlap_seconds=args.overlap_seconds,
        tracking_uri=args.tracking_uri,
        log_mlflow=not args.no_mlflow,
        limit=args.limit,
        save_audio=args.save_audio,
        eval_mode=args.mode,
    )
    code = EXIT_SOME_FAILED if any(s["failed_files"] for s in summaries) else 0
    if args.json:
        keys = ("testset", "n", "scored", "excluded", "failed_files", "noisy", "enhanced", "failed", "problems",
                "rtf", "resumed")
        out = [{k: s[k] for k in keys} for s in summaries]
        print(json.dumps(_json_safe(out[0] if len(out) == 1 else out), indent=2))
        return code
    for s in summaries:
        metrics = list(s["enhanced"]) or list(s["noisy"])
        print(f"\n{s['testset']}: {s['n']} files, checkpoint step {s['step']}, RTF {s['rtf']:.3f}")
        print(f"  means over the same {s['scored']} file(s); excluded {s['excluded']} (a metric undefined), "
              f"failed {s['failed_files']}")
        print(f"  {'':10s}" + "".join(f"{m:>10s}" for m in metrics))
        for side in ("noisy", "enhanced"):
            vals = "".join(f"{_f(s[side].get(m)):>10s}" for m in metrics)
            print(f"  {side:10s}{vals}")
        undefined = {m: c for m, c in s["failed"]["enhanced"].items() if c}
        if undefined:
            print(f"  undefined values per metric (enhanced): {undefined}")
    for s in summaries:
        for prob in s["problems"]:
            stream = sys.stderr if prob["status"] == "failed" else sys.stdout
            print(f"{prob['status'].upper()} {s['testset']} {prob['key']}: {prob['reason']}", file=stream)
    return code


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def _noisy_only(args: argparse.Namespace) -> int:
    from training.evaluation.paper_reference import comparison_text, noisy_summary, paper_row_for

    metrics = args.metrics.split(",") if args.metrics else ["pesq", "ssnr", "estoi", "si_sdr"]
    from training.evaluation.evaluate import unavailable_metrics_problem

    problem = unavailable_metrics_problem(metrics)
    if problem:
        from orchestrator.errors import UserError

        raise UserError(f"--metrics: {problem}")
    summaries = [noisy_summary(t, metrics=metrics, num_workers=args.workers, limit=args.limit, name=args.name)
                 for t in args.testset]
    if args.json:
        print(json.dumps([{k: s[k] for k in ("testset", "n", "noisy", "failed")} for s in summaries], indent=2))
        return 0
    for s in summaries:
        print("\n" + comparison_text(s, args.paper or paper_row_for(s["path"])))
    return 0


def _f(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"
