"""Sweep files: validation errors, grid expansion, cell ids, dry-run sbatch scripts (+ golden file)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main as cli_main
from orchestrator.errors import UserError
from orchestrator.launchers.slurm import SlurmLauncher
from orchestrator.sweeps.plan import build_plan, expand
from orchestrator.sweeps.run import launcher_for, plan_cells
from orchestrator.sweeps.spec import load_sweep
from training.config import load_run_config, to_yaml

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "sbatch_lumi.txt"


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def slurm_scripts(plan, indices=None):
    """``[(cells, sbatch text)]`` that submitit will submit for the plan's cells."""
    return [([c for c, _ in members], text) for members, text in launcher_for(plan).render(plan_cells(plan, indices))]


def parse_sbatch(script: str) -> dict[str, str | None]:
    """#SBATCH directives → {option: value}; each must be exactly one shell word."""
    out: dict[str, str | None] = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            words = shlex.split(line[len("#SBATCH "):])
            assert len(words) == 1, f"directive is not one shell word: {line!r}"
            key, _, value = words[0].partition("=")
            assert key.startswith("--"), line
            out[key[2:]] = value if _ else None
    return out


def test_expand_grid_ids_overrides_and_exclusions(tmp_path):
    p = write(tmp_path, """
name: t
base: {trainer.max_steps: 10, data.batch_size: 4}
grid:
  model.name: [rwsa-xs, rwsa-s]
  trainer.seed: [0, 1, 2]
overrides:
  - match: {model.name: rwsa-s}
    set: {data.batch_size: 2, trainer.max_steps: 20}
exclude:
  - {model.name: rwsa-s, trainer.seed: 2}
resources: {nproc: 2, time_min: 30}
executor: local
""")
    cells = expand(load_sweep(p))
    assert [c.id for c in cells] == ["rwsa-xs_s0", "rwsa-xs_s1", "rwsa-xs_s2", "rwsa-s_s0", "rwsa-s_s1"]
    assert [c.index for c in cells] == [0, 1, 2, 3, 4]
    xs, s = cells[0].config, cells[4].config
    assert (xs.model.name, xs.trainer.seed, xs.data.batch_size, xs.trainer.max_steps) == (
        "rwsa-xs", 0, 4, 10)
    assert (s.model.name, s.trainer.seed, s.data.batch_size, s.trainer.max_steps) == (
        "rwsa-s", 1, 2, 20)
    assert xs.launcher.nproc == 2 and xs.launcher.time_min == 30 and xs.launcher.executor == "local"
    assert xs.mlflow.run_name == "rwsa-xs_s0"
    assert xs.mlflow.tags == {"se.sweep": "t", "se.cell": "rwsa-xs_s0"}
    # command-line overrides apply to every cell, after the sweep's own values
    cells2 = expand(load_sweep(p), ["data.batch_size=8"])
    assert {c.config.data.batch_size for c in cells2} == {8}


def test_named_variants_and_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("trainer:\n  max_steps: 7\nmodel:\n  name: semamba\n")
    p = write(tmp_path, """
name: abl
base: base.yaml
grid:
  variant:
    default: {}
    after: {model.name: mambattention-attn-after, model.options: {attn_position: after}}
  lr: {lo: {optim.lr: 1.0e-4}, hi: {optim.lr: 1.0e-3}}
""")
    cells = expand(load_sweep(p))
    assert [c.id for c in cells] == ["default_lo", "default_hi", "after_lo", "after_hi"]
    assert cells[0].config.model.name == "semamba" and cells[0].config.trainer.max_steps == 7
    assert (cells[3].config.model.name, cells[3].config.model.options) == ("mambattention-attn-after",
                                                                           {"attn_position": "after"})
    assert cells[3].config.optim.lr == pytest.approx(1e-3)
    assert cells[3].values == {"variant": "after", "lr": "hi"}


@pytest.mark.parametrize("text, where", [
    ("name: x\ngrid: {trainer.seed: []}\n", "grid.trainer.seed: expected a non-empty list"),
    ("name: x\ngrid: {trainer.seed: 3}\n", "grid.trainer.seed: expected a list"),
    ("name: 'a b'\n", "name: expected a folder-safe name"),
    ("name: x\ngrids: {}\n", "grids: unknown key"),
    ("name: x\nresources: {gpu: 1}\n", "resources.gpu: unknown resource"),
    ("name: x\nexecutor: pbs\n", "executor: expected one of slurm, local, ray"),
    ("name: x\ngrid: {trainer.seed: [0]}\nexclude: [{model.name: a}]\n", "exclude[0].model.name: not a grid axis"),
    ("name: x\ngrid: {trainer.seed: [0]}\nexclude: [{trainer.seed: 5}]\n", "exclude[0].trainer.seed: 5 is not one"),
    ("name: x\ngrid: {trainer.seed: [0]}\noverrides: [{match: {trainer.seed: 0}}]\n", "overrides[0]: expected"),
    ("name: x\ngrid: {trainer.seed: [0]}\nexclude: [{trainer.seed: 0}]\n", "every cell of the grid is excluded"),
])
def test_sweep_errors_name_file_and_key(tmp_path, text, where):
    p = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        expand(load_sweep(p))
    assert str(e.value).startswith(str(p)) and where in str(e.value), str(e.value)


