"""Rehearse a sweep's exact shape before it costs GPU-hours (issue 24).

    .venv/bin/python benchmarks/rehearse.py SWEEP [--scale F] [--seed S] [--executor local] [--root DIR]
                                            [--no-faults] [--drop-point] [key=value ...]

Executors: ``local`` only (the normal `orchestrate sweep` local machinery). ``slurm`` is not done yet.

Every cell of SWEEP runs through the real `orchestrate sweep` (launcher, ledger, the sweep's MLflow
tracking server, real tracker, checkpoint writer and training stream), with the model's forward/backward
replaced by a wait of the planner's predicted GPU step time (`trainer.rehearse_step_s`; the planner's
device for the sweep's profile under SLURM), and `trainer.max_steps` scaled by ``--scale``. The job time
limit is scaled by the same factor: the plan's chains per cell become time-limit stops at equal step
boundaries (USR2, as SLURM sends it `signal_before_end_s` before the limit). The local executor does not
requeue by itself, so the driver requeues: it runs `orchestrate sweep` again after each stop (each run
resumes the preempted/failed cells: the same path as a user's rerun).

Faults (seeded by ``--seed``, through `SE_FAULTS`, common/faults.py): a USR2 preemption at a random step
(`train.step=signal:USR2@step=N`), a SIGKILL of the job after a checkpoint (`checkpoint.saved=kill@step=N`),
the time limits above, and the MLflow server SIGKILLed mid-run and restarted on its recorded port
(`orchestrate mlflow-server DIR --background`). SE_FAULTS is sweep-wide: each fault hits every cell
that reaches its step in that run.

Simplifications (printed): one step time and one max_steps for all cells (the mean over the cells),
the stream decodes the real corpus at rehearsal pace on this machine's cores (not at 15 GPUs' pace).

Prints one table; exits 1 on any loss (a metric point missing or stored twice, a cell not done).
``--drop-point`` deletes one stored point before the check (the test of the check itself).
log_batch latency is measured at the client (training.tracking's sender, around each log_batch call).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
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
    cmd = [str(orch), "sweep", args.sweep, "--executor", "local", "--root", args.root, *overrides]
    print(f"rehearse: {' '.join(cmd[1:3])} ... SE_FAULTS={faults or '-'}", file=sys.stderr, flush=True)
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode


def _kill_and_restart_server(server_dir: Path, store: str, after_s: float, log: list) -> threading.Thread:
    def run():
        time.sleep(after_s)
        while not (server_dir / "server.json").exists():
            time.sleep(0.5)
        info = json.loads((server_dir / "server.json").read_text())
        os.killpg(int(info["pid"]), signal.SIGKILL)
        time.sleep(2.0)
        orch = Path(sys.executable).with_name("orchestrate")
        subprocess.run([str(orch), "mlflow-server", str(server_dir), "--background", "--backend-store-uri", store,
                        "--port", str(info["port"])], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        log.append(f"killed server pid {info['pid']} at +{after_s:.0f}s, restarted on port {info['port']}")
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--scale", type=float, default=0.001, help="factor on max_steps and the job time limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--executor", choices=("local",), default="local")
    p.add_argument("--root", default="runs/rehearsal")
    p.add_argument("--step-s", type=float, default=None, help="replace the planner's step time (seconds)")
    p.add_argument("--no-faults", action="store_true")
    p.add_argument("--drop-point", action="store_true", help="delete one stored point before the check")
    args = p.parse_args(argv)

    import yaml

    from orchestrator.ledger import Ledger
    from orchestrator.planner import device_for, plan_costs
    from orchestrator.sweeps.plan import build_plan

    doc = yaml.safe_load(Path(args.sweep).read_text())
    doc.setdefault("mlflow", {})["server"] = True  # the sweep's own tracking server, as under SLURM
    Path(args.root).mkdir(parents=True, exist_ok=True)
    args.sweep = str(Path(args.root) / f"{Path(args.sweep).stem}.rehearse.yaml")
    Path(args.sweep).write_text(yaml.safe_dump(doc, sort_keys=False))
    plan = build_plan(args.sweep, executor="local", root=args.root, overrides=args.overrides)
    device = device_for(plan.profile.name if plan.profile else None, "slurm")
    _, costs = plan_costs(plan, device)
    cfg0 = plan.cells[0].config
    t = cfg0.trainer
    step_s = args.step_s if args.step_s is not None else statistics.mean(1 / c.steps_per_s for c in costs)
    planned_steps = statistics.mean(c.steps for c in costs)
    chains = max(c.chains for c in costs)
    steps = max(2 * t.log_every, round(planned_steps * args.scale))
    ckpt = max(1, min(t.ckpt_every, steps // max(2, 2 * chains)))
    rng = random.Random(args.seed)
    limits = [round(i * steps / chains) for i in range(1, chains)]
    events = [(s, "time limit", f"train.step=signal:USR2@step={s}") for s in limits]
    if not args.no_faults:
        pre = rng.randrange(1, steps)
        events.append((pre, "USR2 preemption", f"train.step=signal:USR2@step={pre}"))
        kill = rng.randrange(1, max(2, steps // ckpt)) * ckpt
        events.append((kill, "SIGKILL after checkpoint", f"checkpoint.saved=kill@step={kill}"))
    events = sorted({e[0]: e for e in events if 0 < e[0] < steps}.values())
    overrides = [*args.overrides, f"trainer.rehearse_step_s={step_s:.6g}", f"trainer.max_steps={steps}",
                 f"trainer.ckpt_every={ckpt}"]
    print(f"rehearse: {len(plan.cells)} cells, {planned_steps:,.0f} planned steps/cell -> {steps} (x{args.scale:g}), "
          f"step {step_s * 1e3:.1f} ms ({device}, planner), {chains} planned chain(s)/cell; events "
          f"{[(s, n) for s, n, _ in events]}; simplified: one step time and max_steps for all cells (means)",
          file=sys.stderr)
    stats = Path(args.root).resolve() / f"{plan.sweep_dir.name}.tracking-stats.jsonl"
    stats.parent.mkdir(parents=True, exist_ok=True)
    stats.unlink(missing_ok=True)
    server_log: list[str] = []
    t0 = time.monotonic()
    for i in range(len(events) + 1):
        faults = events[i][2] if i < len(events) else ""
        if i == 0 and not args.no_faults and plan.tracking and plan.tracking.server_dir is not None:
            _kill_and_restart_server(Path(plan.tracking.server_dir), plan.tracking.store, 8.0 + step_s * 2,
                                     server_log)
        _sweep(args, overrides, faults, stats)
    wall = time.monotonic() - t0
    return report(plan, Ledger(plan.sweep_dir).read(), steps, t.log_every, t.val_every, len(events), costs, step_s, stats,
                  server_log, wall, args.drop_point)


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


def report(plan, ledger, steps, log_every, val_every, n_events, costs, step_s, stats, server_log, wall, drop) -> int:
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
    req = []
    runs = {cid: rec.get("mlflow_run_id") for cid, rec in ledger["cells"].items()}
    have = {cid: {(k, s): n for k, s, n in con.execute(
        "SELECT key, step, COUNT(*) FROM metrics WHERE run_uuid=? AND (key LIKE 'train/%' OR key LIKE 'val/%' "
        "OR key LIKE 'eval/%') GROUP BY key, step", (run,))} if run else {} for cid, run in runs.items()}
    keys = {k for h in have.values() for k, _ in h} | {"train/loss_g", "val/pesq"}  # the union over the cells
    for cid, rec in ledger["cells"].items():
        done += rec["state"] == "done"
        req.append(rec.get("attempts", 1) - 1)
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
    lat, blocked = [], 0.0
    if stats.exists():
        for line in stats.read_text().splitlines():
            s = json.loads(line)
            lat += s["latencies_s"]
            blocked += s["blocked_s"]
    lat.sort()
    pct = (lambda q: f"{lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3:.1f} ms") if lat else (lambda q: "-")
    simulated = len(ledger["cells"]) * steps * step_s
    rows = [
        ("metric points expected / stored", f"{exp} / {stored} (missing {missing}, duplicates {dup})"),
        ("cells done", f"{done} / {len(ledger['cells'])}"),
        ("requeues per cell (actual / injected stops; plan chains-1)",
         f"{req} / {n_events}; plan {[c.chains - 1 for c in costs]}"),
        ("log_batch latency p50 / p99 (client side)", f"{pct(0.5)} / {pct(0.99)} over {len(lat)} calls"),
        ("step time blocked on tracking (goal <= 1 %)", f"{100 * blocked / simulated:.3f} %" if simulated else "-"),
        ("planner steps/cell, chains vs rehearsal", f"{costs[0].steps:,} steps, {costs[0].chains} chain(s); "
                                                    f"rehearsed {steps} steps, {1 + n_events} jobs/cell"),
        ("MLflow server restarts", "; ".join(server_log) or "none"),
        ("wall; rehearsed steps/s (all cells)", f"{wall:.0f} s; {len(ledger['cells']) * steps / wall:.2f}"),
    ]
    w = max(len(a) for a, _ in rows)
    print(f"{'rehearsal of ' + plan.sweep_dir.name:<{w}} | result")
    for a, b in rows:
        print(f"{a:<{w}} | {b}")
    for line in losses[:20]:
        print(f"LOSS: {line}")
    return 1 if (missing or dup or done < len(ledger["cells"])) else 0


if __name__ == "__main__":
    sys.exit(main())
