"""Checks before anything is submitted (`orchestrate sweep`, `train`, `tune`, also under --dry-run).

Every problem is collected, then all are reported at once (``PreflightError``, a UserError: exit 2)
before any side effect: nothing submitted, no ledger entry or sweep folder written. Checked:

- every cell's run config validates (``orchestrator.sweep.expand`` with ``errors=``);
- ``model.name`` is a registered generator (with the nearest name as a suggestion);
- ``data.segment_samples`` is a crop the model can take (``training.model_names.segment_problem``:
  RWSA's frame count a multiple of 4, the shortest crop of the model and of the metric discriminator);
- ``data.train`` / ``data.valid`` are shard folders with a readable ``manifest.json`` (or tars), and
  every ``eval.testsets`` entry opens as a test set; paths under the sweep's ``data.out`` are skipped
  while that corpus is still to be built by the sweep;
- SLURM: no placeholder (``project_xxx``) left in the account or the container image / binds, and
  the profile's container image exists when one is set;
- the MLflow tracking URI is usable: a SQLite store's folder can be created/written, an http(s)
  server answers.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from orchestrator.errors import UserError

PLACEHOLDER = re.compile(r"project_x{3,}|<[A-Za-z_ -]+>|CHANGE_?ME", re.IGNORECASE)


class PreflightError(UserError):
    """Several problems found before submitting; the message lists them, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        head = f"{len(problems)} problem(s) found before submitting anything (nothing was submitted):"
        super().__init__("\n".join([head, *(f"  - {p}" for p in problems)]))


def raise_if(problems: list[str]) -> None:
    unique = list(dict.fromkeys(problems))
    if unique:
        raise PreflightError(unique)


# ----------------------------------------------------------------------------------- single checks


def check_model(name: str, where: str) -> list[str]:
    from training.model_names import GENERATOR_NAMES  # torch-free: a login node's venv may lack torch

    known = list(GENERATOR_NAMES)
    if name in known:
        return []
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return [f"{where}: model.name: unknown model {name!r}{hint}; known: {', '.join(known)}"]


def check_segment(cfg: dict, where: str, name: str | None = None, segment=None) -> list[str]:
    """``data.segment_samples`` (or ``segment``) against model ``name`` (default ``model.name``); cfg: a
    RunConfig dict."""
    from training.model_names import segment_problem  # torch-free

    seg = cfg["data"].get("segment_samples") if segment is None else segment
    if not isinstance(seg, int) or isinstance(seg, bool):  # null: the model's own crop
        return []
    name = name or cfg["model"]["name"]
    problem = segment_problem(name, seg, discriminator=bool(cfg["loss"]["discriminator"]))
    return [f"{where}: {problem}"] if problem else []


def _pending(path: str, pending_roots: Iterable[Path]) -> bool:
    p = Path(path).resolve()
    return any(p == r or r in p.parents for r in pending_roots)


def check_data(cfg: dict, where: str, pending_roots: Iterable[Path] = ()) -> list[str]:
    """Shard folders of data.train / data.valid and the eval.testsets entries (cfg: a RunConfig dict)."""
    from sharding.errors import SourceError
    from sharding.shards import list_shards, resolve_split_dir
    from training.evaluation.testsets import TestSetError, open_testset

    pending_roots = [Path(r).resolve() for r in pending_roots]
    problems = []
    for key, split in (("train", "train"), ("valid", "valid")):
        path = cfg["data"].get(key)
        if not path or _pending(path, pending_roots):
            continue
        try:
            list_shards(resolve_split_dir(path, split))
        except (SourceError, OSError) as e:
            problems.append(f"{where}: data.{key}: {e}")
    for path in cfg["eval"].get("testsets") or []:
        if _pending(path, pending_roots):
            continue
        try:
            open_testset(path)
        except (TestSetError, SourceError, OSError, ValueError) as e:
            problems.append(f"{where}: eval.testsets: {e}")
    return problems


def check_tracking_uri(uri: str | None, where: str) -> list[str]:
    """A SQLite/file store's folder must be creatable and writable; an http(s) server must answer."""
    if not uri:
        return []
    if uri.startswith("sqlite:///") or uri.startswith("file:") or "://" not in uri:
        path = Path(uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri.removeprefix("file://"))
        folder = path.parent if uri.startswith("sqlite:///") else path
        existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            return [f"{where}: mlflow.tracking_uri: {uri}: folder {existing or folder} is not writable"]
        if uri.startswith("sqlite:///") and path.exists() and not os.access(path, os.R_OK | os.W_OK):
            return [f"{where}: mlflow.tracking_uri: {uri}: database is not readable and writable"]
        return []
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
                return []
        except urllib.error.HTTPError:
            return []  # something answers: an MLflow server without /health, or behind auth
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            return [f"{where}: mlflow.tracking_uri: {uri} does not answer ({reason}); start it "
                    "(`orchestrate mlflow-server DIR --background`) or use a sqlite:/// store"]
    return []


