"""Rehearse a sweep's exact shape before it costs GPU-hours (issue 24).

    .venv/bin/python benchmarks/rehearse.py SWEEP [--executor local|slurm] [--scale F] [--seed S] [--step-s S]
        [--root DIR] [--time-limits N] [--ranks N] [--parallel N] [--server-down-s S] [--no-faults]
        [--drop-point] [--keep-server] [--report-only] [--timeout-s S] [key=value ...]

Executors: ``local`` (the local launcher; the driver requeues by rerunning `orchestrate sweep`) and
``slurm`` (the real test SLURM of tests/slurm_cluster.py, started under --root; jobs stopped at a
checkpoint requeue themselves, a SIGKILLed job is resubmitted by the next run; see run_groups).

Every cell of SWEEP runs through the real `orchestrate sweep` (launcher, ledger, the sweep's MLflow
tracking server, real tracker, checkpoint writer and training stream), with the model's forward/backward
replaced by a wait of the cell's own planned GPU step time (`trainer.rehearse_step_s`, a per-cell
override in the sweep copy; the planner's device for the sweep's profile under SLURM), validation by synthetic `val/*` values at the real cadence
and the end-of-job evaluation by scoring the noisy input (the model never runs), and `trainer.max_steps`
scaled by ``--scale``. The job time limit is scaled by the same factor: each cell's planned chains become
time-limit stops at equal step boundaries (USR2, as SLURM sends it `signal_before_end_s` before the limit;
``--time-limits N`` forces N per cell). The local executor does not requeue by itself, so the driver
requeues: it runs `orchestrate sweep` again while any cell has an event left (each run resumes the
preempted/failed cells: the same path as a user's rerun).

Faults (seeded by ``--seed``, through `SE_FAULTS` with ``cell=`` rules, common/faults.py): a USR2
preemption of one random cell at a random step, a SIGKILL of one random cell's job right after a
checkpoint, the time limits above, and the sweep's MLflow server SIGKILLed once a cell has logged a
window and restarted ``--server-down-s`` later on its recorded port (`orchestrate mlflow-server DIR
--background`). Each run's SE_FAULTS holds every cell's next job-ending event, so one run ends one
job per cell at most. An error in the server thread, or a kill that never happened, fails the rehearsal.
The sweep's MLflow server is stopped after the last run (``--keep-server`` leaves it for browsing).

Scaled down where this machine cannot carry the load (printed in the table): ``--ranks`` (ranks per cell),
``--parallel`` (cells at once; the MLflow rate scales with it), and any ``key=value`` override (e.g. the
corpus, `data.batch_size`, `data.num_workers`). One max_steps for all cells (the mean).

Prints one table; exits 1 on any loss (a metric point missing or stored twice, a cell not done, a cell
requeued other than injected, a server fault that failed). ``--drop-point`` deletes one stored point before
the check (the test of the check itself); ``--report-only`` checks a finished rehearsal in --root again.
log_batch latency is measured at the client (training.tracking's sender, around each log_batch call) and
at the server (orchestrator/mlflow_timing.py: the sweep's server is started with it while SE_SERVER_TIMING
names a folder, which the rehearsal sets).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _sweep(args, overrides: list[str], faults: str, stats: Path) -> int:
    env = {**os.environ, "SE_TRACKING_STATS": str(stats)}
    env.pop("SE_FAULTS", None)
    if faults:
        env["SE_FAULTS"] = faults
    orch = Path(sys.executable).with_name("orchestrate")
    cmd = [str(orch), "sweep", args.sweep, "--executor", args.executor, "--root", args.root, *overrides]
    print(f"rehearse: {' '.join(cmd[1:3])} ... SE_FAULTS={faults or '-'}", file=sys.stderr, flush=True)
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode


class ServerFault(threading.Thread):
    """The tracking server SIGKILLed once a cell has logged its first window (`trainer.log_every` steps
    in `progress.json`) while a sweep run is going on (`armed`), restarted `down_s` later on its recorded
    port; the driver waits for the restart before its next run (`killed`). An exception in the thread is
    kept in `error` (the driver fails on it) -- not lost with the thread."""

    def __init__(self, plan, log_every: int, down_s: float):
        super().__init__(daemon=True)
        self.server_dir, self.store = Path(plan.tracking.server_dir), plan.tracking.store
        self.cells = [plan.sweep_dir / "cells" / c.id / "progress.json" for c in plan.cells]
        self.log_every, self.down_s = log_every, down_s
        self.done, self.stop, self.error = "", threading.Event(), None
        self.outage_ms: tuple[int, int] | None = None  # (killed, answering again), epoch ms
        self.armed, self.killed, self.lock = threading.Event(), threading.Event(), threading.Lock()

    def _cell_logged(self) -> bool:
        for path in self.cells:
            try:
                if json.loads(path.read_text()).get("step", 0) >= self.log_every:
                    return True
            except (OSError, ValueError):
                pass
        return False

    def run(self):
        try:
            while True:
                if self.stop.wait(0.2):
                    return
                with self.lock:
                    if self.armed.is_set() and self._cell_logged():
                        info = json.loads((self.server_dir / "server.json").read_text())
                        os.killpg(int(info["pid"]), signal.SIGKILL)
                        killed_ms = int(time.time() * 1000)
                        self.killed.set()
                        break
            t = time.monotonic()
            time.sleep(self.down_s)
            orch = Path(sys.executable).with_name("orchestrate")
            r = subprocess.run([str(orch), "mlflow-server", str(self.server_dir), "--background",
                                "--backend-store-uri", self.store, "--host", info["host"], "--port", str(info["port"])],
                               cwd=ROOT, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"restart failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
            new = json.loads((self.server_dir / "server.json").read_text())
            self.outage_ms = (killed_ms, int(time.time() * 1000))
            self.done = (f"server pid {info['pid']} SIGKILLed, down {time.monotonic() - t:.1f} s, "
                         f"restarted as pid {new['pid']} on port {new['port']}")
        except BaseException as e:  # noqa: BLE001 -- surfaced by the driver
            self.error = e


def schedule(stops: dict[str, int], steps: int, ckpt: int, rng: random.Random, faults: bool):
    """Per cell, its job-ending events in step order [(step, what, SE_FAULTS rule aimed at the cell)]:
    `stops[cell]` time-limit stops at equal step boundaries, and with `faults` one USR2 preemption of a
    random cell at a random step and one SIGKILL after a checkpoint of a random cell."""
    cells = list(stops)
    ev = {c: {s: (s, "time limit", f"train.step=signal:USR2@step={s}@cell={c}")
              for s in (round(i * steps / (n + 1)) for i in range(1, n + 1))} for c, n in stops.items()}
    if faults:  # each at a step where its cell has no other event (one event ends one job)
        c = rng.choice(cells)
        s = rng.choice([k for k in range(1, steps) if k not in ev[c]] or [0])
        ev[c].setdefault(s, (s, "USR2 preemption", f"train.step=signal:USR2@step={s}@cell={c}"))
        c = rng.choice(cells)
        s = rng.choice([k for k in range(ckpt, steps, ckpt) if k not in ev[c]] or [0])
        ev[c].setdefault(s, (s, "SIGKILL after checkpoint", f"checkpoint.saved=kill@step={s}@cell={c}"))
    return {c: [e for k, e in sorted(d.items()) if 0 < k < steps] for c, d in ev.items()}


def run_groups(events: dict, executor: str) -> dict[str, list[list]]:
    """Per cell, its events grouped by the `orchestrate sweep` run whose SE_FAULTS holds them; the last
    group (maybe empty) is the run that finishes the cell. Local: one event a run (the local launcher
    does not requeue; the driver's next run is the requeue). SLURM: a job stopped at a checkpoint
    requeues itself (exit 75, `scontrol requeue`, orchestrator/launchers/slurm_task.py) within the same
    run, so a run holds every event up to and including a SIGKILL (a failed job: the next run resubmits it)."""
    out = {}
    for cell, es in events.items():
        out[cell] = [[]]
        for e in es:
            out[cell][-1].append(e)
            if executor == "local" or e[1] == "SIGKILL after checkpoint":
                out[cell].append([])
    return out


@contextlib.contextmanager
def test_cluster(base: Path, plan):
    """The suite's real SLURM on this machine (tests/slurm_cluster.py: munged, slurmctld, two slurmd), with
    enough CPU slots on the two nodes for the sweep's cells at once (one per rank); SLURM_CONF points at it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from slurm_cluster import SlurmCluster, slurm_available

    if reason := slurm_available():
        raise SystemExit(f"--executor slurm: {reason}")
    launcher = plan.cells[0].config.launcher
    parallel = plan.spec.resources.get("max_parallel") or len(plan.cells)
    cpus = max(launcher.nproc, -(-min(parallel, len(plan.cells)) // 2) * launcher.nproc)
    with SlurmCluster(base, cpus_per_node=cpus, mem_mb_per_node=1024 * (cpus + 1)).as_default() as cluster:
        print(f"rehearse: test SLURM up, 2 nodes x {cpus} CPUs ({base})", file=sys.stderr)
        yield cluster


def wait_settled(sweep_dir: Path, deadline: float, poll_s: float = 2.0) -> None:
    """Until no cell has a job queued or running (two polls in a row): every cell done, failed, cancelled
    or preempted. A job that requeued itself stays queued, so a chain of requeues is waited for whole."""
    from orchestrator.ledger import ACTIVE
    from orchestrator.sweeps.status import status_rows

    calm, rows = 0, []
    while time.monotonic() < deadline:
        rows = status_rows(sweep_dir)
        held = [(r["cell"], r["reason"]) for r in rows if "held" in str(r.get("reason") or "")]
        if held:  # e.g. "launch failed requeued held": SLURM will not run it again by itself
            raise SystemExit(f"rehearse: SLURM holds cells {held} (see the cluster's slurmd logs)")
        calm = calm + 1 if not any(r["state"] in ACTIVE for r in rows) else 0
        if calm >= 2:
            return
        time.sleep(poll_s)
    raise SystemExit(f"rehearse: timed out (--timeout-s) with cells {[(r['cell'], r['state'], r['step']) for r in rows]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--scale", type=float, default=0.001, help="factor on max_steps and the job time limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: the local launcher; slurm: the real test SLURM (tests/slurm_cluster.py, needs root)")
    p.add_argument("--timeout-s", type=float, default=3600, help="give up (exit 1) after this long")
    p.add_argument("--root", default="runs/rehearsal")
    p.add_argument("--step-s", type=float, default=None, help="replace the planner's step time (seconds)")
    p.add_argument("--time-limits", type=int, default=None,
                   help="time-limit stops per cell (default: the plan's chains - 1)")
    p.add_argument("--ranks", type=int, default=None,
                   help="ranks per cell on this machine (default: the sweep's resources.nproc)")
    p.add_argument("--parallel", type=int, default=None,
                   help="cells running at once (default: the sweep's resources.max_parallel, else all)")
    p.add_argument("--server-down-s", type=float, default=3.0, help="how long the killed server stays down")
    p.add_argument("--no-faults", action="store_true")
    p.add_argument("--drop-point", action="store_true", help="delete one stored point before the check")
    p.add_argument("--keep-server", action="store_true",
                   help="leave the sweep's MLflow server running afterwards (default: stopped after the last run)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: check the rehearsal already in --root (same SWEEP, options and seed)")
    args = p.parse_intermixed_args(argv)

    import yaml

    from orchestrator.ledger import Ledger
    from orchestrator.mlflow_server import TIMING_ENV
    from orchestrator.planner import device_for, plan_costs
    from orchestrator.sweeps.plan import build_plan

    original = build_plan(args.sweep, executor=None, root=args.root)  # the plan the rehearsal is compared with
    device = device_for(original.profile.name if original.profile else None, "slurm")
    _, costs = plan_costs(original, device)
    doc = yaml.safe_load(Path(args.sweep).read_text())
    doc.setdefault("mlflow", {})["server"] = True  # the sweep's own tracking server, as under SLURM
    res = doc.setdefault("resources", {})
    scaled = {"ranks/cell": (res.get("nproc", 1), args.ranks or res.get("nproc", 1)),
              "cells at once": (res.get("max_parallel", len(original.cells)), args.parallel or
                                res.get("max_parallel", len(original.cells)))}
    res.update(nproc=scaled["ranks/cell"][1], max_parallel=scaled["cells at once"][1])
    if res.get("gpus_per_node"):  # the waits stand for the GPUs: the ranks run on this machine's CPUs
        scaled["GPUs/node"] = (res.pop("gpus_per_node"), 0)
    if doc.get("profile") not in (None, "local"):
        doc["profile"] = "local"  # this machine: its MLflow host and paths, not the cluster's
    doc["executor"] = args.executor
    for key in ("partition", "account", "cpus_per_task", "mem_gb", "time_min", "nodes"):
        res.pop(key, None)  # the cluster's values: here the local profile's (one CPU a rank)
    if args.executor == "slurm":
        res.update(cpus_per_task=1, mem_gb=1)  # the ranks wait on GPUs that are not there: one CPU each
    if args.step_s is None:  # each cell its own planned step time (an override matched on its grid values)
        step_of = {c.cell: 1 / c.steps_per_s for c in costs}
        doc["overrides"] = [*(doc.get("overrides") or []), *(
            {"match": dict(c.values), "set": {"trainer.rehearse_step_s": float(f"{step_of[c.id]:.6g}")}}
            for c in original.cells)]
    Path(args.root).mkdir(parents=True, exist_ok=True)
    args.sweep = str(Path(args.root) / f"{Path(args.sweep).stem}.rehearse.yaml")
    Path(args.sweep).write_text(yaml.safe_dump(doc, sort_keys=False))
    given_step = [f"trainer.rehearse_step_s={args.step_s:.6g}"] if args.step_s is not None else []
    plan = build_plan(args.sweep, executor=args.executor, root=args.root, overrides=[*args.overrides, *given_step])
    t = plan.cells[0].config.trainer
    cell_steps = {c.id: c.config.trainer.rehearse_step_s for c in plan.cells}  # what each cell will wait
    planned_steps = statistics.mean(c.steps for c in costs)
    chains = max(c.chains for c in costs)
    # time-limit stops per cell: its planned chains - 1 (the job time limit scaled like max_steps)
    stops = {c.id: (cost.chains - 1 if args.time_limits is None else args.time_limits)
             for c, cost in zip(plan.cells, costs)}
    steps = max(2 * t.log_every, round(planned_steps * args.scale))
    ckpt = max(1, min(t.ckpt_every, steps // max(2, 2 * (max(stops.values()) + 1))))
    events = schedule(stops, steps, ckpt, random.Random(args.seed), not args.no_faults)
    overrides = [*args.overrides, *given_step, f"trainer.max_steps={steps}", f"trainer.ckpt_every={ckpt}"]
    step_text = (f"step {args.step_s * 1e3:.1f} ms (--step-s)" if args.step_s is not None else
                 f"step {min(cell_steps.values()) * 1e3:.1f}-{max(cell_steps.values()) * 1e3:.1f} ms per cell "
                 f"({device}, planner)")
    print(f"rehearse: {len(plan.cells)} cells on {args.executor}, {planned_steps:,.0f} planned steps/cell -> {steps} "
          f"(x{args.scale:g}), {step_text}, {chains} planned chain(s)/cell at most, time-limit "
          f"stops {sorted(set(stops.values()))}/cell; faults {sorted((e[0], e[1], c) for c, es in events.items() for e in es if e[1] != 'time limit')}; "
          f"simplified: one max_steps for all cells (the mean)", file=sys.stderr)
    stats = Path(args.root).resolve() / f"{plan.sweep_dir.name}.tracking-stats.jsonl"
    stats.parent.mkdir(parents=True, exist_ok=True)
    timing = Path(args.root).resolve() / f"{plan.sweep_dir.name}.server-timing"
    if not args.report_only:
        stats.unlink(missing_ok=True)
        shutil.rmtree(timing, ignore_errors=True)
        os.environ[TIMING_ENV] = str(timing)  # the sweep's server (and its restart) time each log_batch
    server = None
    if not args.no_faults and not args.report_only and plan.tracking and plan.tracking.server_dir is not None:
        server = ServerFault(plan, t.log_every, args.server_down_s)
    groups = run_groups(events, args.executor)
    t0 = time.monotonic()
    deadline = t0 + args.timeout_s
    with contextlib.ExitStack() as stack:
        if args.executor == "slurm" and not args.report_only:
            # under /tmp: slurmstepd's socket paths below the folder must stay under 108 bytes
            base = Path(tempfile.mkdtemp(prefix="rehearse-slurm-", dir="/tmp"))
            stack.callback(shutil.rmtree, base, True)
            stack.enter_context(test_cluster(base, plan))
        for i in range(0 if args.report_only else max(map(len, groups.values()))):
            rules = [e[2] for gs in groups.values() if i < len(gs) for e in gs[i]]
            if server is not None:
                server.armed.set()
                if i == 0:
                    server.start()
            _sweep(args, overrides, ";".join(rules), stats)
            if args.executor == "slurm":
                wait_settled(plan.sweep_dir, deadline)
            if server is not None:
                with server.lock:
                    server.armed.clear()
                if server.killed.is_set():
                    server.join()  # restarted before the next run (its start would otherwise race the restart)
    wall = None if args.report_only else time.monotonic() - t0
    if not args.report_only and not args.keep_server and plan.tracking and plan.tracking.server_dir is not None:
        from orchestrator.mlflow_server import stop_server  # the report reads the SQLite store directly

        if server is not None:
            server.stop.set()
            server.join(timeout=60)  # a restart still under way would start it again
        print(f"rehearse: MLflow server {stop_server(plan.tracking.server_dir)}", file=sys.stderr)
    problems = []
    if server is not None:
        server.stop.set()
        server.join(timeout=60)
        if server.error is not None:
            problems.append(f"MLflow server kill/restart failed: {type(server.error).__name__}: {server.error}")
        elif not server.done:
            problems.append("MLflow server kill/restart did not happen (no cell logged a window while it waited)")
    injected = {c: len(es) for c, es in events.items()}
    code = report(plan, Ledger(plan.sweep_dir).read(), steps, t.log_every, t.val_every, injected, costs,
                  statistics.mean(cell_steps.values()),
                  stats, server.done if server else "", wall, args.drop_point,
                  scaled | {"overrides": args.overrides}, server.outage_ms if server else None, timing)
    for line in problems:
        print(f"LOSS: {line}")
    return 1 if problems else code


def expected_steps(steps: int, log_every: int, val_every: int):
    """`want(key, stored {step: count})`: the steps at which `key` must be stored once: train/* every
    `log_every` steps and at the last; val/* every `val_every` (0: none) and at the last, the input's
    val/noisy_* at 0; eval/* once, at the step of the evaluated checkpoint (whichever was stored, else the last)."""
    train = sorted(set(range(log_every, steps + 1, log_every)) | {steps})
    val = sorted(set(range(val_every, steps + 1, val_every) if val_every else ()) | {steps})

    def want(key: str, got: dict) -> list[int]:
        if key.startswith("train/"):
            return train
        if key.startswith("val/noisy_"):
            return [0]
        if key.startswith("val/"):
            return val
        return sorted(got) or [steps]
    return want


def requeue_text(req: dict[str, int], injected: dict[str, int], costs) -> str:
    """`cell a/i (plan p)` for each cell with any of them non-zero; the others summed up."""
    plan = {c.cell: c.chains - 1 for c in costs}
    some = [c for c in req if req[c] or injected.get(c, 0) or plan.get(c, 0)]
    text = "; ".join(f"{c} {req[c]}/{injected.get(c, 0)} (plan {plan.get(c, 0)})" for c in some)
    rest = len(req) - len(some)
    return (text + (f"; {rest} other cell(s) 0/0 (plan 0)" if rest else "")) or "-"


def server_timings(folder: Path) -> list[float]:
    """Seconds of every log_batch request the sweep's server timed (orchestrator/mlflow_timing.py's
    files: all workers, all server lifetimes; a line cut by a SIGKILLed server is skipped)."""
    out: list[float] = []
    for path in sorted(Path(folder).glob("log-batch-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                out += json.loads(line)["s"]
            except (ValueError, KeyError):
                continue
    return out


def report(plan, ledger, steps, log_every, val_every, injected, costs, step_s, stats, server, wall, drop,
           scaled=None, outage_ms=None, timing: Path | None = None) -> int:
    store = plan.tracking.store
    db = store[len("sqlite:///"):]
    con = sqlite3.connect(db)
    if drop:
        con.execute("DELETE FROM metrics WHERE rowid = (SELECT rowid FROM metrics WHERE key='train/loss_g' "
                    "ORDER BY step LIMIT 1)")
        con.commit()
    want = expected_steps(steps, log_every, val_every)
    exp = stored = missing = dup = done = 0
    losses = []
    req = {}
    runs = {cid: rec.get("mlflow_run_id") for cid, rec in ledger["cells"].items()}
    have = {cid: {(k, s): n for k, s, n in con.execute(
        "SELECT key, step, COUNT(*) FROM metrics WHERE run_uuid=? AND (key LIKE 'train/%' OR key LIKE 'val/%' "
        "OR key LIKE 'eval/%') GROUP BY key, step", (run,))} if run else {} for cid, run in runs.items()}
    keys = {k for h in have.values() for k, _ in h} | {"train/loss_g", "val/pesq"}  # the union over the cells
    for cid, rec in ledger["cells"].items():
        done += rec["state"] == "done"
        req[cid] = rec.get("attempts", 1) - 1
        for k in sorted(keys):
            got = {s: n for (k2, s), n in have[cid].items() if k2 == k}
            for s in want(k, got):
                exp += 1
                n = got.get(s, 0)
                stored += n
                if n == 0:
                    missing += 1
                    losses.append(f"{cid} {k}@{s} missing")
                elif n > 1:
                    dup += n - 1
                    losses.append(f"{cid} {k}@{s} x{n}")
    outage_points = con.execute(  # the client stamps each point when logged: these waited for the restart
        "SELECT COUNT(*) FROM metrics WHERE timestamp BETWEEN ? AND ? AND key NOT LIKE 'system/%'",
        outage_ms).fetchone()[0] if outage_ms else 0
    lat, blocked = [], 0.0
    if stats.exists():
        for line in stats.read_text().splitlines():
            s = json.loads(line)
            lat += s["latencies_s"]
            blocked += s["blocked_s"]
    def pct(values: list[float], q: float) -> str:
        return f"{sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e3:.1f} ms" if values else "-"
    at_server = server_timings(timing) if timing else []
    simulated = len(ledger["cells"]) * steps * step_s
    ts = sorted(t for (t,) in con.execute("SELECT timestamp FROM metrics WHERE key NOT LIKE 'system/%'"))
    busiest = max((bisect.bisect_left(ts, t + 10_000) - i for i, t in enumerate(ts)), default=0) / 10
    rate = {run: v for run, v in con.execute(  # each cell's mean of its logged windows' steps/s
        "SELECT run_uuid, AVG(value) FROM metrics WHERE key='train/steps_per_s' GROUP BY run_uuid")}
    by_model: dict[str, list] = {}
    for c in plan.cells:
        if runs.get(c.id) in rate:
            by_model.setdefault(c.config.model.name, []).append((rate[runs[c.id]], c.config.trainer.rehearse_step_s))
    pace = "; ".join(f"{m} {statistics.mean(r for r, _ in v):.2f} / {1 / statistics.mean(s for _, s in v):.2f}"
                     for m, v in by_model.items() if all(s > 0 for _, s in v))
    rows = [
        ("metric points expected / stored", f"{exp} / {stored} (missing {missing}, duplicates {dup})"),
        ("cells done", f"{done} / {len(ledger['cells'])}"),
        ("requeues per cell: actual / injected (plan chains-1)", requeue_text(req, injected, costs)),
        ("log_batch latency p50 / p99 (client side)", f"{pct(lat, 0.5)} / {pct(lat, 0.99)} over {len(lat)} calls"),
        ("log_batch latency p50 / p99 (at the server)",
         f"{pct(at_server, 0.5)} / {pct(at_server, 0.99)} over {len(at_server)} requests"),
        ("step time blocked on tracking (goal <= 1 %)", f"{100 * blocked / simulated:.3f} %" if simulated else "-"),
        ("planner steps, jobs vs rehearsal (all cells)",
         f"{sum(c.steps for c in costs):,} steps, {sum(c.chains for c in costs)} jobs; rehearsed "
         f"{steps * len(req):,} steps, {len(req) + sum(req.values())} jobs"),
        ("MLflow points/s: planned (all cells) / rehearsal (stored / wall)",
         f"{sum(c.mlflow_points_per_h for c in costs) / 3600:.0f} / " + (f"{stored / wall:.0f}" if wall else "-")),
        ("MLflow points/s, busiest 10 s (client timestamps, no system/*)", f"{busiest:.0f}"),
        ("steps/s per cell: rehearsed / planned (mean by model)", pace or "-"),
        ("MLflow server restarts", (server or "none") + (
            f"; points logged while it was down, stored: {outage_points}" if outage_ms else "")),
        ("scaled down here (planned -> rehearsed)", "; ".join(
            f"{k} {v[0]} -> {v[1]}" if isinstance(v, tuple) else f"{k} {' '.join(v) or '-'}"
            for k, v in (scaled or {}).items()) or "-"),
        ("wall; rehearsed steps/s (all cells)", f"{wall:.0f} s; {len(ledger['cells']) * steps / wall:.2f}" if wall else "- (--report-only)"),
    ]
    w = max(len(a) for a, _ in rows)
    print(f"{'rehearsal of ' + plan.sweep_dir.name:<{w}} | result")
    for a, b in rows:
        print(f"{a:<{w}} | {b}")
    for line in losses[:20]:
        print(f"LOSS: {line}")
    for cid, n in req.items():
        if n != injected.get(cid, 0):
            print(f"LOSS: {cid} requeued {n} times, {injected.get(cid, 0)} job-ending events injected")
    bad_req = any(n != injected.get(c, 0) for c, n in req.items())
    return 1 if (missing or dup or done < len(ledger["cells"]) or bad_req) else 0


if __name__ == "__main__":
    sys.exit(main())
