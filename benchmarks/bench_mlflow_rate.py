"""MLflow write rate: can one tracking server hold a sweep's planned metric rate, per backend store?

The planned cadence comes from the planner (`orchestrate plan`): per cell, a window of training
metrics every `trainer.log_every` steps, validation metrics every `trainer.val_every` steps, system
metrics every `mlflow.system_metrics_s` seconds, at the cell's predicted steps/s. N writer processes
(one per cell) each drive the project's real tracker (`training.tracking.MlflowTracker`, its
background sender included) against a real `mlflow server` (`orchestrator.mlflow_server`), with the
model's work replaced by waits of the predicted step time. The rate is then multiplied (x1, x4, ...)
until the server falls behind, which gives the store's ceiling on this machine.

Per store and rate multiple, one row: points/s offered and written (stored rows counted in the store
itself), log_batch latency p50/p99 (the sender's calls), the share of a simulated step the trainer
spent inside log()+flush() (goal <= 1 %), the backlog left when the writers stopped, and the ratio
written/offered (reference: the offered rate, same run). Stores: the server's default SQLite file,
and PostgreSQL (Debian's `postgresql` package, started here on 127.0.0.1 in a temp folder by
initdb/pg_ctl; needs `pip install -e '.[postgres]'`; skipped with a message when missing).

Run: ``python benchmarks/bench_mlflow_rate.py [--sweep sweeps/rwsa_sizes.yaml] [--seconds 30]
[--scales 1,4,16,64] [--stores sqlite,postgresql]`` (15 writers + the server on this machine's cores:
the ceiling is this machine's, a login node's is higher).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

BLOCKED_GOAL = 0.01  # share of a step spent in log()+flush()
HELD = 0.95  # a store holds a rate when it writes >= 95 % of it within the run


def planned_cadence(sweep: str) -> list[dict]:
    """Per cell: steps/s, log_every, val_every, system_metrics_s, GPUs and the point counts per
    event, as `orchestrate plan` computes them (orchestrator/planner.py)."""
    from orchestrator import planner
    from orchestrator.sweeps.plan import build_plan

    plan = build_plan(sweep)
    _, costs = planner.plan_costs(plan)
    out = []
    for cell, cost in zip(plan.cells, costs):
        t, ml = cell.config.trainer, cell.config.mlflow
        out.append({"cell": cell.id, "steps_per_s": cost.steps_per_s, "log_every": t.log_every,
                    "val_every": t.val_every, "sys_s": float(ml.system_metrics_s or 0),
                    "train_keys": planner.TRAIN_KEYS, "val_keys": planner.VAL_KEYS,
                    "sys_keys": planner.SYSTEM_KEYS + 2 * cost.gpus, "planned_per_s": cost.mlflow_points_per_h / 3600})
    return out


def points_per_s(c: dict, scale: float) -> float:
    rate = c["steps_per_s"] * scale
    return (rate * (c["train_keys"] / c["log_every"] + (c["val_keys"] / c["val_every"] if c["val_every"] else 0))
            + (c["sys_keys"] / c["sys_s"] * scale if c["sys_s"] else 0))


def writer(uri: str, cell: dict, scales: list[float], seconds: float, index: int, barrier, out_q) -> None:
    """One cell: per scale, a run of `seconds` at the cadence x scale through the real tracker."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import logging

    from training.config import MlflowConfig
    from training.tracking import MlflowTracker

    logging.basicConfig(level=logging.WARNING)
    for scale in scales:
        cfg = MlflowConfig(tracking_uri=uri, experiment=f"bench-x{scale:g}", system_metrics_s=0)
        work = Path(tempfile.mkdtemp(prefix="bench-writer-"))
        barrier.wait(timeout=600)
        tracker = MlflowTracker(cfg, work, run_id=None, params={"cell": cell["cell"]}, tags={})
        step_s = 1.0 / (cell["steps_per_s"] * scale)
        sys_every = max(1, round(cell["sys_s"] / scale / step_s)) if cell["sys_s"] else 0
        t0 = time.perf_counter()
        blocked = 0.0
        step = offered = 0
        while time.perf_counter() - t0 < seconds:
            step += 1
            next_t = t0 + step * step_s
            pts: dict[str, float] = {}
            if step % cell["log_every"] == 0:
                pts |= {f"train/k{i}": float(step + i) for i in range(cell["train_keys"])}
            if cell["val_every"] and step % cell["val_every"] == 0:
                pts |= {f"val/k{i}": float(step - i) for i in range(cell["val_keys"])}
            if sys_every and step % sys_every == 0:
                pts |= {f"system/k{i}": float(i) for i in range(cell["sys_keys"])}
            if pts:
                b0 = time.perf_counter()
                tracker.log(pts, step)
                tracker.flush()
                blocked += time.perf_counter() - b0
                offered += len(pts)
            time.sleep(max(0.0, next_t - time.perf_counter()))
        elapsed = time.perf_counter() - t0
        backlog = len(tracker.pending())
        written_in_time = tracker.stats.points
        tracker.close(idle_s=600)  # drain the whole backlog: stored must equal offered
        out_q.put({"scale": scale, "index": index, "run_id": tracker.run_id, "offered": offered,
                   "written_in_time": written_in_time, "backlog": backlog, "elapsed": elapsed,
                   "blocked": blocked, "latencies": tracker.stats.latencies_s, "failures": tracker.stats.failures})
        shutil.rmtree(work, ignore_errors=True)


