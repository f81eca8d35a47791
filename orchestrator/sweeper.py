"""Run a sweep: plan (expand) → ledger (sweep folder) → launcher (submit what is not done) → report.

    SWEEP_DIR/ledger.json              cell → state, job ids, attempts, MLflow run (orchestrator.ledger)
    SWEEP_DIR/cells/<cell>/config.yaml the cell's fully resolved RunConfig (= its training workdir)
    SWEEP_DIR/slurm/submit-<n>.sbatch  every job array submitted, as submitted (orchestrator.launchers.slurm)
    SWEEP_DIR/logs/                    submitit's folder: pickles, <job>_<array task>_<rank>_log.out

The sweeper knows no executor: `orchestrator.launchers.get(executor)` does the submitting,
refreshing and cancelling (`base.Launcher`).

Running ``orchestrate sweep FILE`` again resumes: done cells are skipped, failed / cancelled /
preempted (and never submitted) cells are (re)submitted, queued or running ones are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from common.rundir import CONFIG_FILE
from orchestrator import launchers
from orchestrator.errors import UserError
from orchestrator.launchers import base
from orchestrator.ledger import ACTIVE, RESUBMIT, Ledger, new_cell_record, set_state
from orchestrator.mlflow_sweep import (
    absolute_tracking_uri,
    ensure_parent_run,
    ensure_sweep_server,
    finish_parent_run,
    live_tracking_uri,
    server_dir,
    wants_server,
)
from orchestrator.profiles import ClusterProfile, load_profile
from orchestrator.sweep import Cell, SweepSpec, expand, load_sweep
from training.configtools import atomic_write_text
from training.tracking import capture_source_env

log = logging.getLogger(__name__)
Printer = Callable[[str], None]


@dataclass
class SweepPlan:
    spec: SweepSpec
    executor: str
    sweep_dir: Path
    cells: list[Cell]
    profile: ClusterProfile | None
    tracking_uri: str | None
    parent_run_id: str | None
    store: str | None = None  # the MLflow backend store (= tracking_uri unless a server fronts it)
    server_dir: Path | None = None  # the sweep's MLflow tracking server, if it has one


def resolve_sweep_dir(sweep: str | Path, root: str | Path = "runs") -> Path:
    """A sweep folder (holding ledger.json) or a sweep name under ``root``."""
    p = Path(sweep)
    for cand in (p, Path(root) / str(sweep)):
        if (cand / "ledger.json").is_file():
            return cand
    raise UserError(f"{sweep}: no sweep here or under {root}/ (expected a folder with ledger.json)")


def plan_sweep(
    sweep_file: str | Path,
    *,
    executor: str | None = None,
    root: str | Path = "runs",
    overrides: list[str] | None = None,
    dry_run: bool = False,
) -> SweepPlan:
    """Load and expand a sweep; on a real run also create/reuse the MLflow parent run."""
    spec = load_sweep(sweep_file)
    executor = executor or spec.executor
    if executor not in ("slurm", "local", "ray"):
        raise UserError(f"--executor: expected slurm, local or ray, got {executor!r}")
    spec.executor = executor
    sweep_dir = Path(root).resolve() / spec.name
    profile = None
    if executor == "slurm":
        profile = load_profile(spec.profile)
        spec.resources = {**{k: v for k, v in profile.defaults.items()}, **spec.resources}
    # Expand once without MLflow ids: validates everything before any side effect.
    overrides = list(overrides or [])
    cells = expand(spec, overrides)
    mlcfg = cells[0].config["mlflow"]
    tracking_uri = parent = store = folder = None
    if mlcfg["enabled"]:
        # the store: the sweep file's or a command-line mlflow.tracking_uri, else SWEEP_DIR/mlflow.db
        uri_overrides = [o for o in overrides if o.split("=", 1)[0].strip().lstrip("+") == "mlflow.tracking_uri"]
        given = mlcfg["tracking_uri"] if uri_overrides else spec.mlflow.get("tracking_uri")
        store = tracking_uri = absolute_tracking_uri(given, sweep_dir)
        if wants_server(store, spec.mlflow_server, executor):
            folder = server_dir(store, sweep_dir)
            if not dry_run:
                tracking_uri, folder = ensure_sweep_server(store, sweep_dir, host=_server_host(spec, executor, profile))
            else:  # a dry run starts nothing: the running server's URI if there is one
                from orchestrator.mlflow_server import running_server

                info = running_server(folder)
                tracking_uri = info.uri if info else store
        experiment = spec.mlflow.get("experiment") or spec.name
        ledger = Ledger(sweep_dir)
        previous = ledger.read().get("mlflow", {}).get("parent_run_id") if ledger.exists() else None
        if not dry_run:
            parent = ensure_parent_run(tracking_uri, experiment, spec.name, previous, sweep_dir=sweep_dir)
        else:
            parent = previous
        extra = {"mlflow": {"tracking_uri": tracking_uri, "experiment": experiment, "parent_run_id": parent}}
        overrides = [o for o in overrides if o not in uri_overrides]  # resolved into `extra`
        cells = expand(spec, overrides, extra=extra)
    return SweepPlan(spec, executor, sweep_dir, cells, profile, tracking_uri, parent, store, folder)


def _server_host(spec: SweepSpec, executor: str, profile: ClusterProfile | None) -> str:
    """The address the sweep's tracking server binds: the cells' processes must reach it. Local
    cells run here (loopback); SLURM jobs need the profile's ``mlflow_host`` or this machine's
    resolvable address; Ray uses the latter when there is one."""
    from orchestrator.mlflow_server import DEFAULT_HOST, reachable_host

    if executor == "local":
        return DEFAULT_HOST
    if profile is not None and profile.mlflow_host:
        return profile.mlflow_host
    host = reachable_host()
    if host:
        return host
    if executor == "slurm":
        import socket

        raise UserError(
            f"{spec.source}: the sweep's MLflow tracking server must be reachable from the compute nodes, "
            f"but this machine's name ({socket.gethostname()}) resolves to a loopback address: set mlflow_host "
            f"in the cluster profile {spec.profile!r} (127.0.0.1 for a single-machine cluster), point "
            "mlflow.tracking_uri at a running server (http://HOST:PORT), or set mlflow.server: false"
        )
    return DEFAULT_HOST


def _cell_dir(plan: SweepPlan, cell: Cell) -> Path:
    return plan.sweep_dir / "cells" / cell.id


def _config_text(cell: Cell) -> str:
    return yaml.safe_dump(cell.config, sort_keys=False, default_flow_style=None)


def write_cells(plan: SweepPlan, sweep_file: str | Path, overrides: list[str]) -> dict:
    """Create/update the ledger and every cell's config.yaml; returns the ledger snapshot.

    A cell that has already started must keep its config: changing it is refused (UserError).
    """
    ledger = Ledger(plan.sweep_dir)
    fresh = {
        "sweep": plan.spec.name, "sweep_file": str(Path(sweep_file).resolve()), "overrides": list(overrides),
        "executor": plan.executor, "profile": plan.spec.profile,
        "mlflow": {"tracking_uri": plan.tracking_uri, "parent_run_id": plan.parent_run_id, "store": plan.store,
                   "server_dir": str(plan.server_dir) if plan.server_dir else None},
        "cells": {},
    }
    with ledger.locked(create=fresh) as data:
        # Same store behind another address (the sweep's server came back on another port, or a
        # ledger from before sweeps had servers): the cells' runs are still there, so a started
        # cell may take the new tracking URI.
        previous = data.get("mlflow") or {}
        same_store = bool(plan.store) and (previous.get("store") or previous.get("tracking_uri")) == plan.store
        data["executor"] = plan.executor
        data["mlflow"] = fresh["mlflow"]
        data["overrides"] = list(overrides)
        for cell in plan.cells:
            cdir = _cell_dir(plan, cell)
            cfg_path = cdir / CONFIG_FILE
            text = _config_text(cell)
            rec = data["cells"].get(cell.id)
            if rec is None:
                rec = data["cells"][cell.id] = new_cell_record(
                    cell.index, str(cfg_path.relative_to(plan.sweep_dir)),
                    str(cdir.relative_to(plan.sweep_dir)), cell.values,
                )
            elif (rec["state"] != "pending" and cfg_path.is_file() and cfg_path.read_text() != text
                  and not (same_store and _same_but_tracking_uri(cfg_path.read_text(), cell.config))):
                raise UserError(
                    f"{plan.spec.source}: cell {cell.id} already ran with a different config "
                    f"({cfg_path}); keep the sweep file and overrides, or use another name/--root"
                )
            rec["index"] = cell.index
            cdir.mkdir(parents=True, exist_ok=True)
            if not cfg_path.is_file() or cfg_path.read_text() != text:
                atomic_write_text(cfg_path, text)
        return data


def _same_but_tracking_uri(old_text: str, config: dict) -> bool:
    """True when a cell's stored config differs from ``config`` in ``mlflow.tracking_uri`` only."""
    try:
        old = yaml.safe_load(old_text)
    except yaml.YAMLError:
        return False
    if not isinstance(old, dict) or not isinstance(old.get("mlflow"), dict):
        return False
    return {**old, "mlflow": {**old["mlflow"], "tracking_uri": None}} == {
        **config, "mlflow": {**config["mlflow"], "tracking_uri": None}}


