"""A sweep planned once per command: `build_plan` -> `SweepPlan`, handed to every later step.

    plan = build_plan("sweeps/rwsa_sizes.yaml", executor=None, root="runs", overrides=[...])
    preflight.check_plan(plan)            # every problem at once, before any side effect
    planner.plan_costs(plan)              # steps, GPU-hours, chains, storage, MLflow rate
    sweeps.run.describe(plan)             # --dry-run: the cells and the sbatch text
    sweeps.run.run_sweep(plan)            # MLflow parent run, ledger, cell configs, launcher

Building it reads the sweep file (and its base file) once, the cluster profile once (its defaults
under the sweep's ``resources``), expands the grid once into cells whose configs are typed
`training.config.RunConfig` objects (the same object the training process loads from the cell's
``config.yaml``), and works out the MLflow store without touching it: the tracking server's and
the parent run's ids are filled in by `sweeps.run.connect_mlflow` on a real run only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import ConfigError, build_config, merge, parse_overrides
from common.safe_names import check_name
from orchestrator.errors import UserError
from orchestrator.preflight import cells_text, raise_if
from orchestrator.profiles import ClusterProfile, load_profile
from orchestrator.sweeps.spec import EXECUTORS, SweepSpec, grid_overrides, key_error, load_sweep
from training.config import RunConfig


@dataclass
class Cell:
    """One point of the grid: ``id`` (folder name), ``index`` (array task id), the grid values
    (axis → value, a named variant's name for mapping axes) and the resolved, typed run config."""

    id: str
    index: int
    values: dict[str, Any]
    config: RunConfig


@dataclass
class Tracking:
    """Where the cells log: ``store`` (the backend: the sweep file's / command line's URI, else
    SWEEP_DIR/mlflow.db), ``uri`` the cells use (the store, or the sweep's tracking server in
    ``server_dir`` in front of it), the experiment and the parent run (None until created)."""

    store: str
    uri: str
    experiment: str
    parent_run_id: str | None = None
    server_dir: Path | None = None


@dataclass
class SweepPlan:
    """Everything a sweep command needs, computed once (see the module docstring)."""

    spec: SweepSpec
    sweep_file: Path
    overrides: list[str]  # the command line's, as given (the ledger remembers them for resume)
    executor: str
    sweep_dir: Path
    profile: ClusterProfile | None  # the cluster profile (SLURM only)
    resources: dict  # launcher.* values of every cell: the profile's defaults under the sweep's resources
    cells: list[Cell]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (cell id, message) of invalid cells
    tracking: Tracking | None = None  # None when MLflow is off
    data_ready: list[Path] = field(default_factory=list)  # manifests of the sweep's `data:` corpus found
    _manifests: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    @property
    def pending_data(self) -> list[Path]:
        """The corpus folder the sweep builds before any cell runs (``data:``), while it is not built."""
        return [Path(self.spec.data["out"])] if self.spec.data and not self.data_ready else []

    def manifest(self, source: str, split: str):
        """`read_manifest` of a data source, once per source and plan (the cost plan asks once per cell)."""
        if (source, split) not in self._manifests:
            self._manifests[source, split] = read_manifest(source, split)
        return self._manifests[source, split]

    def cell_dir(self, cell: Cell) -> Path:
        return self.sweep_dir / "cells" / cell.id

    def raise_cell_errors(self) -> None:
        """Invalid cell configs as one error (a PreflightError listing each distinct problem once,
        naming its cells): nothing can be planned for them."""
        if not self.errors:
            return
        by_msg: dict[str, list[str]] = {}
        for cid, msg in self.errors:  # one line per distinct error (an override breaks every cell alike)
            by_msg.setdefault(msg, []).append(cid)
        total = len(self.cells) + len({cid for cid, _ in self.errors})
        raise_if([f"{cells_text(ids, total)}: {msg}" for msg, ids in by_msg.items()])


def read_manifest(source: str, split: str):
    """A data source's `sharding.manifest.Manifest` (its shard bytes, clip counts, seconds for the cost
    plan), None when it has none yet or cannot be reached."""
    from sharding.errors import SourceError
    from sharding.shards import source_manifest

    try:
        return source_manifest(source, split)
    except (SourceError, OSError):
        return None


def build_plan(sweep_file: str | Path, *, executor: str | None = None, root: str | Path = "runs",
               overrides: list[str] | None = None) -> SweepPlan:
    """Read, check and expand a sweep for one command (no side effect: nothing is written or started).

    Errors of the sweep file, the profile and the overrides raise UserError/ConfigError naming file
    and key; a cell whose config is invalid is kept in ``plan.errors`` (see ``raise_cell_errors``)."""
    spec = load_sweep(sweep_file)
    executor = executor or spec.executor
    if executor not in EXECUTORS:
        raise UserError(f"--executor: expected {', '.join(EXECUTORS)}, got {executor!r}")
    profile = load_profile(spec.profile) if executor == "slurm" else None
    resources = {**(profile.defaults if profile else {}), **spec.resources}
    overrides = list(overrides or [])
    errors: list[tuple[str, str]] = []
    cells = expand(spec, overrides, executor=executor, resources=resources, errors=errors)
    plan = SweepPlan(spec=spec, sweep_file=Path(sweep_file), overrides=overrides, executor=executor,
                     sweep_dir=Path(root).resolve() / spec.name, profile=profile, resources=resources,
                     cells=cells, errors=errors)
    if spec.data:
        plan.data_ready = sorted(Path(spec.data["out"]).glob("*/manifest.json"))
    if cells and cells[0].config.mlflow.enabled:
        plan.tracking = _tracking(plan)
        set_tracking(plan, plan.tracking)
    return plan


def _tracking(plan: SweepPlan) -> Tracking:
    """The MLflow store and the URI the cells would use now (a running server's, else the store),
    the experiment and the parent run the ledger remembers; nothing is started or created."""
    from orchestrator.mlflow_server import running_server
    from orchestrator.mlflow_sweep import absolute_tracking_uri, server_dir, wants_server

    spec, cfg = plan.spec, plan.cells[0].config.mlflow
    given = {key for key, _v, _t in parse_overrides(plan.overrides)}
    # the store: a command-line mlflow.tracking_uri, else the sweep file's, else SWEEP_DIR/mlflow.db
    uri = cfg.tracking_uri if "mlflow.tracking_uri" in given else spec.mlflow.get("tracking_uri")
    store = absolute_tracking_uri(uri, plan.sweep_dir)
    experiment = cfg.experiment if "mlflow.experiment" in given else (spec.mlflow.get("experiment") or spec.name)
    tracking = Tracking(store=store, uri=store, experiment=experiment)
    if wants_server(store, spec.mlflow_server, plan.executor):
        tracking.server_dir = server_dir(store, plan.sweep_dir)
        info = running_server(tracking.server_dir)
        tracking.uri = info.uri if info else store
    ledger = plan.sweep_dir / "ledger.json"
    if ledger.is_file():
        from orchestrator.ledger import Ledger

        tracking.parent_run_id = (Ledger(plan.sweep_dir).read().get("mlflow") or {}).get("parent_run_id")
    return tracking


def set_tracking(plan: SweepPlan, tracking: Tracking) -> None:
    """Point every cell's ``mlflow`` section at ``tracking`` (URI, experiment, parent run)."""
    plan.tracking = tracking
    for cell in plan.cells:
        m = cell.config.mlflow
        m.tracking_uri, m.experiment, m.parent_run_id = tracking.uri, tracking.experiment, tracking.parent_run_id


def _matches(match: dict, values: dict) -> bool:
    return all(values.get(axis) == v for axis, v in match.items())


def expand(spec: SweepSpec, overrides: list[str] | None = None, *, executor: str | None = None,
           resources: dict | None = None, errors: list[tuple[str, str]] | None = None) -> list[Cell]:
    """The grid's cells in order (last axis fastest), exclusions dropped, each config resolved and typed.

    ``overrides`` (``key=value``, from the command line) apply to every cell after the sweep's own
    settings; ``resources`` (default: the sweep's) become every cell's ``launcher.*``. Raises
    UserError/ConfigError naming file and key; with an ``errors`` list, a cell whose config is invalid
    is left out and (cell id, error) appended instead (so every cell's problem is reported at once).
    """
    grid, overrides = grid_overrides(spec, list(overrides or []))
    axes = list(grid)
    combos = itertools.product(*(grid[a] for a in axes)) if axes else [()]
    launcher = {**(spec.resources if resources is None else resources), "profile": spec.profile,
                "executor": executor or spec.executor}
    shared = {"launcher": launcher, **({"mlflow": spec.mlflow} if spec.mlflow else {})}
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for combo in combos:
        values = {a: value for a, (_tok, value, _s) in zip(axes, combo)}
        if any(_matches(m, values) for m in spec.exclude):
            continue
        cid = "_".join(tok for tok, _v, _s in combo) or spec.name
        seen[cid] = seen.get(cid, 0) + 1
        if seen[cid] > 1:
            cid = f"{cid}-{seen[cid]}"
        check_name(cid, spec.source, "cell id", folder=True, error=UserError)  # a folder of its own: cells/<id>
        grid_sets: dict = {}
        for _tok, _v, sets in combo:
            grid_sets = merge(grid_sets, sets)
        cell_sets: dict = {}
        for match, sets in spec.overrides:
            if _matches(match, values):
                cell_sets = merge(cell_sets, sets)
        naming = {"name": f"{spec.name}-{cid}",
                  "mlflow": {"run_name": cid, "tags": {"se.sweep": spec.name, "se.cell": cid}}}
        sources = [
            (f"{spec.source} (base)", spec.base),
            (f"{spec.source} (resources/profile/mlflow)", shared),
            (f"{spec.source} (grid cell {cid})", grid_sets),
            (f"{spec.source} (overrides for cell {cid})", cell_sets),
            ("sweep naming", naming),
        ]
        try:
            cfg = build_config(RunConfig, sources, overrides)
        except (ConfigError, UserError) as e:
            if errors is None:
                raise
            errors.append((cid, str(e)))
            continue
        cells.append(Cell(id=cid, index=len(cells), values=values, config=cfg))
    if not cells and not errors:
        raise key_error(spec.source, "exclude", "every cell of the grid is excluded")
    return cells