def test_bad_run_config_value_names_the_cell_and_key(tmp_path, capsys):
    p = write(tmp_path, "name: x\ngrid: {trainer.max_steps: [10, ten]}\nexecutor: local\n")
    rc = cli_main(["sweep", str(p), "--dry-run", "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and str(p) in err and "trainer.max_steps" in err and "ten" in err
    assert not (tmp_path / "runs").exists()


def test_dry_run_rwsa_sizes_on_lumi_is_a_valid_sbatch_script(tmp_path, capsys):
    root = tmp_path / "runs with space$HOME;'q'"
    rc = cli_main(["sweep", str(REPO / "sweeps/rwsa_sizes.yaml"), "--dry-run", "--root", str(root)])
    text, err = capsys.readouterr()
    # the plan is shown, then the pre-submit checks refuse it here (exit 2): placeholder account and
    # image, DNS data not built on this machine (orchestrator.preflight, tests/test_preflight.py)
    assert rc == 2 and "resources.account: 'project_xxx' is a placeholder" in err and "data/dns2020/train" in err
    assert "#   [14] rwsa-m_s4: model.name=rwsa-m, trainer.seed=4" in text
    script = text[text.index("#!/bin/bash"):]
    d = parse_sbatch(script)
    assert d["array"] == "0-14%15" and d["nodes"] == "1" and d["ntasks-per-node"] == "8"
    assert d["gpus-per-node"] == "8" and d["cpus-per-task"] == "7" and d["mem"] == "480GB"
    assert d["time"] == "2880" and d["partition"] == "standard-g" and d["account"] == "project_xxx"
    assert d["signal"] == "USR2@600" and "requeue" in d and d["job-name"] == "rwsa_sizes"
    folder = f"{root.resolve()}/rwsa_sizes/logs"
    assert d["output"] == f"{folder}/%A_%a_0_log.out" and d["chdir"] == os.getcwd()
    assert "--cpu-bind=mask_cpu:fe000000000000,fe00000000000000,fe0000,fe000000,fe,fe00,fe00000000,fe0000000000" in script
    assert 'export NCCL_SOCKET_IFNAME="hsn0,hsn1,hsn2,hsn3"' in script and "singularity exec" in script
    assert not root.exists()  # a dry run writes nothing
    # small-g (4 of 8 GCDs): LUMI's per-GCD CPU masks hold for whole nodes only, so none
    rc = cli_main(["sweep", str(REPO / "sweeps/baselines.yaml"), "--dry-run", "--root", str(root)])
    assert rc == 2  # placeholders and unbuilt data, as above; the script is still shown
    partial = capsys.readouterr().out
    assert "partition=small-g" in partial and "--cpu-bind" not in partial
    # bash parses it, and the srun line hands submitit its folder exactly (spaces, $, ', ;)
    f = tmp_path / "job.sbatch"
    f.write_text(script)
    assert subprocess.run(["bash", "-n", str(f)]).returncode == 0
    command = script[script.index("# command"):]
    r = subprocess.run(["bash", "-c", "srun() { printf '%s\\n' \"$@\"; }\n" + command], capture_output=True, text=True)
    argv = r.stdout.splitlines()
    assert argv[:3] == ["--unbuffered", "--output", f"{folder}/%A_%a_%t_log.out"], r.stderr
    assert argv[-6] == "/scratch/project_xxx/containers/se-orchestrator-rocm.sif" and argv[-5] == "python"
    assert argv[-1] == folder and argv[-4:-1] == ["-u", "-m", "submitit.core._submit"]
    # the cells travel to the job as pickled arguments of slurm_task.run_cell, not as shell words
    plan = build_plan(REPO / "sweeps/rwsa_sizes.yaml", root=root)
    dirs, envs, requeue = launcher_for(plan).task_arguments(plan_cells(plan))
    assert dirs[14] == f"{root.resolve()}/rwsa_sizes/cells/rwsa-m_s4" and requeue == [True] * 15
    # every task sees the job's GCDs and picks local rank mod count (no per-task ROCR_VISIBLE_DEVICES)
    assert "ROCR_VISIBLE_DEVICES" not in envs[0] and envs[0]["MIOPEN_USER_DB_PATH"].endswith("-$SLURM_LOCALID")


def test_hostile_values_are_single_shell_words(tmp_path):
    p = write(tmp_path, """
name: q
grid: {trainer.seed: [0, 1]}
resources: {partition: "gpu; rm -rf /", account: "a b'c", qos: "$(id)"}
profile: local
""")
    plan = build_plan(p, root=tmp_path / "r")
    ((cells, script),) = slurm_scripts(plan)
    d = parse_sbatch(script)
    assert d["partition"] == "gpu; rm -rf /" and d["account"] == "a b'c" and d["qos"] == "$(id)"


def test_cells_with_different_resources_go_to_separate_arrays(tmp_path):
    p = write(tmp_path, """
name: mixed
grid: {model.name: [rwsa-xs, rwsa-m], trainer.seed: [0, 1]}
overrides: [{match: {model.name: rwsa-m}, set: {launcher.time_min: 600}}]
profile: local
""")
    plan = build_plan(p, root=tmp_path / "r")
    scripts = slurm_scripts(plan)
    assert [[c.id for c in cells] for cells, _ in scripts] == [["rwsa-xs_s0", "rwsa-xs_s1"], ["rwsa-m_s0", "rwsa-m_s1"]]
    assert parse_sbatch(scripts[0][1])["array"] == "0-1%2" and parse_sbatch(scripts[1][1])["array"] == "0-1%2"
    assert parse_sbatch(scripts[1][1])["time"] == "600"
    # a resubmission of one cell is a plain job (submitit submits a single submission that way)
    ((cells, part),) = slurm_scripts(plan, [1])
    assert [c.id for c in cells] == ["rwsa-xs_s1"] and "array" not in parse_sbatch(part)


def _golden_script(tmp_path) -> str:
    p = write(tmp_path, """
name: rwsa_sizes
grid: {trainer.seed: [0, 1]}
resources: {nodes: 2, qos: null}
profile: lumi
""")
    plan = build_plan(p, root="/scratch/p/runs")
    launcher = SlurmLauncher(plan.sweep_dir, job_name="rwsa_sizes", profile=plan.profile)
    launcher.folder = Path("/scratch/p/runs/rwsa_sizes/logs")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # --chdir is the submitter's folder; the golden file says /scratch/p/se-orchestrator
    try:
        ((_, script),) = launcher.render(plan_cells(plan))
    finally:
        os.chdir(cwd)
    return script.replace(f"--chdir={tmp_path}", "--chdir=/scratch/p/se-orchestrator")


def test_sbatch_script_golden_file(tmp_path):
    script = _golden_script(tmp_path)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text(), "sbatch script changed: rerun with UPDATE_GOLDEN=1 and review the diff"


def test_profile_without_requeue_or_signal(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("name: p\nrequeue: false\nsbatch_extra: ['--exclusive', '--constraint=mi250']\n")
    p = write(tmp_path, f"name: x\ngrid: {{trainer.seed: [0]}}\nprofile: {prof}\n")
    ((_, script),) = slurm_scripts(build_plan(p, root=tmp_path / "r"))
    d = parse_sbatch(script)
    assert "no-requeue" in d and "requeue" not in d and "exclusive" in d and d["constraint"] == "mi250"
    assert "`" not in script


def test_shipped_sweeps_expand(tmp_path):
    sizes = {}
    for name in ("baselines", "demo", "mambattention_ablations", "rwsa_sizes"):  # tune_*.yaml: orchestrate tune
        plan = build_plan(REPO / "sweeps" / f"{name}.yaml", root=tmp_path)
        sizes[plan.spec.name] = len(plan.cells)
        for c in plan.cells:
            assert load_run_config(None, base=yaml.safe_load(to_yaml(c.config))) == c.config
    assert sizes == {"baselines": 15, "demo": 2, "mambattention_ablations": 25, "rwsa_sizes": 15}
    abl = build_plan(REPO / "sweeps/mambattention_ablations.yaml", root=tmp_path)
    models = {c.config.model.name for c in abl.cells}
    assert models == {"mambattention", "mambattention-attn-after", "mambattention-unshared", "semamba",
                      "mambattention-ft"}
    from training.models import list_models

    for name in ("rwsa_sizes", "baselines"):
        plan = build_plan(REPO / f"sweeps/{name}.yaml", root=tmp_path)
        assert all(c.config.model.name in list_models() for c in plan.cells)
    sizes_plan = build_plan(REPO / "sweeps/rwsa_sizes.yaml", root=tmp_path)
    assert {c.config.trainer.max_steps for c in sizes_plan.cells} == {950000}
    base_plan = build_plan(REPO / "sweeps/baselines.yaml", root=tmp_path)
    assert {c.config.trainer.max_steps for c in base_plan.cells} == {550000}


def test_overrides_may_follow_options(tmp_path, capsys):
    p = write(tmp_path, "name: x\ngrid: {trainer.seed: [0]}\nexecutor: local\n")
    rc = cli_main(["sweep", str(p), "--dry-run", "--root", str(tmp_path / "r"), "trainer.max_steps=ten"])
    err = capsys.readouterr().err
    assert rc == 2 and "override 'trainer.max_steps=ten'" in err and "trainer.max_steps" in err


def test_time_limit_shorter_than_twice_the_signal_is_refused(tmp_path):
    p = write(tmp_path, "name: x\ngrid: {trainer.seed: [0]}\nresources: {time_min: 15}\nprofile: lumi\n")
    with pytest.raises(UserError, match=r"resources.time_min=15 leaves no time to train.*'lumi' signals 600 s"):
        slurm_scripts(build_plan(p, root=tmp_path / "r"))


GOLDEN_LIMIT = Path(__file__).parent / "golden" / "sbatch_max_parallel.txt"


def _limit_scripts(tmp_path, max_parallel: int | None, array_parallel: int = 3) -> list[tuple[list, str]]:
    """A 5-cell SLURM sweep on a cluster whose MaxArraySize is 2 (the profile says so): its scripts."""
    prof = tmp_path / f"small_{array_parallel}.yaml"
    prof.write_text(f"name: small\ndefaults: {{partition: debug, time_min: 30, mem_gb: 2, cpus_per_task: 1}}\n"
                    f"array_parallel: {array_parallel}\nmax_array_size: 2\nmaster_addr: 127.0.0.1\npython: /opt/venv/bin/python\n")
    res = f"resources: {{max_parallel: {max_parallel}}}\n" if max_parallel else ""
    p = write(tmp_path, f"name: lim\ngrid: {{trainer.seed: [0, 1, 2, 3, 4]}}\nprofile: {prof}\n{res}", "lim.yaml")
    plan = build_plan(p, root="/scratch/p/runs")
    launcher = launcher_for(plan)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return [([c.id for c, _ in cells], text.replace(f"--chdir={tmp_path}", "--chdir=/scratch/p/se-orchestrator"))
                for cells, text in launcher.render(plan_cells(plan))]
    finally:
        os.chdir(cwd)


def test_max_parallel_is_the_array_limit_and_arrays_split_at_max_array_size(tmp_path):
    """`resources.max_parallel: N` is every array's %N (the smaller of it and the profile's array_parallel);
    MaxArraySize splits the cells into several arrays, each waiting for the one before it (afterany), so
    at most N cells of the sweep run at once. Golden: tests/golden/sbatch_max_parallel.txt."""
    scripts = _limit_scripts(tmp_path, max_parallel=2)
    assert [cells for cells, _ in scripts] == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    d = [parse_sbatch(text) for _, text in scripts]
    assert [x.get("array") for x in d] == ["0-1%2", "0-1%2", None]  # one cell: a plain job
    assert [x.get("dependency") for x in d] == [None, "afterany:<array 0>", "afterany:<array 1>"]
    text = "".join(f"# array {k}: {' '.join(cells)}\n{script}" for k, (cells, script) in enumerate(scripts))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN_LIMIT.write_text(text)
    assert text == GOLDEN_LIMIT.read_text(), "sbatch scripts changed: rerun with UPDATE_GOLDEN=1 and review the diff"
    # the profile's array_parallel, when smaller, wins
    assert [parse_sbatch(t).get("array") for _, t in _limit_scripts(tmp_path, 2, array_parallel=1)][:2] == [
        "0-1%1", "0-1%1"]
    # without a sweep limit: the same split, arrays independent (the profile's %N per array)
    free = [parse_sbatch(t) for _, t in _limit_scripts(tmp_path, None)]
    assert [x.get("array") for x in free] == ["0-1%2", "0-1%2", None] and not any("dependency" in x for x in free)


def test_max_array_size_from_the_profile_or_scontrol_text():
    """MaxArraySize: the profile's when set, else what `scontrol show config` says (its text parsed here;
    the real cluster's answer: tests/test_slurm_sweep.py)."""
    from orchestrator.launchers.slurm import max_array_size, parse_max_array_size
    from orchestrator.profiles import ClusterProfile

    text = "Configuration data as of 2026-01-01T00:00:00\nMailProg                = /bin/true\n" \
           "MaxArraySize            = 64\nMaxJobCount             = 10000\n"
    assert parse_max_array_size(text) == 64 and parse_max_array_size("MaxJobCount = 5\n") is None
    assert max_array_size(ClusterProfile(max_array_size=5)) == 5