# ------------------------------------------------------------------------------------ launchers


def launcher_for(plan: SweepPlan) -> base.Launcher:
    """The plan's launcher (its executor, profile and sweep folder)."""
    return launchers.get(plan.executor, plan.sweep_dir, job_name=plan.spec.name, profile=plan.profile,
                         source=str(plan.spec.source))


def plan_cells(plan: SweepPlan, indices: list[int] | None = None) -> list[tuple[Cell, Path]]:
    """``[(cell, cell_dir)]`` for ``indices`` (default: every cell), what launchers take."""
    return [(c, _cell_dir(plan, c)) for c in plan.cells if indices is None or c.index in set(indices)]


def refresh(sweep_dir: Path, data: dict) -> None:
    """Update every cell record in ``data`` from its files and, for active cells, its launcher."""
    base.refresh_files(sweep_dir, data)
    launchers.get(launchers.executor_of(data), sweep_dir).refresh(data)


def _maybe_finish_parent(data: dict) -> None:
    ml = data.get("mlflow") or {}
    if ml.get("parent_run_id") and all(r["state"] == "done" for r in data["cells"].values()):
        try:
            finish_parent_run(live_tracking_uri(ml), ml["parent_run_id"])
        except Exception as e:  # the sweep is still done; say why the parent run is not closed
            log.warning("could not mark MLflow parent run %s finished: %s", ml["parent_run_id"], e)


