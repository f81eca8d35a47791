"""`verify`/`stats` library functions and the `orchestrate shard` command."""

from __future__ import annotations

import json
import shutil

import pytest

from orchestrator.cli import main
from sharding.recipes.demo import prepare_demo
from sharding.tario import write_tar
from sharding.verify import stats, verify

OPTS = dict(speech="procedural", train_clips=10, valid_clips=2, test_clips=2, min_seconds=0.5, max_seconds=1.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("c")
    prepare_demo(out, shard_samples=4, **OPTS)
    return out


def test_verify_clean_corpus(corpus):
    r = verify(corpus)
    assert r.ok, r.problems
    assert r.splits["train"] == {"shards": 3, "samples": 10, "bad_samples": 0}


def test_verify_finds_every_problem(corpus, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(corpus, bad)
    raw = (bad / "train" / "shard-000001.tar").read_bytes()
    (bad / "train" / "shard-000001.tar").write_bytes(raw[: len(raw) // 2])  # truncated
    flipped = bytearray((bad / "train" / "shard-000000.tar").read_bytes())
    flipped[2000] ^= 0xFF  # one byte inside the first FLAC
    (bad / "train" / "shard-000000.tar").write_bytes(bytes(flipped))
    write_tar(bad / "train" / "shard-000009.tar", [{"__key__": "x", "noisy.flac": b"junk", "clean.flac": b"junk"}])
    (bad / "valid" / "manifest.json").unlink()
    r = verify(bad)
    text = "\n".join(r.problems)
    assert not r.ok
    assert "shard-000001.tar: sha256 differs" in text and "shard-000001.tar: truncated" in text
    assert "shard-000000.tar: sha256 differs" in text
    assert "shard-000009.tar: not listed" in text and "valid/manifest.json: missing" in text
    assert "samples, manifest.json says 4" in text


def test_stats_counts(corpus):
    st = stats(corpus)
    tr = st["train"]
    assert tr["clips"] == 10 and tr["shards"] == 3 and tr["recipe"] == "demo"
    manifest = json.loads((corpus / "train" / "manifest.json").read_text())
    assert tr["hours"] == pytest.approx(manifest["seconds"] / 3600, abs=1e-4)
    assert sum(tr["snr_histogram"].values()) == 10 and set(tr["snr_histogram"]) <= {
        "[-5, 0)", "[0, 5)", "[5, 10)", "[10, 15)"}
    assert sum(tr["noise_types"].values()) == 10 and sum(tr["speakers"].values()) == 10
    assert st["test"]["clips"] == 2


def test_cli_build_verify_stats_and_errors(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["shard", "build", "demo", "--out", str(out), "train_clips=4", "valid_clips=1", "test_clips=1",
            "speech=procedural", "min_seconds=0.5", "max_seconds=0.8", "--shard-samples", "2"]
    assert main(args) == 0
    assert "train: 4 clips" in capsys.readouterr().out
    assert main(["shard", "verify", str(out)]) == 0
    assert capsys.readouterr().out.endswith("ok\n")
    assert main(["shard", "stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["clips"] == 4
    (out / "train" / "shard-000000.tar").write_bytes(b"\0" * 10)
    assert main(["shard", "verify", str(out)]) == 1
    assert main(["shard", "build", "demo", "--out", str(out), "bogus=1"]) == 2
    assert "recipe demo: unknown key 'bogus'" in capsys.readouterr().err
    assert main(["shard", "build", "dns2020", "--out", str(tmp_path / "x"), "clean_dir=/nope", "noise_dir=/nope"]) == 2
    with pytest.raises(SystemExit) as exc:  # argparse: not a key=value word
        main(["shard", "build", "demo", "--out", str(tmp_path / "y"), "notkv"])
    assert exc.value.code == 2
    assert main(["shard", "build", "demo", "--out", str(tmp_path / "s"), "--executor", "slurm", "--dry-run",
                 "--slurm", "array_tasks=3", "train_clips=4", "speech=procedural", "--shard-samples", "1"]) == 0
    printed = capsys.readouterr().out  # the scripts submitit would submit (orchestrator's SLURM launcher)
    assert printed.count("#SBATCH --array=0-2%3") == 1 and "#SBATCH --dependency='afterok:<array>'" in printed
    assert (tmp_path / "s" / ".build" / "plan.json").is_file() and not (tmp_path / "s" / "train").exists()
    assert main(["shard", "build", "demo", "--out", str(tmp_path / "s"), "--executor", "slurm", "--dry-run",
                 "--slurm", "partiton=x"]) == 2
    assert "--slurm partiton: unknown setting; valid: array_tasks=0" in capsys.readouterr().err
