"""`orchestrate shard`: build, verify and summarise WebDataset shard corpora (``sharding``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.cliutil import OneLineParser, number, positive_int

NAME = "shard"
HELP = "build shard corpora from recipes (demo, pairs, dns2020, vb-demandex, ears-wham), verify, stats"
DESCRIPTION = """Build a corpus as WebDataset shards + manifest.json per split (train/valid/test), check it,
or summarise it. Recipe options are key=value pairs (the recipe's options dataclass; unknown keys are
refused with the valid list). Rebuilding the same folder resumes: finished shards are skipped."""
EPILOG = """examples:
  orchestrate shard build demo --out data/demo
  orchestrate shard build demo --out data/demo train_clips=1000 speech=procedural --workers 2
  orchestrate shard build dns2020 --out /scratch/dns clean_dir=/data/DNS/clean noise_dir=/data/DNS/noise \\
      total_hours=3000 --executor slurm --profile lumi --slurm partition=small --slurm array_tasks=200
  orchestrate shard build dns2020 --out /scratch/dns clean_dir=... noise_dir=... --executor slurm --dry-run
  orchestrate shard index /data/other-wds      # shards written by webdataset.ShardWriter: write manifests
  orchestrate shard build pairs --out data/dns-test root=/data/DNS/test_set/synthetic/no_reverb match=fileid
  orchestrate shard verify data/demo          # exit 1 when a problem is found
  orchestrate shard stats data/demo --json
"""


def _pairs(items: list[str], what: str) -> dict[str, str]:
    from orchestrator.errors import UserError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{what}: expected key=value, got {item!r}")
        out[key] = value
    return out


class _KeyValueParser(OneLineParser):
    """Collects ``key=value`` words wherever they appear (argparse stops positionals at the first flag)."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if hasattr(ns, "options"):
            kv = [a for a in extras if "=" in a and not a.startswith("-")]
            ns.options = list(ns.options or []) + kv
            extras = [a for a in extras if a not in kv]
        return ns, extras


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="shard_command", metavar="ACTION", required=True, parser_class=_KeyValueParser)
    b = sub.add_parser("build", help="build (or resume) a corpus from a recipe")
    b.add_argument("recipe", help="demo, pairs, dns2020, vb-demandex or ears-wham")
    b.add_argument("options", nargs="*", metavar="key=value", help="recipe options")
    b.add_argument("--out", required=True, help="output folder (DIR/<split>/shard-*.tar + manifest.json)")
    b.add_argument("--executor", choices=("local", "ray", "slurm"), default="local")
    b.add_argument("--workers", type=positive_int, default=1, help="local processes / Ray CPUs (default 1)")
    b.add_argument("--shard-samples", type=positive_int, help="samples per shard (default: from --shard-mb)")
    b.add_argument("--shard-mb", type=number(float, gt=0, le=2**20), help="target shard size in MB (default 512)")
    b.add_argument("--profile", default="local",
                   help="cluster profile for --executor slurm (slurm/NAME.yaml: container, setup, partition, account)")
    b.add_argument("--slurm", action="append", default=[], metavar="key=value",
                   help="SLURM setting: array_tasks, max_parallel, partition, account, qos, time_min, cpus_per_task, "
                   "mem_gb (default: the profile's partition/account)")
    b.add_argument("--dry-run", action="store_true", help="only plan (and print the sbatch scripts for slurm)")
    v = sub.add_parser("verify", help="checksums, sample counts, decode every sample; exit 1 on problems")
    v.add_argument("dir")
    v.add_argument("--no-decode", action="store_true", help="skip decoding (checksums and counts only)")
    i = sub.add_parser("index", help="write manifest.json for WebDataset shards another pipeline wrote")
    i.add_argument("dir", help="DIR/<split>/*.tar (or DIR/*.tar): samples with noisy/clean .flac or .wav")
    s = sub.add_parser("stats", help="hours, clips, SNR histogram, speakers, noise types per split")
    s.add_argument("dir")
    s.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    if args.shard_command == "build":
        from sharding.writer import build

        shard_bytes = max(1, int(args.shard_mb * 2**20)) if args.shard_mb is not None else None
        if args.executor == "slurm":
            return _build_on_slurm(args, shard_bytes)
        result = build(args.recipe, args.out, _pairs(args.options, "recipe option"), executor=args.executor,
                       num_workers=args.workers, shard_samples=args.shard_samples,
                       shard_bytes=shard_bytes, dry_run=args.dry_run)
        if "manifests" in result:
            from sharding.recipes.base import SPLITS

            for split, m in result["manifests"].items():
                print(f"{split}: {m['num_samples']} clips, {m['seconds'] / 3600:.3f} h, {len(m['shards'])} shards")
            for split in (s for s in SPLITS if s not in result["manifests"]):
                print(f"{split}: no clips (the recipe's options give this split none): not written")
        else:
            print(json.dumps({k: v for k, v in result.items() if k != "scripts"}, indent=1, default=str))
        return 0
    if args.shard_command == "verify":
        from sharding.verify import verify

        report = verify(args.dir, decode=not args.no_decode)
        for split, c in report.splits.items():
            print(f"{split}: {c['shards']} shards, {c['samples']} samples, {c['bad_samples']} bad")
        for problem in report.problems:
            print(f"problem: {problem}")
        print("ok" if report.ok else f"{len(report.problems)} problem(s)")
        return 0 if report.ok else 1
    if args.shard_command == "index":
        from sharding.writer import index_shards

        for split, m in index_shards(args.dir).items():
            print(f"{split}: {m['num_samples']} clips, {m['seconds'] / 3600:.3f} h, {len(m['shards'])} shards, "
                  f"{m['sample_rate']} Hz")
        return 0
    from sharding.verify import stats

    result = stats(args.dir)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return 0
    for split, st in result.items():
        print(f"{split}: {st['clips']} clips, {st['hours']} h, {st['shards']} shards, recipe {st['recipe']}")
        print(f"  SNR dB: {st['snr_histogram']}")
        print(f"  speakers ({st['num_speakers']}): {dict(list(st['speakers'].items())[:10])}")
        print(f"  noise types: {st['noise_types']}")
    return 0


def _build_on_slurm(args: argparse.Namespace, shard_bytes: int | None) -> int:
    """Plan the build (``<out>/.build/plan.json``) and submit it through the SLURM launcher."""
    from orchestrator.launchers.slurm import shard_build_resources, submit_shard_build
    from orchestrator.profiles import load_profile
    from sharding.executors import task_ranges, write_plan
    from sharding.writer import resolve_plan

    profile = load_profile(args.profile)
    res = shard_build_resources(profile, {k: _num(v) for k, v in _pairs(args.slurm, "--slurm").items()})
    norm, tasks = resolve_plan(args.recipe, _pairs(args.options, "recipe option"), args.shard_samples, shard_bytes)
    plan = write_plan(args.recipe, norm, Path(args.out), tasks, int(res["array_tasks"]))
    result = submit_shard_build(plan, len(task_ranges(len(tasks), int(res["array_tasks"]))), profile, res,
                                dry_run=args.dry_run)
    if args.dry_run:
        for name, text in result["scripts"].items():
            print(f"# {name} job\n{text}")
    print(json.dumps({k: v for k, v in result.items() if k != "scripts"}, indent=1, default=str))
    return 0


def _num(value: str):
    try:
        return int(value)
    except ValueError:
        return value
