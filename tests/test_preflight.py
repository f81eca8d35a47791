"""Pre-submit checks (orchestrator.preflight) through the real commands: every problem listed at
once, exit 2, nothing submitted, no sweep folder / ledger written or changed."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[1]


def sweep(tmp_path: Path, corpus: Path, name: str = "pre", **extra) -> Path:
    spec = {
        "name": name,
        "base": {"model.name": "rwsa-xs", "data.train": str(corpus / "train"), "data.valid": str(corpus / "valid"),
                 "trainer.max_steps": 2, "eval.testsets": [str(corpus / "test")]},
        "grid": {"trainer.seed": [0, 1]},
        "executor": "local",
        **extra,
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(json.dumps(spec))
    return p


def problems(err: str) -> list[str]:
    return [line[4:] for line in err.splitlines() if line.startswith("  - ")]


def test_good_sweep_passes_the_checks(journey_corpus, tmp_path, capsys):
    assert main(["sweep", str(sweep(tmp_path, journey_corpus)), "--dry-run", "--root", str(tmp_path / "r")]) == 0
    assert "[1] s1: trainer.seed=1" in capsys.readouterr().out


def test_every_problem_listed_at_once_and_nothing_submitted(journey_corpus, tmp_path, capsys):
    bad_manifest = tmp_path / "badvalid"
    bad_manifest.mkdir()
    (bad_manifest / "manifest.json").write_text("{not json")
    p = sweep(tmp_path, journey_corpus, overrides=[{"match": {"trainer.seed": 1}, "set": {"model.name": "rwsa-xl"}}])
    root = tmp_path / "r"
    for dry in ([], ["--dry-run"]):
        rc = main(["sweep", str(p), *dry, "--root", str(root), f"data.valid={bad_manifest}",
                   f"eval.testsets=[{journey_corpus / 'test'},{tmp_path / 'no_such_testset'}]"])
        err = capsys.readouterr().err
        assert rc == 2
        got = problems(err)
        assert len(got) == 3, err
        assert any("cell s1: model.name: unknown model 'rwsa-xl' (did you mean 'rwsa-xs'?)" in g for g in got)
        assert any(g.startswith("all 2 cells: data.valid:") and "manifest.json: not a valid manifest" in g
                   for g in got)
        assert any(g.startswith("all 2 cells: eval.testsets:") and "no_such_testset" in g for g in got)
        assert not root.exists()  # no sweep folder, no ledger


def test_invalid_cell_configs_all_reported(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\nexecutor: local\ngrid: {trainer.max_steps: [10, ten, -1]}\n")
    assert main(["sweep", str(p), "--dry-run", "--root", str(tmp_path / "r")]) == 2
    got = problems(capsys.readouterr().err)
    assert len(got) == 2 and got[0].startswith("cell ten:") and got[1].startswith("cell max_steps-1:")
    assert all("trainer.max_steps" in g for g in got)


def test_existing_ledger_untouched_on_refusal(journey_corpus, tmp_path, capsys):
    from orchestrator.sweeps.plan import build_plan
    from orchestrator.sweeps.run import write_cells

    root = tmp_path / "r"
    p = sweep(tmp_path, journey_corpus)
    write_cells(build_plan(p, root=root))  # the sweep folder and ledger as a run writes them
    ledger = root / "pre" / "ledger.json"
    before = ledger.read_bytes(), sorted(str(x.relative_to(root)) for x in root.rglob("*"))
    assert main(["sweep", str(p), "--root", str(root), "model.name=mambatention"]) == 2
    assert "did you mean 'mambattention'" in capsys.readouterr().err
    assert (ledger.read_bytes(), sorted(str(x.relative_to(root)) for x in root.rglob("*"))) == before


def test_slurm_placeholders_and_missing_image_refused(journey_corpus, tmp_path, capsys):
    prof = tmp_path / "prof.yaml"
    prof.write_text(f"name: prof\ndefaults: {{account: project_xxx, time_min: 30}}\nmlflow_host: 127.0.0.1\n"
                    f"container: {{image: {tmp_path / 'missing.sif'}}}\n")
    p = sweep(tmp_path, journey_corpus, profile=str(prof), executor="slurm", mlflow={"server": False})
    capsys.readouterr()
    assert main(["sweep", str(p), "--dry-run", "--root", str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert "#SBATCH" in out  # the dry run still shows its plan
    got = problems(err)
    assert len(got) == 2, err
    assert "resources.account: 'project_xxx' is a placeholder" in got[0]
    assert f"container.image: {tmp_path / 'missing.sif'} does not exist" in got[1]
    # the local executor does not need an account or an image
    assert main(["sweep", str(p), "--dry-run", "--executor", "local", "--root", str(tmp_path / "r")]) == 0


def test_unusable_tracking_uri(journey_corpus, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")  # a SQLite store under a regular file cannot be created
    p = sweep(tmp_path, journey_corpus, mlflow={"tracking_uri": f"sqlite:///{tmp_path}/afile/sub/mlflow.db"})
    assert main(["sweep", str(p), "--dry-run", "--root", str(tmp_path / "r")]) == 2
    assert f"folder {tmp_path / 'afile'} is not writable" in capsys.readouterr().err
    p = sweep(tmp_path, journey_corpus, mlflow={"tracking_uri": "http://127.0.0.1:9"})  # discard port: refused
    assert main(["sweep", str(p), "--dry-run", "--root", str(tmp_path / "r")]) == 2
    assert "http://127.0.0.1:9 does not answer" in capsys.readouterr().err


def test_train_and_tune_checked_before_work(journey_corpus, tmp_path, capsys):
    rc = main(["train", "rwsa-xl", f"data.train={journey_corpus / 'train'}", f"data.valid={tmp_path / 'nope'}",
               "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2 and "did you mean 'rwsa-xs'" in err and "data.valid" in err and not (tmp_path / "w").exists()
    t = tmp_path / "tune.yaml"
    t.write_text((REPO / "sweeps/tune_demo.yaml").read_text().replace("model.name: rwsa-xs", "model.name: rwsa-xl"))
    assert main(["tune", str(t), f"data.train={journey_corpus / 'train'}", f"data.valid={journey_corpus / 'valid'}"]) == 2
    assert "unknown model 'rwsa-xl'" in capsys.readouterr().err


def test_a_crop_the_model_cannot_take_is_refused(journey_corpus, tmp_path, capsys):
    """data.segment_samples against the model (training.model_names.segment_problem): one line naming the
    cell and the key, for sweep, train and tune; the rule is the trainer's own (same message in the job)."""
    p = sweep(tmp_path, journey_corpus, overrides=[{"match": {"trainer.seed": 1},
                                                    "set": {"data.segment_samples": 3600}}])
    assert main(["sweep", str(p), "--dry-run", "--root", str(tmp_path / "r")]) == 2
    assert problems(capsys.readouterr().err) == [  # the run config's own rule: `orchestrate config` refuses it too
        f"cell s1: {p} (overrides for cell s1): data.segment_samples=3600: rwsa-xs needs a crop whose STFT frame "
        "count (samples // 120 + 1 = 31) is a multiple of 4; use e.g. 3240 or 3720"]
    assert main(["sweep", str(p), "--dry-run", "--root", str(tmp_path / "r"), "data.segment_samples=3720"]) == 0
    # shorter than the metric discriminator takes (16 frames); without it, down to the model's 8 frames
    rc = main(["train", "semamba", f"data.train={journey_corpus / 'train'}", "data.valid=null",
               "data.segment_samples=1499", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "w").exists()
    assert ("data.segment_samples=1499: semamba needs a crop of at least 1500 samples (16 STFT frames of hop 100, "
            "for the metric discriminator: loss.discriminator=true); 1499 gives 15") in err
    assert main(["sweep", str(p), "--dry-run", "--root", str(tmp_path / "r"), "data.segment_samples=840",
                 "loss.discriminator=false"]) == 0
    t = tmp_path / "tune.yaml"
    t.write_text((REPO / "sweeps/tune_demo.yaml").read_text().replace("[3720, 7560]", "[3720, 7500]"))
    capsys.readouterr()
    assert main(["tune", str(t), f"data.train={journey_corpus / 'train'}", f"data.valid={journey_corpus / 'valid'}"]) == 2
    assert "data.segment_samples=7500: rwsa-xs needs a crop whose STFT frame count" in capsys.readouterr().err


def test_segment_rule_is_the_least_valid_crop_and_names_valid_lengths():
    from training.model_names import FRAMING, segment_problem, shortest_crop

    for name in ("rwsa-xs", "semamba"):
        f = FRAMING[name]
        for disc in (False, True):
            ok = [n for n in range(1, 4000) if n > f.n_fft // 2 and (n // f.hop + 1) % f.frame_multiple == 0
                  and n // f.hop + 1 >= max(f.min_frames, 16 if disc else 1)]
            assert shortest_crop(name, disc) == ok[0]
            assert [n for n in range(1, 4000) if segment_problem(name, n, disc) is None] == ok
    assert segment_problem("rwsa-xs", 360) == ("data.segment_samples=360: rwsa-xs needs a crop of at least 840 "
                                               "samples (8 STFT frames of hop 120); 360 gives 4")
    assert segment_problem("semamba", 200) == ("data.segment_samples=200: semamba needs a crop of at least 201 "
                                               "samples (more than half its 400-sample STFT window)")
    assert segment_problem("rwsa-xs", 2000, True).endswith("use e.g. 1800 or 2280")
    assert segment_problem("rwsa-xs", 1920, True).endswith("use e.g. 1800 or 2280")
    assert segment_problem("metric-discriminator", 5) is None and segment_problem("rwsa-xl", 5) is None


def test_shipped_sweeps_and_tune_file_pass_the_crop_check(tmp_path):
    import yaml

    from orchestrator.preflight import check_segment
    from orchestrator.sweeps.plan import build_plan

    files = sorted((REPO / "sweeps").glob("*.yaml"))
    checked = 0
    for f in files:
        if "space" in yaml.safe_load(f.read_text()):  # a tune file: its base with every crop choice
            from orchestrator.tune import load_tune_spec
            from training.config import load_run_config

            spec = load_tune_spec(f)
            cfg = load_run_config(None, [], base=spec.base)
            for seg in spec.space["data.segment_samples"][1]:
                assert check_segment(cfg, f.name, segment=seg) == []
            continue
        for cell in build_plan(f, root=tmp_path).cells:
            assert check_segment(cell.config, f"{f.name} {cell.id}") == []
            checked += 1
    assert checked >= 40
