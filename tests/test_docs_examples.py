"""Every command example in README.md and in each command's --help epilog is extracted, classified
here, and (when it needs no cluster) executed, so the documentation cannot drift from the code.

The examples run in a sandbox folder: ``data/demo`` is the session's tiny demo corpus (train/valid/
test shards, conftest ``journey_corpus``), ``sweeps/`` the repository's sweep files, plus a
``run.yaml`` and a ``noisy.wav`` that examples name. Long examples get small overrides appended
(2 training steps, a tiny model, fewer clips): argparse and the config take the last value given.
An example that is not classified below fails `test_every_example_is_classified`.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from orchestrator import cli
from orchestrator.commands import __path__ as COMMANDS_PATH  # noqa: N812

REPO = Path(__file__).resolve().parents[1]
TINY = "model.options={hidden: 4, num_blocks: 1, level_heads: 2, middle_heads: 4}"
SHORT = ["trainer.max_steps=2", "trainer.val_every=2", "trainer.ckpt_every=2", "trainer.log_every=1",
         "data.valid_limit=1", "data.segment_samples=1800", "data.batch_size=2", "trainer.pesq_workers=1",
         "trainer.num_threads=1"]
DEMO_DATA = ["data.train=data/demo/train", "data.valid=data/demo/valid"]
SMALL_DEMO = ["train_clips=4", "valid_clips=1", "test_clips=1", "speech=procedural", "min_seconds=1.0",
              "max_seconds=1.2", "--workers", "1"]

# example -> ("run", extra args, expected exit code) | ("skip", reason)
RUN, SKIP = "run", "skip"
CLUSTER = "needs a SLURM cluster / its submitted sweep (covered by tests/test_slurm_sweep.py on the test cluster)"
PLACEHOLDER = "placeholder paths (CKPT, DIR, A, B, ~/..., /data/...) stand for the user's own files"
SERVER = "a foreground server that runs until Ctrl-C"
MLFLOW_SERVER = ("the same commands through cli.main in tests/test_mlflow_server.py (start in the background on a "
                 "recorded port, --status, --stop), which also checks what they print")
RAY = "Ray (slow to start on 2 cores; tests/test_tune.py and tests/test_sweep_local.py run it, marked slow)"
EXAMPLES: dict[str, tuple] = {
    # ---- README
    "orchestrate --help": (RUN, [], 0),
    "orchestrate config --keys": (RUN, [], 0),
    "orchestrate config trainer.max_step=3": (RUN, [], 2),  # the README shows this error
    "orchestrate evaluate runs/demo/cells/rwsa-xs_s0 --testset data/demo/test": (RUN, ["--workers", "1"], 0),
    "orchestrate compare runs/demo": (RUN, [], 0),
    "orchestrate ui --sweep runs/demo": (SKIP, SERVER),
    "orchestrate shard build demo --out data/demo": (RUN, ["--out", "data/demo_built", *SMALL_DEMO], 0),
    "orchestrate train rwsa-xs data.train=data/demo/train data.valid=data/demo/valid data.segment_samples=7560 "
    "data.batch_size=4 data.valid_limit=8 trainer.max_steps=3000 trainer.val_every=50 trainer.ckpt_every=50 "
    "trainer.pesq_workers=1 --workdir runs/learn": (RUN, [TINY, *SHORT], 0),
    # ---- sweep
    "orchestrate sweep sweeps/demo.yaml": (RUN, [TINY, *SHORT, "eval.num_workers=1", "launcher.max_parallel=2"], 0),
    "orchestrate sweep sweeps/rwsa_sizes.yaml --dry-run": (RUN, [], 2),  # plan shown, then the placeholders refused
    "orchestrate sweep sweeps/rwsa_sizes.yaml": (SKIP, CLUSTER),
    "orchestrate sweep sweeps/baselines.yaml trainer.max_steps=1000 --root /scratch/me/runs": (SKIP, CLUSTER),
    "orchestrate sweep sweeps/demo.yaml --executor ray": (SKIP, RAY),
    "orchestrate sweep sweeps/demo.yaml --grid trainer.seed=0,1,2 --dry-run": (RUN, [], 0),
    "orchestrate sweep sweeps/demo.yaml trainer.seed=[7,8] --dry-run": (RUN, [], 0),
    # ---- train
    "orchestrate train rwsa-xs --workdir runs/xs": (RUN, [TINY, *SHORT, *DEMO_DATA], 0),
    "orchestrate train semamba trainer.max_steps=2000 data.batch_size=4 --workdir runs/sm":
        (RUN, ["model.options={channels: 8, num_blocks: 1}", *SHORT, *DEMO_DATA], 0),
    "orchestrate train rwsa-xs --workdir runs/xs --nproc 2": (RUN, [TINY, *SHORT, *DEMO_DATA, "trainer.max_steps=3"], 0),
    "orchestrate train rwsa-xs --config run.yaml --print-config": (RUN, [], 0),
    # ---- tune
    "orchestrate tune sweeps/tune_demo.yaml": (SKIP, RAY),
    "orchestrate tune sweeps/tune_demo.yaml trainer.max_steps=400": (SKIP, RAY),
    "orchestrate tune sweeps/tune_demo.yaml --address auto": (SKIP, RAY),
    # ---- status / cancel / resume (a submitted cluster sweep)
    "orchestrate status rwsa_sizes": (SKIP, CLUSTER),
    "orchestrate status runs/rwsa_sizes --json": (SKIP, CLUSTER),
    "orchestrate cancel rwsa_sizes": (SKIP, CLUSTER),
    "orchestrate cancel rwsa_sizes rwsa-m_s3 rwsa-m_s4": (SKIP, CLUSTER),
    "orchestrate resume rwsa_sizes": (SKIP, CLUSTER),
    "orchestrate resume /scratch/me/runs/baselines": (SKIP, CLUSTER),
    # ---- compare
    "orchestrate compare runs/rwsa_sizes": (SKIP, CLUSTER),
    "orchestrate compare runs/mambattention_table2": (SKIP, CLUSTER + "; tests/test_fidelity_tables.py: golden"),
    "orchestrate compare runs/mambattention_table5 --layout generic": (SKIP, CLUSTER),
    "orchestrate compare runs/rwsa_sizes --plot": (SKIP, CLUSTER + "; tests/test_figures.py plots a real local sweep"),
    "orchestrate evaluate --noisy-only --testset data/ears_wham_v2_official/test": (SKIP, PLACEHOLDER),
    "orchestrate plan sweeps/rwsa_sizes.yaml": (RUN, [], 0),
    "orchestrate plan sweeps/baselines.yaml --device h100": (RUN, [], 0),
    "orchestrate plan sweeps/demo.yaml trainer.max_steps=1000": (RUN, [], 0),
    "orchestrate shard build dns2020 --out /scratch/dns clean_dir=/data/DNS/clean noise_dir=/data/DNS/noise "
    "total_hours=3000 --executor slurm --profile lumi --slurm partition=small --slurm array_tasks=200": (SKIP, PLACEHOLDER),
    "orchestrate shard index /data/other-wds": (SKIP, PLACEHOLDER + "; tests/test_wds_interop.py indexes real ShardWriter output"),
    "orchestrate compare rwsa_sizes --tracking-uri http://login1:5055 --format latex": (SKIP, CLUSTER),
    "orchestrate compare demo --format json > demo.json": (RUN, [], 0),
    "orchestrate compare demo --experiment demo --format csv -o demo.csv": (RUN, [], 0),
    # ---- evaluate / enhance / analyze / report
    "orchestrate evaluate runs/x/checkpoints/best --testset ~/data/vb_demandex_test --name vbdx --json":
        (SKIP, PLACEHOLDER),
    "orchestrate evaluate CKPT --testset DIR --metrics pesq,si_sdr --chunk-seconds 10 --overlap-seconds 0":
        (SKIP, PLACEHOLDER),
    "orchestrate enhance runs/demo/cells/rwsa-xs_s0 noisy.wav --out enhanced/": (RUN, [], 0),
    "orchestrate enhance runs/x/checkpoints/best ~/recordings/ --out enhanced/ --keep-rate": (SKIP, PLACEHOLDER),
    "orchestrate enhance CKPT long_meeting.flac --out out/ --mode chunked --chunk-seconds 10 --overlap-seconds 0":
        (SKIP, PLACEHOLDER),
    "orchestrate analyze spectrogram runs/demo/cells/rwsa-xs_s0 --testset data/demo/test --files 3 --out figs/":
        (RUN, ["--no-mlflow"], 0),
    "orchestrate analyze spectrogram CKPT --testset ~/vbdx_test --keys p232_001,p257_010 --out figs/": (SKIP, PLACEHOLDER),
    "orchestrate analyze tsne CKPT --testset ~/vbdx_test --testset ~/dns_noreverb --testset ~/ears_wham --out figs/":
        (SKIP, PLACEHOLDER),
    "orchestrate analyze tsne CKPT --testset A --testset B --with-clean --limit 100 --out figs/": (SKIP, PLACEHOLDER),
    "orchestrate report efficiency": (RUN, ["--models", "rwsa-xs", "--clips", "1"], 0),
    "orchestrate report efficiency --models rwsa-xs,mambattention --testset data/demo/test --limit 20":
        (RUN, ["--limit", "1", "--models", "rwsa-xs"], 0),  # mambattention alone took 45 s of CI on 2 cores
    "orchestrate report efficiency --models runs/demo/cells/rwsa-xs_s0 --json": (RUN, ["--clips", "1"], 0),
    "orchestrate report efficiency --sweep runs/demo": (RUN, [], 0),
    # ---- models / config
    "orchestrate models": (RUN, [], 0),
    "orchestrate models --names rwsa-xs,mambattention --json": (RUN, [], 0),
    "orchestrate models --measure --names rwsa-xs": (RUN, ["--no-time"], 0),  # the forward: seconds more
    "orchestrate models --measure --json --no-time": (SKIP, "every model: minutes; the measurement is the example above's, "
                                                         "its JSON: tests/test_models.py (slow)"),
    "orchestrate config": (RUN, [], 0),
    "orchestrate config run.yaml trainer.max_steps=500": (RUN, [], 0),
    "orchestrate config model.name=semamba --json": (RUN, [], 0),
    # ---- shard
    "orchestrate shard build demo --out data/demo train_clips=1000 speech=procedural --workers 2":
        (RUN, ["--out", "data/demo_built2", *SMALL_DEMO], 0),
    "orchestrate shard build dns2020 --out /scratch/dns clean_dir=... noise_dir=... --executor slurm --dry-run":
        (SKIP, PLACEHOLDER),
    "orchestrate shard build pairs --out data/dns-test root=/data/DNS/test_set/synthetic/no_reverb match=fileid":
        (SKIP, PLACEHOLDER),
    "orchestrate shard verify data/demo": (RUN, [], 0),
    "orchestrate shard stats data/demo --json": (RUN, [], 0),
    # ---- mlflow-server / ui
    "orchestrate mlflow-server runs/mlflow --background": (SKIP, MLFLOW_SERVER),
    "orchestrate mlflow-server runs/mlflow --status": (SKIP, MLFLOW_SERVER),
    "orchestrate mlflow-server runs/mlflow --stop": (SKIP, MLFLOW_SERVER),
    "orchestrate mlflow-server runs/mlflow --background --profile lumi --port 5055": (SKIP, CLUSTER),
    "orchestrate mlflow-server runs/mlflow --backend-store-uri postgresql://u:p@db/mlflow --background":
        (SKIP, "needs a PostgreSQL server"),
    "orchestrate mlflow-server runs/mlflow": (SKIP, SERVER),
    "orchestrate ui --tracking-uri sqlite:///runs/demo/mlflow.db --port 5001": (SKIP, SERVER),
}


# ------------------------------------------------------------------------------------------ extraction


def _clean(line: str) -> str:
    line = re.sub(r"\s+#.*$", "", line.strip())  # trailing comment
    line = line.removeprefix("$ ").removeprefix("bash .ci/setup.sh && ").removeprefix(".venv/bin/")
    return " ".join(line.split())


def readme_examples(text: str) -> list[str]:
    """Commands in fenced blocks (continuation lines joined) and inline `orchestrate ...` spans
    with at least one argument; the command table's syntax lines (`FILE`, `[...]`) are not examples."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            cmd = _clean(line)
            if cmd.startswith("orchestrate "):
                out.append(cmd)
    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            continue
        for span in re.findall(r"`(orchestrate [^`]+)`", line):
            cmd = _clean(span)
            if len(cmd.split()) >= 2 and (len(cmd.split()) >= 3 or cmd.split()[1].startswith("-")):
                out.append(cmd)
    return out


