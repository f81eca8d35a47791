"""Sweeps of many cells: how long `orchestrate sweep --dry-run`, `plan`, `status`, `cancel` and `compare`
take on a generated grid of N cells (goal: each within 10 s at 1,000 cells). Reference: the same
commands on a 10-cell grid, measured in the same run (ratio = N cells / 10 cells).

Each command runs as the user runs it: a fresh ``python -m orchestrator.cli`` process (interpreter and
imports included), best of ``--repeats``. The grid: ``optim.lr`` (10 values) x ``trainer.seed``
(N / 10) of RWSA-XS on a tiny procedural corpus, SLURM executor with the local test profile (the
dry run renders the job arrays, split at MaxArraySize). The sweep folder for `status`, `cancel` and
`compare` is written by the orchestrator's own planning (`write_cells`, the MLflow parent run in a
SQLite store); each cell gets a progress.json from the trainer's writer and an attempts.log line.

- status: a third of the cells done, a third preempted, a third running (a real ``sleep`` in a shell
  naming the cell folder, in its own session, recorded as ``local:<pid>``);
- cancel: every running cell; those processes must all end by SIGTERM (above ``--process-cells`` the
  running cells have no process: "cancel (no processes)" measures the ledger's side only);
- with ``--slurm``: status and cancel of the same grid as a SLURM sweep on the real test cluster, its
  cells one held job array (squeue/scancel answer for all of them);
- compare: one finished MLflow child run per cell (real MLflow, SQLite), with every flattened config
  key as a param (as the trainer logs them) and eval/<testset>/{enhanced,noisy}/<metric> metrics; built
  for ``--compare-cells`` at most (creating 10,000 runs in SQLite takes long: say so with the flag).

    python benchmarks/bench_sweep_scale.py                       # 10 (reference) and 1,000 cells
    python benchmarks/bench_sweep_scale.py --cells 1000 10000    # + 10,000 (compare at 1,000 only)
    python benchmarks/bench_sweep_scale.py --slurm               # + status/cancel on the real test SLURM
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REFERENCE_CELLS = 10
GOAL_S = 10.0
TESTSET = "demo/test"
METRICS = {"pesq": 2.9, "estoi": 0.85, "si_sdr": 17.0, "ssnr": 9.0}


def cli(*args: str, repeats: int, env: dict) -> list[float]:
    """Wall times of ``orchestrate ARGS`` in fresh processes (stdout discarded)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"orchestrate {' '.join(args[:2])} failed ({r.returncode}): {r.stderr[-2000:]}")
    return times


@contextlib.contextmanager
def test_cluster(base: Path):
    """The suite's real SLURM cluster on this machine (munged, slurmctld, two slurmd)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from slurm_cluster import SlurmCluster, slurm_available

    reason = slurm_available()
    if reason:
        raise SystemExit(f"--slurm: {reason}")
    with SlurmCluster(base).as_default() as cluster:
        yield cluster


def python_floor(repeats: int, env: dict) -> dict[str, float]:
    """What any command pays before its own work: the CLI's start-up, and importing MLflow (compare)."""
    out = {}
    for what, code in (("python + orchestrator.cli import", "import orchestrator.cli"),
                       ("python + mlflow client import", "from mlflow.tracking import MlflowClient")):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
            times.append(time.perf_counter() - t0)
        out[what] = min(times)
    return out


