"""`orchestrate enhance`: enhance audio files with a trained checkpoint."""

from __future__ import annotations

import argparse
import sys

from orchestrator.cliutil import config_value
from training.config import RunConfig
from training.evaluation.protocol import MODES

NAME = "enhance"
HELP = "enhance audio files or folders with a checkpoint"
EPILOG = """examples:
  orchestrate enhance runs/demo/cells/rwsa-xs_s0 noisy.wav --out enhanced/
  orchestrate enhance runs/x/checkpoints/best ~/recordings/ --out enhanced/ --keep-rate
  orchestrate enhance CKPT long_meeting.flac --out out/ --mode chunked --chunk-seconds 10 --overlap-seconds 0
Files are enhanced as the run was validated and tested: its eval.mode (auto = the RWSA authors' 30,600-
sample segments for rwsa-* models, else chunks of eval.chunk_seconds cross-faded over eval.overlap_seconds;
docs/fidelity.md), overridden by --mode/--chunk-seconds/--overlap-seconds. Memory stays flat in the audio
length. Any sample rate or channel count is read (mixed to mono, resampled to 16 kHz); output is 16-bit
WAV at 16 kHz (or at the input rate with --keep-rate); the real-time factor is printed at the end.
Folders are walked for every audio extension soundfile reads (wav, flac, ogg/opus, mp3, aiff, ...) and
keep their subfolders under --out; inputs that would share an output name (a.wav and a.flac) are written
as a.wav.wav and a.flac.wav; an output that would replace an input, or an existing file in a folder the
inputs are read from (--out = the input's folder), is refused (exit 2). Symlinked subfolders are
followed; a dangling symlink is reported as a failed file. Audio shorter
than 25 ms is zero-padded for the model and cropped back. Output louder than full scale (a float input
above 1.0) is scaled down to fit, with a warning, never clipped.
Exit codes: 0 every file enhanced; 2 bad input (nothing done); 3 some files failed (NaN/Inf samples,
undecodable): every other file is written and the failed ones are listed at the end.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run directory, checkpoint directory or state.pt")
    p.add_argument("inputs", nargs="+", help="audio files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", choices=MODES, help="how files are enhanced (default: the run config's eval.mode)")
    p.add_argument("--chunk-seconds", type=config_value(RunConfig, "eval.chunk_seconds"), help="chunk length, chunked mode (default: eval.chunk_seconds)")
    p.add_argument("--overlap-seconds", type=config_value(RunConfig, "eval.overlap_seconds"),
                   help="cross-fade overlap, chunked mode (default: eval.overlap_seconds; 0 = plain cuts)")
    p.add_argument("--keep-rate", action="store_true", help="write at the input's sample rate")


def run(args: argparse.Namespace) -> int:
    from training.kernels import omp_wait

    omp_wait.passive()  # before torch is imported
    from orchestrator.evaluate_and_enhance import EXIT_SOME_FAILED, enhance_files
    from training.kernels import malloc_tuning

    malloc_tuning.tune()  # before the model's first forward pass

    result = enhance_files(args.checkpoint, args.inputs, args.out, eval_mode=args.mode,
                           chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
                           keep_rate=args.keep_rate)
    print(f"enhanced {len(result['files'])} file(s), {result['seconds']:.1f} s of audio into {args.out} "
          f"(mode {result['mode']}); real-time factor {result['rtf']:.3f}")
    for name, db in result["scaled"]:
        print(f"scaled {db:+.1f} dB to fit full scale: {name}")
    if result["failed"]:
        print(f"FAILED {len(result['failed'])} file(s) (nothing written for them):", file=sys.stderr)
        for _name, reason in result["failed"]:
            print(f"  {reason}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0