def stored_points(store_uri: str, run_ids: list[str]) -> int:
    """Metric rows the store holds for these runs (counted in the database itself)."""
    import sqlalchemy

    eng = sqlalchemy.create_engine(store_uri)
    with eng.connect() as con:
        q = sqlalchemy.text("select count(*) from metrics where run_uuid in :ids").bindparams(
            sqlalchemy.bindparam("ids", expanding=True))
        n = con.execute(q, {"ids": run_ids}).scalar()
    eng.dispose()
    return int(n)


# ---------------------------------------------------------------- PostgreSQL, started here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres(folder: Path) -> tuple[str | None, str]:
    """(URI, "") of a PostgreSQL server started on 127.0.0.1 in ``folder``, or (None, why not)."""
    try:
        import psycopg  # noqa: F401  (the PostgreSQL driver SQLAlchemy 2.1 uses for postgresql://)
    except ImportError:
        return None, "psycopg missing: pip install -e '.[postgres]'"
    bindir = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
                   if (p / "initdb").exists()), None) if Path("/usr/lib/postgresql").is_dir() else None
    if bindir is None:
        return None, "PostgreSQL server missing: apt-get install postgresql"
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    data, sock = folder / "data", folder / "sock"
    folder.mkdir(parents=True, exist_ok=True)
    sock.mkdir()
    if as_user:
        os.chmod(folder.parent, 0o755)  # the temp folder is 0700: the postgres user must reach its own
        shutil.chown(folder, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "pg.log"), "-w", "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=on", "start")
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
    except subprocess.CalledProcessError as e:
        return None, f"PostgreSQL did not start: {(e.stderr or e.stdout).strip()[-300:]}"
    return f"postgresql://postgres@127.0.0.1:{port}/mlflow", ""


def stop_postgres(folder: Path) -> None:
    bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "stop"],
                   capture_output=True)


# ---------------------------------------------------------------- one store


def bench_store(name: str, store_uri: str, folder: Path, cells: list[dict], scales: list[float],
                seconds: float) -> list[dict]:
    from orchestrator import mlflow_server as ms

    info = ms.start_server(folder / "server", backend_store_uri=store_uri, workers=2, timeout_s=300)
    rows = []
    try:
        ctx = mp.get_context("spawn")
        barrier, out_q = ctx.Barrier(len(cells)), ctx.Queue()
        procs = [ctx.Process(target=writer, args=(info.uri, c, scales, seconds, i, barrier, out_q))
                 for i, c in enumerate(cells)]
        for p in procs:
            p.start()
        results: dict[float, list[dict]] = {s: [] for s in scales}
        for _ in range(len(cells) * len(scales)):
            r = out_q.get(timeout=seconds * 4 + 900)
            results[r["scale"]].append(r)
        for p in procs:
            p.join(timeout=60)
        for scale in scales:
            rs = results[scale]
            elapsed = max(r["elapsed"] for r in rs)
            offered = sum(r["offered"] for r in rs)
            lat = sorted(x for r in rs for x in r["latencies"])
            stored = stored_points(store_uri, [r["run_id"] for r in rs if r["run_id"]])
            rows.append({
                "store": name, "scale": scale, "planned_per_s": sum(points_per_s(c, scale) for c in cells),
                "offered_per_s": offered / elapsed, "written_per_s": sum(r["written_in_time"] for r in rs) / elapsed,
                "stored": stored, "offered": offered,
                "p50_ms": 1000 * statistics.median(lat) if lat else math.nan,
                "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else math.nan,
                "blocked": sum(r["blocked"] for r in rs) / sum(r["elapsed"] for r in rs),
                "backlog": sum(r["backlog"] for r in rs), "failures": sum(r["failures"] for r in rs),
            })
            print(_row(rows[-1]), flush=True)
    finally:
        ms.stop_server(folder / "server", timeout_s=15)
    return rows