def readme_shown_output(text: str) -> dict[str, str]:
    """`$ command` lines in README blocks -> the output shown under them (until the next blank/`$` line)."""
    shown: dict[str, str] = {}
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ "):
                out = []
                for nxt in lines[i + 1:]:
                    if not nxt.strip() or nxt.startswith("$ "):
                        break
                    out.append(nxt)
                shown[_clean(line)] = "\n".join(out)
    return shown


def help_examples() -> list[str]:
    out = []
    for mod in cli._command_modules():
        epilog = getattr(mod, "EPILOG", "") or ""
        for line in epilog.replace("\\\n", " ").splitlines():
            cmd = _clean(line)
            if cmd.startswith("orchestrate "):
                out.append(cmd)
    return out


def all_examples() -> list[str]:
    return list(dict.fromkeys(readme_examples((REPO / "README.md").read_text()) + help_examples()))


def test_every_example_is_classified():
    found = all_examples()
    assert len(found) > 40
    unknown = [e for e in found if e not in EXAMPLES]
    assert not unknown, f"documented examples not classified in {__file__}: {unknown}"
    stale = [e for e in EXAMPLES if e not in found]
    assert not stale, f"classified examples no longer in the docs: {stale}"
    assert Path(COMMANDS_PATH[0]).is_dir()