def write_sweep(work: Path, corpus: Path, cells: int) -> Path:
    seeds = max(1, cells // 10)
    spec = {"name": f"scale{cells}", "profile": "local", "executor": "slurm",
            "base": {"model.name": "rwsa-xs", "data.train": str(corpus / "train"), "data.valid": str(corpus / "valid"),
                     "data.segment_samples": 7560, "data.batch_size": 2, "trainer.max_steps": 60},
            "grid": {"optim.lr": [round(1e-4 * (i + 1), 6) for i in range(10)], "trainer.seed": list(range(seeds))}}
    path = work / f"scale{cells}.yaml"
    path.write_text(json.dumps(spec))
    return path


def sweep_folder(sweep: Path, root: Path) -> tuple[Path, list]:
    """The sweep folder as `orchestrate sweep` writes it (local executor, MLflow parent run in SQLite),
    each cell with a progress.json and an attempts.log line; returns (folder, plan cells)."""
    from orchestrator.sweeps.plan import build_plan
    from orchestrator.sweeps.run import connect_mlflow, write_cells
    from training.progress import ProgressFile

    plan = build_plan(sweep, executor="local", root=root)
    connect_mlflow(plan)
    write_cells(plan)
    for i, cell in enumerate(plan.cells):
        cdir = plan.cell_dir(cell)
        ProgressFile(cdir, max_steps=60).update(60 if i % 3 == 0 else 20 + i % 30, "running")
        (cdir / "attempts.log").write_text("2026-01-01T00:00:00Z start local:1\n")
    return plan.sweep_dir, plan.cells


def set_states(sweep_dir: Path, running: list[str], sleeps: dict[str, subprocess.Popen]) -> None:
    """Cells done / preempted / running (on a live ``sleep`` each when ``sleeps`` has one)."""
    from orchestrator.ledger import Ledger, set_state

    with Ledger(sweep_dir).locked() as data:
        for i, (cid, rec) in enumerate(sorted(data["cells"].items(), key=lambda kv: kv[1]["index"])):
            if cid in running:
                set_state(rec, "running", job_id=f"local:{sleeps[cid].pid}" if cid in sleeps else None)
            else:
                set_state(rec, "done" if i % 3 == 0 else "preempted", job_id=None)


def mlflow_runs(sweep_dir: Path, cells: list) -> float:
    """One finished child run per cell under the sweep's parent run; returns the seconds it took."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from common.config import flatten

    ml = json.loads((sweep_dir / "ledger.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=ml["tracking_uri"])
    exp = client.get_run(ml["parent_run_id"]).info.experiment_id
    t0 = time.perf_counter()
    for cell in cells:
        tags = {**cell.config.mlflow.tags, "mlflow.parentRunId": ml["parent_run_id"]}
        run = client.create_run(exp, run_name=cell.id, tags=tags).info.run_id
        params = [Param(k, v[:500]) for k, v in flatten(cell.config).items()] + [Param("model.params", "2250000")]
        now = int(time.time() * 1000)
        metrics = [Metric(f"eval/{TESTSET}/{kind}/{m}", v + (0.01 * cell.config.trainer.seed if kind == "enhanced"
                                                                else -1.0), now, 60)
                   for m, v in METRICS.items() for kind in ("enhanced", "noisy")]
        for i in range(0, len(params), 100):
            client.log_batch(run, params=params[i:i + 100])
        client.log_batch(run, metrics=metrics, tags=[RunTag("se.seed", str(cell.config.trainer.seed))])
        client.set_terminated(run, "FINISHED")
    return time.perf_counter() - t0


def measure_slurm(n: int, sweep: Path, root: Path, cluster, repeats: int, env: dict) -> dict[str, list[float]]:
    """`status` and `cancel` of an N-cell SLURM sweep on the real test cluster (tests/slurm_cluster.py):
    the cells' jobs are one held array of ``sleep`` tasks (queued, never started), recorded in the
    ledger as `orchestrate sweep` records a submission; cancel must leave none of them queued."""
    from orchestrator.ledger import Ledger, set_state
    from orchestrator.sweeps.plan import build_plan
    from orchestrator.sweeps.run import write_cells

    plan = build_plan(sweep, executor="slurm", root=root / "slurm", overrides=["mlflow.enabled=false"])
    write_cells(plan)
    array = cluster.run("sbatch", "--parsable", "--hold", f"--array=0-{n - 1}", "-o", "/dev/null",
                        "--wrap", "sleep 1").strip()
    with Ledger(plan.sweep_dir).locked() as data:
        for rec in data["cells"].values():
            set_state(rec, "submitted", job_id=f"{array}_{rec['index']}", job_ids=[f"{array}_{rec['index']}"])
    env = {**env, **{k: v for k, v in cluster.env.items() if k.startswith("SLURM")}}
    out = {"status (SLURM)": cli("status", str(plan.sweep_dir), repeats=repeats, env=env),
           "cancel (SLURM)": cli("cancel", str(plan.sweep_dir), repeats=1, env=env)}
    left = cluster.run("squeue", "-h", "-r", "-j", array, "-t", "PENDING,RUNNING", "-o", "%i", check=False).split()
    assert not left, f"cancel left {len(left)} tasks of array {array} queued"
    return out


def measure(n: int, work: Path, corpus: Path, repeats: int, compare_cells: int, process_cells: int,
            env: dict, cluster=None) -> dict[str, list[float]]:
    sweep = write_sweep(work, corpus, n)
    root = work / f"runs{n}"
    out = {"sweep --dry-run": cli("sweep", str(sweep), "--dry-run", "--root", str(root), repeats=repeats, env=env),
           "plan": cli("plan", str(sweep), "--root", str(root), repeats=repeats, env=env)}
    sweep_dir, cells = sweep_folder(sweep, root)
    running = [c.id for i, c in enumerate(cells) if i % 3 == 2]
    # the cell folder on the command line: the process is recognisably the cell's (as a trainer's is)
    sleeps = {cid: subprocess.Popen(["sh", "-c", "sleep 600; :", str(sweep_dir / "cells" / cid)],
                                    start_new_session=True) for cid in running} if n <= process_cells else {}
    try:
        set_states(sweep_dir, running, sleeps)
        out["status"] = cli("status", str(sweep_dir), repeats=repeats, env=env)
        out["cancel" if sleeps else "cancel (no processes)"] = cli("cancel", str(sweep_dir), repeats=1, env=env)
        codes = [p.wait(timeout=60) for p in sleeps.values()]
        assert all(c == -signal.SIGTERM for c in codes), "cancel left a running cell's process alive"
    finally:
        for p in sleeps.values():
            if p.poll() is None:
                p.kill()
    if cluster is not None and n <= 1000:  # the test cluster's MaxArraySize is SLURM's default, 1001
        out |= measure_slurm(n, sweep, root, cluster, repeats, env)
    if n <= compare_cells:
        made = mlflow_runs(sweep_dir, cells)
        print(f"# {n} cells: {made:.0f} s to create their MLflow runs (SQLite)", flush=True)
        out["compare"] = cli("compare", str(sweep_dir), "--no-log", repeats=repeats, env=env)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, nargs="+", default=[1000], help="grid sizes (multiples of 10)")
    p.add_argument("--repeats", type=int, default=2, help="runs per command; the best counts")
    p.add_argument("--compare-cells", type=int, default=1000, help="build MLflow runs for compare up to this size")
    p.add_argument("--process-cells", type=int, default=1000,
                   help="up to this size, each running cell is a real process that cancel must stop")
    p.add_argument("--slurm", action="store_true",
                   help="also status/cancel on the real test SLURM cluster (tests/slurm_cluster.py; needs root)")
    p.add_argument("--keep", help="work in this folder and keep it (default: a temporary one)")
    a = p.parse_args(argv)
    from sharding.recipes.demo import prepare_demo

    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "corpus"
        if not (corpus / "train" / "manifest.json").exists():
            prepare_demo(corpus, speech="procedural", train_clips=8, valid_clips=2, test_clips=0, shard_samples=4,
                         min_seconds=1.0, max_seconds=1.5)
        with contextlib.ExitStack() as stack:
            cluster = stack.enter_context(test_cluster(work / "slurm-cluster")) if a.slurm else None
            results = {n: measure(n, work, corpus, a.repeats, a.compare_cells, a.process_cells, env, cluster)
                       for n in [REFERENCE_CELLS, *a.cells]}
    ref = results[REFERENCE_CELLS]
    floor = python_floor(a.repeats, env)
    print(f"# best of {a.repeats} (cancel: 1 run), fresh `python -m orchestrator.cli` each; reference: "
          f"{REFERENCE_CELLS} cells in the same run; goal <= {GOAL_S:.0f} s; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for what, t in floor.items():
        print(f"# floor: {what}: {t:.2f} s")
    print(f"{'command':22s} {'cells':>6s} {'seconds':>8s} {'spread':>7s} {'vs ' + str(REFERENCE_CELLS):>7s} {'goal':>5s}")
    for n, rows in results.items():
        for cmd, times in rows.items():
            best = min(times)
            ratio = best / min(ref.get(cmd) or ref[cmd.split()[0]])
            ok = "ok" if best <= GOAL_S else "MISS"
            print(f"{cmd:22s} {n:6d} {best:8.2f} {max(times) - best:7.2f} {ratio:6.1f}x {ok:>5s}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
