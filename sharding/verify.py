"""Check and summarise a shard corpus: ``verify(dir)`` (checksums + decode everything), ``stats(dir)``."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.safe_names import name_problem
from sharding.audio import SAMPLE_RATE, decode_audio
from sharding.errors import SourceError
from sharding.manifest import MANIFEST, ShardEntry, find_manifest
from sharding.recipes.base import SPLITS
from sharding.tario import index_tar, read_members
from sharding.writer import _sha256


@dataclass
class VerifyReport:
    """``ok`` when no problem was found; ``problems`` are one line each (shard and key named)."""

    root: str
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "ok": self.ok, "splits": self.splits, "problems": self.problems}


def split_dirs(root: str | Path) -> dict[str, Path]:
    """{split: folder} of a corpus folder, or {name: root} when ``root`` is itself a split folder."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: shard folder does not exist")
    if (root / MANIFEST).exists() or any(root.glob("*.tar")):
        return {root.name: root}
    found = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if not found:
        raise SourceError(f"{root}: no {'/'.join(SPLITS)} folders and no shards")
    return found


def _check_sample(blobs: dict[str, bytes]) -> str | None:
    try:
        meta = json.loads(blobs["json"]) if "json" in blobs else None
        audio = {}
        for name in ("noisy", "clean"):
            ext = next((e for e in (f"{name}.flac", f"{name}.wav") if e in blobs), None)
            if ext is None:
                return f"no {name} audio member"
            x, sr = decode_audio(blobs[ext])
            if sr != SAMPLE_RATE or x.shape[1] != 1:
                return f"{name} is {x.shape[1]} ch at {sr} Hz, expected mono {SAMPLE_RATE}"
            if not np.all(np.isfinite(x)):
                return f"{name} has NaN/inf"
            audio[name] = x[:, 0]
    except Exception as e:  # noqa: BLE001 -- any decoding failure is a reported problem
        return f"undecodable ({type(e).__name__}: {e})"
    if len(audio["noisy"]) != len(audio["clean"]):
        return f"noisy/clean lengths differ ({len(audio['noisy'])} vs {len(audio['clean'])})"
    if not np.any(audio["clean"]):
        return "clean audio is all zeros"
    if meta is not None and "seconds" in meta and abs(meta["seconds"] - len(audio["clean"]) / SAMPLE_RATE) > 1e-3:
        return f"json seconds {meta['seconds']} != audio {len(audio['clean']) / SAMPLE_RATE}"
    return None


def verify(root: str | Path, *, decode: bool = True) -> VerifyReport:
    """Check manifests, sizes, sha256 and sample counts; decode every sample unless ``decode=False``."""
    report = VerifyReport(str(root))
    for split, d in split_dirs(root).items():
        counts = {"shards": 0, "samples": 0, "bad_samples": 0}
        report.splits[split] = counts
        manifest_path = d / MANIFEST
        unlisted = [ShardEntry(p.name, -1) for p in sorted(d.glob("*.tar"))]
        try:
            manifest = find_manifest(manifest_path)
        except SourceError as e:
            report.problems.append(str(e))
            manifest = None
            shards = unlisted
        else:
            if manifest is None:
                report.problems.append(f"{manifest_path}: missing")
                shards = unlisted
            else:
                shards = manifest.shards
                listed = {s.name for s in shards}
                report.problems += [f"{d / s.name}: not listed in {MANIFEST}" for s in unlisted if s.name not in listed]
        for s in shards:
            path = d / s.name
            counts["shards"] += 1
            if not path.exists():
                report.problems.append(f"{path}: missing")
                continue
            if s.sha256 and _sha256(path) != s.sha256:
                report.problems.append(f"{path}: sha256 differs from {MANIFEST}")
            idx = index_tar(path)
            if idx.truncated:
                report.problems.append(f"{path}: truncated/corrupt ({idx.error})")
            if s.samples >= 0 and len(idx.samples) != s.samples:
                report.problems.append(f"{path}: {len(idx.samples)} samples, {MANIFEST} says {s.samples}")
            counts["samples"] += len(idx.samples)
            report.problems += [f"{path} {key!r}: member name: {why}" for key in idx.samples
                                if (why := name_problem(key))]
            if not decode:
                continue
            for key, members in idx.samples.items():
                why = _check_sample(read_members(path, members))
                if why:
                    counts["bad_samples"] += 1
                    report.problems.append(f"{path} {key}: {why}")
    return report


def _meta_records(d: Path):
    for path in sorted(d.glob("*.tar")):
        idx = index_tar(path)
        for members in idx.samples.values():
            if "json" in members:
                yield json.loads(read_members(path, {"json": members["json"]})["json"])


def stats(root: str | Path, *, snr_bin_db: float = 5.0) -> dict[str, Any]:
    """Per split: clips, hours, SNR histogram (``snr_bin_db`` bins), speakers and noise types."""
    out: dict[str, Any] = {}
    for split, d in split_dirs(root).items():
        seconds, snr_hist, speakers, noise_types, clips = 0.0, Counter(), Counter(), Counter(), 0
        for meta in _meta_records(d):
            clips += 1
            seconds += float(meta.get("seconds", 0.0))
            if meta.get("snr_db") is not None:
                lo = np.floor(float(meta["snr_db"]) / snr_bin_db) * snr_bin_db
                snr_hist[f"[{lo:g}, {lo + snr_bin_db:g})"] += 1
            if meta.get("speaker"):
                speakers[str(meta["speaker"])] += 1
            if meta.get("noise_type"):
                noise_types[str(meta["noise_type"])] += 1
        try:
            manifest = find_manifest(d / MANIFEST)
        except SourceError:
            manifest = None
        out[split] = {
            "clips": clips, "hours": round(seconds / 3600, 4), "shards": len(list(d.glob("*.tar"))),
            "recipe": manifest.recipe if manifest else None,
            "snr_histogram": dict(sorted(snr_hist.items(), key=lambda kv: float(kv[0][1:].split(",")[0]))),
            "num_speakers": len(speakers), "speakers": dict(speakers.most_common()),
            "noise_types": dict(noise_types.most_common()),
        }
    return out