HEAD = (f"{'store':<11} {'x':>4} {'planned/s':>9} {'offered/s':>9} {'written/s':>9} {'ratio':>6} "
        f"{'stored=offered':>14} {'p50 ms':>7} {'p99 ms':>7} {'blocked':>8} {'backlog':>7}")


def _row(r: dict) -> str:
    ratio = r["written_per_s"] / r["offered_per_s"] if r["offered_per_s"] else math.nan
    return (f"{r['store']:<11} {r['scale']:>4g} {r['planned_per_s']:>9.0f} {r['offered_per_s']:>9.0f} "
            f"{r['written_per_s']:>9.0f} {ratio:>6.2f} {str(r['stored'] == r['offered']):>14} "
            f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {100 * r['blocked']:>7.3f}% {r['backlog']:>7}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", default=str(ROOT / "sweeps" / "rwsa_sizes.yaml"))
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds per rate multiple")
    ap.add_argument("--scales", default="1,4,16,64", help="rate multiples to try, ascending")
    ap.add_argument("--stores", default="sqlite,postgresql")
    args = ap.parse_args()
    cells = planned_cadence(args.sweep)
    scales = [float(x) for x in args.scales.split(",")]
    planned = sum(c["planned_per_s"] for c in cells)
    print(f"sweep {Path(args.sweep).name}: {len(cells)} writers (cells), planned {planned:,.0f} points/s "
          f"({planned * 3600:,.0f} points/h) with all cells running; {args.seconds:g} s per rate multiple")
    print(HEAD, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as tmp:
        tmp = Path(tmp)
        for store in args.stores.split(","):
            if store == "sqlite":
                rows += bench_store("sqlite", f"sqlite:///{tmp / 'sqlite' / 'mlflow.db'}", tmp / "sqlite", cells,
                                    scales, args.seconds)
            elif store == "postgresql":
                pg = tmp / "pg"
                uri, why = start_postgres(pg)
                if uri is None:
                    print(f"postgresql  skipped: {why}", flush=True)
                    continue
                try:
                    rows += bench_store("postgresql", uri, tmp / "pgsrv", cells, scales, args.seconds)
                finally:
                    stop_postgres(pg)
    print(f"\nper store (reference: the planned {planned:,.0f} points/s): held = the highest rate written "
          f">= {HELD:.0%} as offered; ceiling = the most written per second (saturated when it is below offered)")
    for store in dict.fromkeys(r["store"] for r in rows):
        mine = [r for r in rows if r["store"] == store]
        held = [r for r in mine if r["written_per_s"] >= HELD * r["offered_per_s"]]
        best = max(held, key=lambda r: r["written_per_s"], default=None)
        top = max(mine, key=lambda r: r["written_per_s"])
        saturated = top["written_per_s"] < HELD * top["offered_per_s"]
        print(f"  {store}: held {best['written_per_s'] if best else 0:,.0f} points/s "
              f"({(best['written_per_s'] if best else 0) / planned:.1f}x the plan; log_batch p50 "
              f"{best['p50_ms'] if best else math.nan:.0f} ms, p99 {best['p99_ms'] if best else math.nan:.0f} ms); "
              f"ceiling {top['written_per_s']:,.0f} points/s ({top['written_per_s'] / planned:.1f}x the plan"
              f"{'' if saturated else ', not saturated: higher'}); every point stored once: "
              f"{all(r['stored'] == r['offered'] for r in mine)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