def check_slurm(profile, resources: dict, where: str) -> list[str]:
    """Placeholders left in the account / container, and the container image's existence."""
    problems = []
    account = resources.get("account")
    if account and PLACEHOLDER.search(str(account)):
        problems.append(f"{where}: resources.account: {account!r} is a placeholder; set your SLURM account "
                        f"(sweep `resources.account` or the profile's defaults.account)")
    if profile is None:
        return problems
    image = profile.container.image
    if image:
        if PLACEHOLDER.search(image):
            problems.append(f"profile {profile.name}: container.image: {image!r} is a placeholder; set the path "
                            "of your image")
        elif not Path(image).is_file():
            problems.append(f"profile {profile.name}: container.image: {image} does not exist")
        for bind in profile.container.binds:
            if PLACEHOLDER.search(bind):
                problems.append(f"profile {profile.name}: container.binds: {bind!r} is a placeholder")
    return problems


# ----------------------------------------------------------------------------------- command checks


def _cells(ids: list[str], total: int) -> str:
    if len(ids) == 1:
        return f"cell {ids[0]}"
    return f"all {total} cells" if len(ids) == total else f"cells {', '.join(ids)}"



def preflight_sweep(sweep_file: str | Path, *, executor: str | None, root: str | Path,
                    overrides: list[str]) -> list[str]:
    """All checks of a sweep. Invalid cell configs raise PreflightError at once (nothing can be planned
    then); the other problems are returned (the caller raises them, after a dry run's plan is shown)."""
    from orchestrator.profiles import load_profile
    from orchestrator.sweep import expand, load_sweep
    from orchestrator.sweeper import plan_sweep

    spec = load_sweep(sweep_file)
    executor = executor or spec.executor
    profile = load_profile(spec.profile) if executor == "slurm" else None
    if profile is not None:
        spec.resources = {**profile.defaults, **spec.resources}
    errors: list[tuple[str, str]] = []
    cells = expand(spec, overrides, errors=errors)
    by_msg: dict[str, list[str]] = {}
    for cid, msg in errors:  # one line per distinct error (an override breaks every cell alike)
        by_msg.setdefault(msg, []).append(cid)
    total = len(cells) + len({cid for cid, _ in errors})
    raise_if([f"{_cells(ids, total)}: {msg}" for msg, ids in by_msg.items()])
    pending = []
    if spec.data and not list(Path(spec.data["out"]).glob("*/manifest.json")):
        pending.append(Path(spec.data["out"]))  # the sweep builds it before any cell runs
    problems: list[str] = []
    per_cell: dict[str, list[str]] = {}  # problem -> cells (one line for a problem shared by many)
    for cell in cells:
        msgs = check_model(cell.config["model"]["name"], "") + check_segment(cell.config, "")
        for msg in msgs + check_data(cell.config, "", pending):
            per_cell.setdefault(msg.removeprefix(": "), []).append(cell.id)
    for msg, ids in per_cell.items():
        problems.append(f"{_cells(ids, len(cells))}: {msg}")
    if profile is not None:
        for account in sorted({c.config["launcher"].get("account") or "" for c in cells} - {""}):
            problems += check_slurm(None, {"account": account}, spec.source)
        problems += check_slurm(profile, {}, spec.source)
    plan = plan_sweep(sweep_file, executor=executor, root=root, overrides=overrides, dry_run=True)
    if plan.cells and plan.cells[0].config["mlflow"]["enabled"]:
        problems += check_tracking_uri(plan.store, spec.source)
    return list(dict.fromkeys(problems))


def preflight_run(cfg, where: str = "run config") -> None:
    """All checks of one run config (`orchestrate train`)."""
    from training.configtools import to_container

    data = to_container(cfg)
    problems = check_model(cfg.model.name, where) + check_segment(data, where) + check_data(data, where)
    if cfg.mlflow.enabled:
        problems += check_tracking_uri(cfg.mlflow.tracking_uri, where)
    if cfg.launcher.executor == "slurm":
        problems += check_slurm(None, data["launcher"], where)
    raise_if(problems)


def preflight_tune(spec) -> None:
    """All checks of a tune file: its base config's data, the model names (base, or every choice of a
    `model.name` space axis), the training crop for each of them (base, or every choice of a
    `data.segment_samples` axis) and the search's MLflow store."""
    from orchestrator.mlflow_sweep import absolute_tracking_uri
    from training.config import load_run_config
    from training.configtools import to_container

    cfg = load_run_config(None, [], base=spec.base)
    problems = []
    kind, args = spec.space.get("model.name", (None, []))
    names = [str(a) for a in args] if kind in ("choice", "grid_search") else [cfg.model.name]
    data = to_container(cfg)
    kind, args = spec.space.get("data.segment_samples", (None, []))
    if kind is None:
        segments = [data["data"]["segment_samples"]]
    else:  # a range axis (randint, ...) is not checked
        segments = list(args) if kind in ("choice", "grid_search") else []
    for name in names:
        problems += check_model(name, spec.source)
        for seg in segments:
            problems += check_segment(data, spec.source, name, seg)
    problems += check_data(data, spec.source)
    if not spec.mlflow.get("server"):
        problems += check_tracking_uri(absolute_tracking_uri(spec.mlflow.get("tracking_uri"), spec.search_dir),
                                       spec.source)
    raise_if(problems)
