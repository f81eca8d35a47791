"""A sweep folder read back: find it, bring its ledger up to date, one row per cell, the status table.

``orchestrate status`` and the end of a blocking ``orchestrate sweep`` print `format_table`: per
cell the state (``running (evaluating)`` during the end-of-run evaluation), step/total, steps/s over
the recent window, ETA of the remaining compute, attempts, last and best validation PESQ, job id,
MLflow run; last line the sweep total. Each cell's ``progress.json`` is read once (`common.progress`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from common.progress import (
    format_duration,
    progress_eta,
    progress_rate,
    read_attempts,
    read_progress_checked,
    shown_state,
)
from orchestrator import launchers
from orchestrator.errors import UserError
from orchestrator.launchers import base
from orchestrator.ledger import Ledger

log = logging.getLogger(__name__)
RATE_STATES = ("running", "submitted", "pending", "preempted")  # cells whose progress has a rate/ETA


def resolve_sweep_dir(sweep: str | Path, root: str | Path = "runs") -> Path:
    """A sweep folder (holding ledger.json) or a sweep name under ``root``."""
    p = Path(sweep)
    for cand in (p, Path(root) / str(sweep)):
        if (cand / "ledger.json").is_file():
            return cand
    raise UserError(f"{sweep}: no sweep here or under {root}/ (expected a folder with ledger.json)")


def refresh(sweep_dir: Path, data: dict) -> None:
    """Update every cell record in ``data`` from its files and, for active cells, its launcher."""
    base.refresh_files(sweep_dir, data)
    launchers.get(launchers.executor_of(data), sweep_dir).refresh(data)


def finish_parent_if_done(data: dict) -> None:
    """Mark the sweep's MLflow parent run finished once every cell is done."""
    from orchestrator.mlflow_sweep import finish_parent_run, live_tracking_uri

    ml = data.get("mlflow") or {}
    if ml.get("parent_run_id") and all(r["state"] == "done" for r in data["cells"].values()):
        try:
            finish_parent_run(live_tracking_uri(ml), ml["parent_run_id"])
        except Exception as e:  # the sweep is still done; say why the parent run is not closed
            log.warning("could not mark MLflow parent run %s finished: %s", ml["parent_run_id"], e)


def status_rows(sweep: str | Path, *, root: str | Path = "runs") -> list[dict]:
    """One row per cell, the ledger refreshed first: cell, state (the ledger's), progress_state
    (progress.json's: running, preempted, evaluating, done), step, max_steps, rate (steps/s), eta_s,
    last_val_pesq, best_pesq, job_id, attempts, mlflow_run_id, reason."""
    sweep_dir = resolve_sweep_dir(sweep, root)
    with Ledger(sweep_dir).locked() as data:
        refresh(sweep_dir, data)
        finish_parent_if_done(data)
    rows = []
    for cid, rec in sorted(data["cells"].items(), key=lambda kv: kv[1]["index"]):
        prog, problem = read_progress_checked(sweep_dir / rec["workdir"])
        problem = problem or read_attempts(sweep_dir / rec["workdir"])[1]  # named in the row, not a traceback
        state = rec["state"]
        rates = state in RATE_STATES
        rows.append({
            "cell": cid, "state": state, "progress_state": "unreadable" if problem else prog.get("state"),
            "step": prog.get("step"),
            "max_steps": prog.get("max_steps"), "rate": progress_rate(prog) if rates else None,
            "eta_s": 0.0 if state == "done" else (progress_eta(prog) if rates else None),
            "last_val_pesq": prog.get("last_val_pesq"), "best_pesq": prog.get("best_pesq"),
            "job_id": rec.get("job_id"), "attempts": rec.get("attempts", 0),
            "mlflow_run_id": rec.get("mlflow_run_id"), "reason": problem or rec.get("reason"),
        })
    return rows


def total(rows: list[dict]) -> dict:
    """Sweep total: steps done/total, summed rate of the cells that report one, ETA at that rate."""
    done = sum(r["step"] or 0 for r in rows)
    want = sum(r["max_steps"] or 0 for r in rows)
    rate = sum(r["rate"] for r in rows if r.get("rate"))
    left = sum(max(0, (r["max_steps"] or 0) - (r["step"] or 0)) for r in rows if r["state"] != "done")
    eta = 0.0 if left == 0 else (left / rate if rate else None)
    return {"steps": done, "max_steps": want, "rate": rate or None, "eta_s": eta}


def _num(x, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "-"


def format_table(rows: list[dict]) -> str:
    """The status table: one line per cell, then the sweep total and the count per state."""
    head = ("cell", "state", "step", "steps/s", "ETA", "attempts", "last PESQ", "best PESQ", "job", "MLflow run")
    table = [head]
    for r in rows:
        step = "-" if r["step"] is None else f"{r['step']}/{r['max_steps'] if r['max_steps'] is not None else '?'}"
        table.append((r["cell"], shown_state(r["state"], r.get("progress_state")), step, _num(r.get("rate"), ".3g"),
                      format_duration(r.get("eta_s")), str(r["attempts"]), _num(r.get("last_val_pesq"), ".3f"),
                      _num(r["best_pesq"], ".3f"), r["job_id"] or "-", r["mlflow_run_id"] or "-"))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    t = total(rows)
    pct = 100.0 * t["steps"] / t["max_steps"] if t["max_steps"] else 0.0
    lines.append(f"total: {t['steps']}/{t['max_steps']} steps ({pct:.1f}%), {_num(t['rate'], '.3g')} steps/s, "
                 f"ETA {format_duration(t['eta_s'])}; " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)
