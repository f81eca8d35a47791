"""The sweep file: its format, read and checked once per command (`load_sweep` -> `SweepSpec`).

A sweep file (``sweeps/*.yaml``)::

    name: rwsa_sizes                     # folder name under runs/, MLflow parent run name
    base: configs/dns.yaml               # a run-config YAML (relative to this file) or a mapping
    grid:                                # the cartesian product of the axes, in this order
      model.name: [rwsa-xs, rwsa-s, rwsa-m]    # a list: values for one dotted key
      trainer.seed: [0, 1, 2, 3, 4]
      variant:                           # a mapping: named variants, each a set of overrides
        default: {}
        attention_after: {model.options.attention_after: true}
    overrides:                           # per-cell overrides, matched on grid values
      - match: {model.name: rwsa-m}
        set: {data.batch_size: 4}
    exclude:                             # cells left out, matched on grid values
      - {model.name: rwsa-m, trainer.seed: 4}
    resources: {nodes: 1, nproc: 8, gpus_per_node: 8, cpus_per_task: 7, mem_gb: 480,
                time_min: 2880, partition: standard-g, account: project_xxx, qos: null}
    profile: lumi                        # slurm/<profile>.yaml or a path
    executor: slurm                      # default executor: slurm | local | ray
    mlflow: {tracking_uri: "sqlite:///runs/mlflow.db", experiment: rwsa}
                                         # + server: true|false (default: a tracking server for SLURM)

Cell ids are readable and stable: ``rwsa-xs_s0`` (a string value as is, ``trainer.seed`` → ``s<N>``,
a named variant → its name, other numbers/bools → ``<last key part><value>``). The grid becomes
cells in `orchestrator.sweeps.plan`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import ConfigError, load_yaml, merge, parse_overrides, shown
from common.safe_names import name_problem
from orchestrator.errors import UserError

TOP_KEYS = ("name", "base", "grid", "overrides", "exclude", "resources", "profile", "executor", "mlflow", "data")
DATA_KEYS = ("recipe", "out", "options", "workers")
RESOURCE_KEYS = (
    "nodes", "nproc", "gpus_per_node", "cpus_per_task", "mem_gb", "time_min",
    "partition", "account", "qos", "max_parallel",
)
RESOURCE_ALIASES = {"tasks_per_node": "nproc", "gpus": "gpus_per_node", "cpus": "cpus_per_task", "mem": "mem_gb"}
EXECUTORS = ("slurm", "local", "ray")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class SweepSpec:
    """A validated sweep file. ``grid`` maps an axis to ``[(token, overrides), ...]``."""

    name: str
    source: str
    base: dict
    grid: dict[str, list[tuple[str, Any, dict]]]
    overrides: list[tuple[dict, dict]] = field(default_factory=list)
    exclude: list[dict] = field(default_factory=list)
    resources: dict = field(default_factory=dict)
    profile: str = "local"
    executor: str = "slurm"
    mlflow: dict = field(default_factory=dict)
    data: dict | None = None  # {"recipe", "out", "options", "workers"}: corpus built before any cell runs
    mlflow_server: bool | None = None  # `mlflow.server`: None = a tracking server for SLURM sweeps only


def key_error(source: str, key: str, msg: str) -> UserError:
    return UserError(f"{source}: {key}: {msg}")


def nest_dotted(d: dict, source: str, key: str) -> dict:
    """A mapping of possibly dotted keys → nested dict (``{"a.b": 1}`` → ``{"a": {"b": 1}}``)."""
    if not isinstance(d, dict):
        raise key_error(source, key, f"expected a mapping of config keys, got {type(d).__name__}")
    out: dict = {}
    for k, v in d.items():
        nested: Any = nest_dotted(v, source, f"{key}.{k}") if isinstance(v, dict) and k != "options" else v
        for part in reversed(str(k).split(".")):
            nested = {part: nested}
        out = merge(out, nested)
    return out


def _token(axis: str, value: Any) -> str:
    if axis == "trainer.seed":
        return f"s{value}"
    if isinstance(value, str):
        text = value
    else:
        text = f"{axis.split('.')[-1]}{value}"
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")
    return text or "x"


def _check_token(token: str, source: str, key: str, what: str) -> str:
    """A grid point's token names cell folders (``cells/<id>``): the path-safety rule (`common.safe_names`),
    so ``.`` and ``..`` never make a cell run in the sweep folder or above it."""
    why = name_problem(token, folder=True)
    if why:
        raise key_error(source, key, f"{what} would name the cell folder {token!r}: {why}")
    return token


def _parse_grid(grid: Any, source: str) -> dict[str, list[tuple[str, Any, dict]]]:
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise key_error(source, "grid", f"expected a mapping of axis → list of values, got {type(grid).__name__}")
    out: dict[str, list[tuple[str, Any, dict]]] = {}
    for axis, values in grid.items():
        key = f"grid.{axis}"
        if isinstance(values, dict):  # named variants
            if not values:
                raise key_error(source, key, "expected at least one named variant")
            points = []
            for name, sets in values.items():
                if not _NAME_RE.match(str(name)):
                    raise key_error(source, f"{key}.{name}", "variant names may use letters, digits, '.', '_', '-'")
                points.append((str(name), str(name), nest_dotted(sets or {}, source, f"{key}.{name}")))
            out[axis] = points
        elif isinstance(values, list):
            if not values:
                raise key_error(source, key, "expected a non-empty list of values")
            if len(set(map(repr, values))) != len(values):
                raise key_error(source, key, f"duplicate values in {values}")
            out[axis] = [(_check_token(_token(axis, v), source, key, f"value {v!r}"), v, nest_dotted({axis: v}, source, key))
                         for v in values]
        else:
            raise key_error(source, key, f"expected a list of values or a mapping of named variants, got {values!r}")
    return out


def _parse_matches(items: Any, source: str, key: str, grid: dict, with_set: bool) -> list:
    if items is None:
        return []
    if not isinstance(items, list):
        raise key_error(source, key, "expected a list")
    out = []
    for i, item in enumerate(items):
        k = f"{key}[{i}]"
        if with_set:
            if not isinstance(item, dict) or set(item) - {"match", "set"} or "set" not in item:
                raise key_error(source, k, "expected {match: {axis: value, ...}, set: {key: value, ...}}")
            match, sets = item.get("match") or {}, item["set"]
        else:
            match, sets = item, None
        if not isinstance(match, dict) or (not with_set and not match):
            raise key_error(source, k, "expected a non-empty mapping axis → value")
        for axis, v in match.items():
            if axis not in grid:
                raise key_error(source, f"{k}.{axis}", f"not a grid axis (axes: {', '.join(grid)})")
            if not any(v == value for _t, value, _s in grid[axis]):
                raise key_error(source, f"{k}.{axis}", f"{v!r} is not one of the grid values")
        out.append((match, nest_dotted(sets, source, f"{k}.set")) if with_set else match)
    return out


def _parse_resources(res: Any, source: str) -> dict:
    if res is None:
        return {}
    if not isinstance(res, dict):
        raise key_error(source, "resources", "expected a mapping")
    out = {}
    for k, v in res.items():
        name = RESOURCE_ALIASES.get(k, k)
        if name not in RESOURCE_KEYS:
            raise key_error(source, f"resources.{k}", f"unknown resource (valid: {', '.join(RESOURCE_KEYS)})")
        out[name] = v
    return out


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file; every error names the file and the key path (UserError)."""
    path = Path(path)
    source = str(path)
    try:
        data = load_yaml(path)
    except ConfigError as e:
        raise UserError(str(e)) from None
    unknown = set(data) - set(TOP_KEYS)
    if unknown:
        raise key_error(source, sorted(unknown)[0], f"unknown key (valid: {', '.join(TOP_KEYS)})")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise key_error(source, "name", "expected a folder-safe name (letters, digits, '.', '_', '-')")
    base = data.get("base") or {}
    if isinstance(base, str):
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.is_file() and Path(base).is_file():
            base_path = Path(base)
        try:
            base = load_yaml(base_path)
        except ConfigError as e:
            raise key_error(source, "base", str(e)) from None
    base = nest_dotted(base, source, "base")
    grid = _parse_grid(data.get("grid"), source)
    executor = data.get("executor", "slurm")
    if executor not in EXECUTORS:
        raise key_error(source, "executor", f"expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    profile = data.get("profile", "local")
    if not isinstance(profile, str):
        raise key_error(source, "profile", "expected a profile name (slurm/<name>.yaml) or a path")
    mlflow = data.get("mlflow") or {}
    if not isinstance(mlflow, dict):
        raise key_error(source, "mlflow", "expected a mapping of mlflow.* settings")
    mlflow = dict(mlflow)
    server = mlflow.pop("server", None)  # the sweep's, not a run-config key
    if server is not None and not isinstance(server, bool):
        raise key_error(source, "mlflow.server", f"expected true, false or null (null: for SLURM only), got {server!r}")
    return SweepSpec(
        data=_parse_data(data.get("data"), source),
        name=name,
        source=source,
        base=base,
        grid=grid,
        overrides=_parse_matches(data.get("overrides"), source, "overrides", grid, with_set=True),
        exclude=_parse_matches(data.get("exclude"), source, "exclude", grid, with_set=False),
        resources=_parse_resources(data.get("resources"), source),
        profile=profile,
        executor=executor,
        mlflow=mlflow,
        mlflow_server=server,
    )


def _parse_data(data: Any, source: str) -> dict | None:
    """``data: {recipe: demo, out: data/demo, options: {...}, workers: 2}`` → checked mapping or None."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise key_error(source, "data", "expected a mapping with recipe, out (and options, workers)")
    unknown = set(data) - set(DATA_KEYS)
    if unknown:
        raise key_error(source, f"data.{sorted(unknown)[0]}", f"unknown key (valid: {', '.join(DATA_KEYS)})")
    for key in ("recipe", "out"):
        if not isinstance(data.get(key), str):
            raise key_error(source, f"data.{key}", "expected a string")
    if not isinstance(data.get("options", {}), dict):
        raise key_error(source, "data.options", "expected a mapping of recipe options")
    workers = data.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise key_error(source, "data.workers", f"expected an integer >= 1, got {workers!r}")
    from sharding.errors import SourceError
    from sharding.recipes import get_recipe

    try:  # the recipe and its options, checked as `orchestrate shard build` checks them
        recipe = get_recipe(data["recipe"])
    except SourceError as e:
        raise key_error(source, "data.recipe", str(e)) from None
    try:
        recipe.parse_options(data.get("options") or {})
    except SourceError as e:
        raise key_error(source, "data.options", str(e)) from None
    return {"recipe": data["recipe"], "out": data["out"], "options": dict(data.get("options") or {}),
            "workers": workers}


def grid_overrides(spec: SweepSpec, overrides: list[str]) -> tuple[dict, list[str]]:
    """Split command-line overrides into (the grid they give, the plain run-config overrides).

    An axis of the sweep never collapses silently: ``trainer.seed=7`` (a scalar for a grid axis) is
    refused, naming the axis and its values; ``trainer.seed=[7,8]`` replaces the axis' values, and
    ``grid.KEY=[a,b]`` (what ``orchestrate sweep --grid KEY=a,b`` passes) replaces or adds an axis.
    Cell ids follow the new values (``s7``, ``s8``)."""
    grid = dict(spec.grid)
    plain = []
    for key, value, text in parse_overrides(overrides):
        explicit = key.startswith("grid.")
        axis = key[len("grid."):] if explicit else key
        if not explicit and axis not in grid:
            plain.append(text)
            continue
        if axis in spec.grid and axis not in _value_axes(spec):
            raise UserError(f"override '{shown(text)}': {axis} is an axis of named variants in {spec.source}; "
                            "edit the sweep file to change it")
        if not isinstance(value, list):
            current = [v for _t, v, _s in grid[axis]] if axis in grid else []
            raise UserError(
                f"override '{shown(text)}': {axis} is a grid axis of {spec.source} (values {current}); a single value "
                f"would give every cell the same {axis}. Replace the axis explicitly: {axis}=[{value}] "
                f"(or --grid {axis}={value},...), or edit the sweep file")
        grid[axis] = _parse_grid({axis: value}, f"override '{shown(text)}'")[axis]
    return grid, plain


def _value_axes(spec: SweepSpec) -> set[str]:
    """Axes of plain values (a list in the sweep file), as opposed to named variants (a mapping)."""
    return {a for a, points in spec.grid.items() if all(sets == nest_dotted({a: v}, "", a) for _t, v, sets in points)}