# ------------------------------------------------------------------------------------ run


def prepare_data(spec, out: Printer = print) -> None:
    """Build the sweep's corpus (``data:`` in the sweep file) unless every split's manifest exists.

    The build is deterministic and resumable (sharding.writer): an interrupted one picks up where it
    stopped, and a folder built with other options is refused rather than mixed.
    """
    if not spec.data:
        return
    from sharding.writer import build

    root = Path(spec.data["out"])
    manifests = list(root.glob("*/manifest.json"))
    if manifests:
        out(f"data: {root} ready ({', '.join(sorted(m.parent.name for m in manifests))})")
        return
    out(f"data: building {spec.data['recipe']} corpus into {root} ...")
    result = build(spec.data["recipe"], root, spec.data["options"], num_workers=spec.data["workers"])
    splits = {k: v.get("num_samples", v.get("samples")) for k, v in result.get("manifests", {}).items()}
    out(f"data: built {root}: {splits}")


def run_sweep(
    sweep_file: str | Path,
    *,
    executor: str | None = None,
    dry_run: bool = False,
    root: str | Path = "runs",
    overrides: list[str] | None = None,
    out: Printer = print,
) -> int:
    """``orchestrate sweep``: plan, then print (dry run) or submit / run what is not done."""
    overrides = list(overrides or [])
    plan = plan_sweep(sweep_file, executor=executor, root=root, overrides=overrides, dry_run=dry_run)
    if dry_run:
        out(f"# sweep {plan.spec.name}: {len(plan.cells)} cells, executor {plan.executor}, dir {plan.sweep_dir}")
        if plan.server_dir is not None:
            state = "running" if plan.tracking_uri != plan.store else "started by the real run"
            out(f"# mlflow: tracking server in {plan.server_dir} ({state}) over {plan.store}")
        for c in plan.cells:
            vals = ", ".join(f"{k}={v}" for k, v in c.values.items())
            out(f"#   [{c.index}] {c.id}: {vals}")
        for line in launcher_for(plan).describe(plan_cells(plan)):
            out(line)
        return 0
    prepare_data(plan.spec, out)
    write_cells(plan, sweep_file, overrides)
    capture_source_env()  # SE_GIT_COMMIT/SE_GIT_DIRTY for jobs without git (containers); inherited by all launchers
    if plan.server_dir is not None:
        out(f"mlflow: tracking server {plan.tracking_uri} (folder {plan.server_dir}, store {plan.store})")
    launcher = launcher_for(plan)
    ledger = Ledger(plan.sweep_dir)
    with ledger.locked() as data:
        launcher.recover(data)
        base.refresh_files(plan.sweep_dir, data)
        launcher.refresh(data)
        states = {cid: rec["state"] for cid, rec in data["cells"].items()}
    wanted = {c.id for c in plan.cells}
    todo = [c.index for c in plan.cells if states[c.id] in RESUBMIT]
    skipped = {s: sum(1 for cid in wanted if states[cid] == s) for s in ("done", "submitted", "running")}
    out(f"sweep {plan.spec.name}: {len(plan.cells)} cells; {skipped['done']} done, "
        f"{skipped['submitted'] + skipped['running']} queued/running, {len(todo)} to submit")
    rc = launcher.submit(plan_cells(plan, todo), out=out) if todo or launcher.blocking else 0
    if not launcher.blocking:
        out(f"sweep id: {plan.spec.name} ({plan.sweep_dir})")
        out(f"follow it with: orchestrate status {plan.sweep_dir}    (cancel: orchestrate cancel {plan.sweep_dir})")
        return rc
    with ledger.locked() as data:
        _maybe_finish_parent(data)
    out(format_status(sweep_status(plan.sweep_dir)))
    return rc