# ------------------------------------------------------------------------------------------ execution


def _order(cmd: str) -> int:
    """Producers first: shard builds, the demo sweep (runs/demo), then its readers."""
    words = cmd.split()
    if words[1] == "shard":
        return 0
    if words[1] in ("sweep", "train"):
        return 1 if "demo.yaml" in cmd and "--dry-run" not in cmd else 2
    return 3


@pytest.fixture()
def sandbox(journey_corpus, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "demo").symlink_to(journey_corpus)
    (tmp_path / "sweeps").symlink_to(REPO / "sweeps")
    (tmp_path / "run.yaml").write_text("model: {name: rwsa-xs}\ntrainer: {max_steps: 10}\n")
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "noisy.wav", (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("SE_SCAN_BACKEND", raising=False)  # the default (fused C kernels): 107 s vs 193 s with "torch"
    return tmp_path


def test_runnable_examples_execute(sandbox, capsys):
    runnable = sorted((e for e, v in EXAMPLES.items() if v[0] == RUN), key=_order)
    shown = readme_shown_output((REPO / "README.md").read_text())
    assert shown  # the README shows at least one command's output
    timings = []
    for example in runnable:
        _, extra, expected = EXAMPLES[example]
        words = shlex.split(example)
        redirect = None
        if ">" in words:
            redirect = words[words.index(">") + 1]
            words = words[: words.index(">")]
        argv = words[1:] + list(extra)
        t0 = time.perf_counter()
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf) if redirect else contextlib.nullcontext():
            try:
                rc = cli.main(argv)
            except SystemExit as e:  # --help
                rc = e.code or 0
        timings.append((round(time.perf_counter() - t0, 1), example))
        out, err = capsys.readouterr()
        with capsys.disabled():
            print(f"{timings[-1][0]:7.1f} s  {example}", flush=True)
        assert rc == expected, f"{example!r} (+ {extra}) exited {rc}, expected {expected}:\n{err[-3000:]}"
        if redirect:
            Path(redirect).write_text(buf.getvalue())
        if example in shown:  # the README shows this command's output: it must be what it prints
            assert shown[example] in out + err, f"README shows for {example!r}:\n{shown[example]}\ngot:\n{out}{err}"
    print("\n".join(f"{t:7.1f} s  {e}" for t, e in sorted(timings, reverse=True)))
    # what the examples promise
    assert Path("demo.json").read_text().lstrip().startswith("[") and Path("demo.csv").is_file()
    assert (sandbox / "enhanced" / "noisy.wav").is_file()
    assert any((sandbox / "figs").glob("spectrogram_*.png"))
    assert (sandbox / "runs" / "demo" / "cells" / "rwsa-xs_s1" / "eval" / "final.json").is_file()
