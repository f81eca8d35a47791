"""`orchestrate status`: the state of every cell of a sweep, its rate and ETA, and a sweep total."""

from __future__ import annotations

import argparse
import json
import math

from common.rundir import PROGRESS_FILE
from orchestrator.ledger import Ledger
from orchestrator.sweeper import resolve_sweep_dir, shown_state, sweep_status
from training.progress import progress_eta, progress_rate, read_progress

NAME = "status"
HELP = "show a sweep's cells: state, step/total, steps/s, ETA, attempts, last/best val PESQ, and a total"
DESCRIPTION = """Per cell: state ("running (evaluating)" while the trained run is evaluated on its
test sets), step/total, steps/s over the recent window (from the cell's progress.json, kept across
requeues), ETA of the remaining compute (remaining steps / rate, through any number of requeues,
queue waits not included), job attempts, last and best validation PESQ, job id, MLflow run. Last
line: the sweep total (steps done, summed rate of the running cells, ETA of the remaining steps at
that rate)."""
EPILOG = """examples:
  orchestrate status rwsa_sizes              # a sweep name under runs/
  orchestrate status runs/rwsa_sizes --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep folder or sweep name under --root")
    p.add_argument("--root", default="runs", help="where sweep names are looked up (default: runs)")
    p.add_argument("--json", action="store_true", help="print JSON rows (with rate, eta_s, last_val_pesq) instead")


def status_rows(sweep, root="runs") -> list[dict]:
    """`sweeper.sweep_status` rows plus rate (steps/s), eta_s and last_val_pesq from progress.json."""
    rows = sweep_status(sweep, root=root)
    sweep_dir = resolve_sweep_dir(sweep, root)
    cells = Ledger(sweep_dir).read().get("cells", {})
    for r in rows:
        workdir = (cells.get(r["cell"]) or {}).get("workdir")
        prog = read_progress(sweep_dir / workdir / PROGRESS_FILE) if workdir else {}
        running = r["state"] in ("running", "submitted", "pending", "preempted")
        r["rate"] = progress_rate(prog) if running else None
        r["eta_s"] = 0.0 if r["state"] == "done" else (progress_eta(prog) if running else None)
        r["last_val_pesq"] = prog.get("last_val_pesq")
    return rows


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    m = int(round(seconds)) // 60
    d, rem = divmod(m, 24 * 60)
    h, m = divmod(rem, 60)
    return f"{d}d{h:02d}h" if d else (f"{h}h{m:02d}m" if h else f"{m}m{int(round(seconds)) % 60:02d}s")


def total(rows: list[dict]) -> dict:
    """Sweep total: steps done/total, summed rate of the cells that report one, ETA at that rate."""
    done = sum(r["step"] or 0 for r in rows)
    want = sum(r["max_steps"] or 0 for r in rows)
    rate = sum(r["rate"] for r in rows if r.get("rate"))
    left = sum(max(0, (r["max_steps"] or 0) - (r["step"] or 0)) for r in rows if r["state"] != "done")
    eta = 0.0 if left == 0 else (left / rate if rate else None)
    return {"steps": done, "max_steps": want, "rate": rate or None, "eta_s": eta}


def format_table(rows: list[dict]) -> str:
    def num(x, fmt):
        return format(x, fmt) if isinstance(x, (int, float)) else "-"

    head = ("cell", "state", "step", "steps/s", "ETA", "attempts", "last PESQ", "best PESQ", "job", "MLflow run")
    table = [head]
    for r in rows:
        step = "-" if r["step"] is None else f"{r['step']}/{r['max_steps'] if r['max_steps'] is not None else '?'}"
        state = shown_state(r["state"], r.get("progress_state"))
        table.append((r["cell"], state, step, num(r.get("rate"), ".3g"), fmt_duration(r.get("eta_s")),
                      str(r["attempts"]), num(r.get("last_val_pesq"), ".3f"), num(r["best_pesq"], ".3f"),
                      r["job_id"] or "-", r["mlflow_run_id"] or "-"))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    t = total(rows)
    pct = 100.0 * t["steps"] / t["max_steps"] if t["max_steps"] else 0.0
    lines.append(f"total: {t['steps']}/{t['max_steps']} steps ({pct:.1f}%), {num(t['rate'], '.3g')} steps/s, "
                 f"ETA {fmt_duration(t['eta_s'])}; " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = status_rows(args.sweep, root=args.root)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows))
    return 0
