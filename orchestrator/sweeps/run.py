"""Run a planned sweep: MLflow parent run → ledger and cell configs (sweep folder) → launcher → report.

    SWEEP_DIR/ledger.json              cell → state, job ids, attempts, MLflow run (orchestrator.ledger)
    SWEEP_DIR/cells/<cell>/config.yaml the cell's fully resolved RunConfig (= its training workdir)
    SWEEP_DIR/slurm/submit-<n>.sbatch  every job array submitted, as submitted (orchestrator.launchers.slurm)
    SWEEP_DIR/logs/                    submitit's folder: pickles, <job>_<array task>_<rank>_log.out

Nothing here knows an executor: `orchestrator.launchers.get(executor)` does the submitting,
refreshing and cancelling (`base.Launcher`).

Running ``orchestrate sweep FILE`` again resumes: done cells are skipped, failed / cancelled /
preempted (and never submitted) cells are (re)submitted, queued or running ones are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import yaml

from common.atomic import atomic_write_text
from common.rundir import CONFIG_FILE
from orchestrator import launchers
from orchestrator.errors import UserError
from orchestrator.launchers import base
from orchestrator.ledger import ACTIVE, RESUBMIT, Ledger, new_cell_record, set_state
from orchestrator.sweeps.plan import Cell, SweepPlan, Tracking, build_plan, set_tracking
from orchestrator.sweeps.status import finish_parent_if_done, format_table, resolve_sweep_dir, status_rows
from training.config import to_yaml
from training.tracking import capture_source_env

log = logging.getLogger(__name__)
Printer = Callable[[str], None]


def connect_mlflow(plan: SweepPlan) -> None:
    """A real run's MLflow side effects: the sweep's tracking server (started, or found running) and
    its parent run (the ledger's, else created); every cell's config then points at them."""
    from orchestrator.mlflow_sweep import ensure_parent_run, ensure_sweep_server

    t = plan.tracking
    if t is None:
        return
    uri, folder = t.uri, t.server_dir
    if folder is not None:
        uri, folder = ensure_sweep_server(t.store, plan.sweep_dir, host=_server_host(plan))
    parent = ensure_parent_run(uri, t.experiment, plan.spec.name, t.parent_run_id, sweep_dir=plan.sweep_dir)
    set_tracking(plan, Tracking(store=t.store, uri=uri, experiment=t.experiment, parent_run_id=parent,
                                server_dir=folder))


def _server_host(plan: SweepPlan) -> str:
    """The address the sweep's tracking server binds: the cells' processes must reach it. Local
    cells run here (loopback); SLURM jobs need the profile's ``mlflow_host`` or this machine's
    resolvable address; Ray uses the latter when there is one."""
    from orchestrator.mlflow_server import DEFAULT_HOST, reachable_host

    if plan.executor == "local":
        return DEFAULT_HOST
    if plan.profile is not None and plan.profile.mlflow_host:
        return plan.profile.mlflow_host
    host = reachable_host()
    if host:
        return host
    if plan.executor == "slurm":
        import socket

        raise UserError(
            f"{plan.spec.source}: the sweep's MLflow tracking server must be reachable from the compute nodes, "
            f"but this machine's name ({socket.gethostname()}) resolves to a loopback address: set mlflow_host "
            f"in the cluster profile {plan.spec.profile!r} (127.0.0.1 for a single-machine cluster), point "
            "mlflow.tracking_uri at a running server (http://HOST:PORT), or set mlflow.server: false"
        )
    return DEFAULT_HOST


def write_cells(plan: SweepPlan) -> dict:
    """Create/update the ledger and every cell's config.yaml; returns the ledger snapshot.

    A cell that has already started must keep its config: changing it is refused (UserError), except
    for ``launcher.max_parallel`` (how many cells run at once) and, behind the same store, the
    tracking URI (the sweep's server came back on another port, or a ledger from before sweeps had
    servers: the cells' runs are still there).
    """
    t = plan.tracking
    ledger = Ledger(plan.sweep_dir)
    fresh = {
        "sweep": plan.spec.name, "sweep_file": str(plan.sweep_file.resolve()), "overrides": list(plan.overrides),
        "executor": plan.executor, "profile": plan.spec.profile,
        "mlflow": {"tracking_uri": t.uri if t else None, "parent_run_id": t.parent_run_id if t else None,
                   "store": t.store if t else None, "server_dir": str(t.server_dir) if t and t.server_dir else None},
        "cells": {},
    }
    with ledger.locked(create=fresh) as data:
        previous = data.get("mlflow") or {}
        same_store = bool(t) and (previous.get("store") or previous.get("tracking_uri")) == t.store
        data["executor"] = plan.executor
        data["mlflow"] = fresh["mlflow"]
        data["overrides"] = list(plan.overrides)
        for cell in plan.cells:
            cdir = plan.cell_dir(cell)
            cfg_path = cdir / CONFIG_FILE
            text = to_yaml(cell.config)
            old = cfg_path.read_text() if cfg_path.is_file() else None
            rec = data["cells"].get(cell.id)
            if rec is None:
                rec = data["cells"][cell.id] = new_cell_record(
                    cell.index, str(cfg_path.relative_to(plan.sweep_dir)),
                    str(cdir.relative_to(plan.sweep_dir)), cell.values,
                )
            elif rec["state"] != "pending" and old is not None and old != text and not _same_run(old, text, same_store):
                raise UserError(
                    f"{plan.spec.source}: cell {cell.id} already ran with a different config "
                    f"({cfg_path}); keep the sweep file and overrides, or use another name/--root"
                )
            rec["index"] = cell.index
            cdir.mkdir(parents=True, exist_ok=True)
            if old != text:
                atomic_write_text(cfg_path, text)
        return data


def _same_run(old_text: str, new_text: str, same_store: bool) -> bool:
    """Two config texts of one cell that describe the same run: equal but for ``launcher.max_parallel``
    and (``same_store``) ``mlflow.tracking_uri``."""
    try:
        old, new = yaml.safe_load(old_text), yaml.safe_load(new_text)
    except yaml.YAMLError:
        return False
    if not isinstance(old, dict) or not all(isinstance(old.get(k), dict) for k in ("mlflow", "launcher")):
        return False

    def scrub(cfg: dict) -> dict:
        ml = {**cfg["mlflow"], **({"tracking_uri": None} if same_store else {})}
        return {**cfg, "mlflow": ml, "launcher": {**cfg["launcher"], "max_parallel": None}}

    return scrub(old) == scrub(new)


# ------------------------------------------------------------------------------------ launchers


def launcher_for(plan: SweepPlan) -> base.Launcher:
    """The plan's launcher (its executor, profile and sweep folder)."""
    return launchers.get(plan.executor, plan.sweep_dir, job_name=plan.spec.name, profile=plan.profile,
                         source=str(plan.spec.source))


def plan_cells(plan: SweepPlan, indices: list[int] | None = None) -> list[tuple[Cell, Path]]:
    """``[(cell, cell_dir)]`` for ``indices`` (default: every cell), what launchers take."""
    wanted = None if indices is None else set(indices)
    return [(c, plan.cell_dir(c)) for c in plan.cells if wanted is None or c.index in wanted]


def describe(plan: SweepPlan) -> list[str]:
    """What ``--dry-run`` prints after the cost plan: the cells, then the launcher's commands / sbatch text."""
    lines = [f"# sweep {plan.spec.name}: {len(plan.cells)} cells, executor {plan.executor}, dir {plan.sweep_dir}"]
    t = plan.tracking
    if t is not None and t.server_dir is not None:
        state = "running" if t.uri != t.store else "started by the real run"
        lines.append(f"# mlflow: tracking server in {t.server_dir} ({state}) over {t.store}")
    for c in plan.cells:
        lines.append(f"#   [{c.index}] {c.id}: " + ", ".join(f"{k}={v}" for k, v in c.values.items()))
    return lines + launcher_for(plan).describe(plan_cells(plan))


# ------------------------------------------------------------------------------------ run


def prepare_data(plan: SweepPlan, out: Printer = print) -> None:
    """Build the sweep's corpus (``data:`` in the sweep file) unless every split's manifest exists.

    The build is deterministic and resumable (sharding.writer): an interrupted one picks up where it
    stopped, and a folder built with other options is refused rather than mixed.
    """
    data = plan.spec.data
    if not data:
        return
    root = Path(data["out"])
    if plan.data_ready:
        out(f"data: {root} ready ({', '.join(sorted(m.parent.name for m in plan.data_ready))})")
        return
    from sharding.writer import build

    out(f"data: building {data['recipe']} corpus into {root} ...")
    result = build(data["recipe"], root, data["options"], num_workers=data["workers"])
    splits = {k: v.get("num_samples", v.get("samples")) for k, v in result.get("manifests", {}).items()}
    out(f"data: built {root}: {splits}")


def run_sweep(plan: SweepPlan, *, out: Printer = print) -> int:
    """``orchestrate sweep``: submit (SLURM, returns) or run (local, Ray: blocks) every cell not done."""
    from orchestrator.planner import plan_mlflow_rate_note

    # a cluster sweep's cells log at once through one server: does its store hold the rate? (before submitting)
    rate_note = plan_mlflow_rate_note(plan) if plan.executor == "slurm" else None
    if rate_note:
        out(rate_note)
    connect_mlflow(plan)
    prepare_data(plan, out)
    write_cells(plan)
    capture_source_env()  # SE_GIT_COMMIT/SE_GIT_DIRTY for jobs without git (containers); inherited by all launchers
    t = plan.tracking
    if t is not None and t.server_dir is not None:
        out(f"mlflow: tracking server {t.uri} (folder {t.server_dir}, store {t.store})")
    launcher = launcher_for(plan)
    ledger = Ledger(plan.sweep_dir)
    with ledger.locked() as data:
        launcher.recover(data)
        base.refresh_files(plan.sweep_dir, data)
        launcher.refresh(data)
        states = {cid: rec["state"] for cid, rec in data["cells"].items()}
    todo = [c.index for c in plan.cells if states[c.id] in RESUBMIT]
    skipped = {s: sum(1 for c in plan.cells if states[c.id] == s) for s in ("done", "submitted", "running")}
    out(f"sweep {plan.spec.name}: {len(plan.cells)} cells; {skipped['done']} done, "
        f"{skipped['submitted'] + skipped['running']} queued/running, {len(todo)} to submit")
    rc = launcher.submit(plan_cells(plan, todo), out=out) if todo or launcher.blocking else 0
    if not launcher.blocking:
        out(f"sweep id: {plan.spec.name} ({plan.sweep_dir})")
        out(f"follow it with: orchestrate status {plan.sweep_dir}    (cancel: orchestrate cancel {plan.sweep_dir})")
        return rc
    with ledger.locked() as data:
        finish_parent_if_done(data)
    out(format_table(status_rows(plan.sweep_dir)))
    return rc


def resume_sweep(sweep: str | Path, *, root: str | Path = "runs", out: Printer = print) -> int:
    """``orchestrate resume SWEEP``: rerun the sweep command the ledger remembers."""
    sweep_dir = resolve_sweep_dir(sweep, root)
    data = Ledger(sweep_dir).read()
    plan = build_plan(data["sweep_file"], executor=data.get("executor"), root=sweep_dir.parent,
                      overrides=data.get("overrides") or [])
    plan.raise_cell_errors()
    return run_sweep(plan, out=out)


def cancel_sweep(sweep: str | Path, cells: list[str] | None = None, *, root: str | Path = "runs",
                 out: Printer = print) -> int:
    """``orchestrate cancel``: stop the cells' jobs (all active cells by default)."""
    sweep_dir = resolve_sweep_dir(sweep, root)
    with Ledger(sweep_dir).locked() as data:
        unknown = [c for c in cells or [] if c not in data["cells"]]
        if unknown:
            raise UserError(f"{sweep_dir}: no cell {unknown[0]!r} (cells: {', '.join(data['cells'])})")
        records = [data["cells"][cid] for cid in cells or data["cells"]]
        launcher = launchers.get(launchers.executor_of(data), sweep_dir)
        tasks = launcher.cancel(records)
        for rec in records:
            if rec["state"] in ACTIVE:
                set_state(rec, "cancelled", reason="orchestrate cancel")
    for note in launcher.notes:
        out(note)
    shown = " ".join(tasks[:20]) + (f" ... (+{len(tasks) - 20} more)" if len(tasks) > 20 else "")
    out(f"cancelled {len(tasks)} job(s): {shown or '-'}")
    return 0