def resume_sweep(sweep: str | Path, *, root: str | Path = "runs", out: Printer = print) -> int:
    """``orchestrate resume SWEEP``: rerun the sweep command the ledger remembers."""
    sweep_dir = resolve_sweep_dir(sweep, root)
    data = Ledger(sweep_dir).read()
    return run_sweep(
        data["sweep_file"], executor=data.get("executor"), root=sweep_dir.parent,
        overrides=data.get("overrides") or [], out=out,
    )


# ------------------------------------------------------------------------------------ status / cancel


def shown_state(state: str, progress_state: str | None) -> str:
    """A cell's state as ``status`` shows it: the ledger state, with ``(evaluating)`` for a running cell
    whose progress.json says ``evaluating`` (the end-of-run evaluation on the test sets,
    training.evaluation.final_eval)."""
    return f"{state} (evaluating)" if state == "running" and progress_state == "evaluating" else state


def sweep_status(sweep: str | Path, *, root: str | Path = "runs") -> list[dict]:
    """One row per cell: id, state (the ledger's), progress_state (progress.json's: running, preempted,
    evaluating, done), step, max_steps, best_pesq, job_id, attempts, mlflow_run_id, reason."""
    sweep_dir = resolve_sweep_dir(sweep, root)
    ledger = Ledger(sweep_dir)
    with ledger.locked() as data:
        refresh(sweep_dir, data)
        _maybe_finish_parent(data)
    rows = []
    for cid, rec in sorted(data["cells"].items(), key=lambda kv: kv[1]["index"]):
        prog = base.read_progress(sweep_dir / rec["workdir"])
        rows.append({
            "cell": cid, "state": rec["state"], "progress_state": prog.get("state"), "step": prog.get("step"),
            "max_steps": prog.get("max_steps"), "best_pesq": prog.get("best_pesq"),
            "job_id": rec.get("job_id"), "attempts": rec.get("attempts", 0),
            "mlflow_run_id": rec.get("mlflow_run_id"), "reason": rec.get("reason"),
        })
    return rows


def format_status(rows: list[dict]) -> str:
    """The status table (one screen)."""
    head = ("cell", "state", "step", "best PESQ", "job", "attempts", "MLflow run")
    table = [head]
    for r in rows:
        step = "-" if r["step"] is None else f"{r['step']}/{r['max_steps'] if r['max_steps'] is not None else '?'}"
        pesq = r["best_pesq"]
        pesq_s = f"{pesq:.3f}" if isinstance(pesq, (int, float)) else "-"
        state = shown_state(r["state"], r.get("progress_state"))
        table.append((r["cell"], state, step, pesq_s, r["job_id"] or "-", str(r["attempts"]),
                      r["mlflow_run_id"] or "-"))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def cancel_sweep(sweep: str | Path, cells: list[str] | None = None, *, root: str | Path = "runs",
                 out: Printer = print) -> int:
    """``orchestrate cancel``: scancel the cells' jobs (all active cells by default)."""
    sweep_dir = resolve_sweep_dir(sweep, root)
    ledger = Ledger(sweep_dir)
    with ledger.locked() as data:
        unknown = [c for c in cells or [] if c not in data["cells"]]
        if unknown:
            raise UserError(f"{sweep_dir}: no cell {unknown[0]!r} (cells: {', '.join(data['cells'])})")
        chosen = cells or list(data["cells"])
        records = [data["cells"][cid] for cid in chosen]
        tasks = launchers.get(launchers.executor_of(data), sweep_dir).cancel(records)
        for rec in records:
            if rec["state"] in ACTIVE:
                set_state(rec, "cancelled", reason="orchestrate cancel")
    out(f"cancelled {len(tasks)} job(s): {' '.join(tasks) or '-'}")
    return 0
