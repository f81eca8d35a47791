"""Checks before anything is submitted (`orchestrate sweep`, `train`, `tune`, also under --dry-run).

Every problem is collected, then all are reported at once (``PreflightError``, a UserError: exit 2)
before any side effect: nothing submitted, no ledger entry or sweep folder written. Checked:

- every cell's run config validates (`orchestrator.sweeps.plan.build_plan` keeps the invalid ones);
- ``model.name`` is a registered generator (with the nearest name as a suggestion);
- ``data.segment_samples`` is a crop the model can take (``training.model_names.segment_problem``:
  RWSA's frame count a multiple of 4, the shortest crop of the model and of the metric discriminator);
- ``data.train`` / ``data.valid`` are shard sources that resolve (a folder with a readable ``manifest.json``
  or tars, a pattern, a URL: `sharding.shards.check_source`; a remote one's first shard answers), and
  every ``eval.testsets`` entry opens as a test set; paths under the sweep's ``data.out`` are skipped
  while that corpus is still to be built by the sweep;
- each distinct value is checked once (a model name, a crop, a data folder shared by 1,000 cells is
  one check), and a problem shared by many cells is one line naming them;
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

from common.errors import printable
from orchestrator.errors import UserError

PLACEHOLDER = re.compile(r"project_x{3,}|<[A-Za-z_ -]+>|CHANGE_?ME", re.IGNORECASE)


class PreflightError(UserError):
    """Several problems found before submitting; the message lists them, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        head = f"{len(problems)} problem(s) found before submitting anything (nothing was submitted):"
        self.lines = [head, *(f"  - {p}" for p in problems)]
        super().__init__("\n".join(self.lines))

    def __str__(self) -> str:  # one line per problem, each kept to one line
        return "\n".join(printable(line) for line in self.lines)


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


def check_segment(cfg, where: str, name: str | None = None, segment=None) -> list[str]:
    """``data.segment_samples`` (or ``segment``) against model ``name`` (default ``model.name``) of a
    RunConfig ``cfg``."""
    from training.model_names import segment_problem  # torch-free

    seg = cfg.data.segment_samples if segment is None else segment
    if not isinstance(seg, int) or isinstance(seg, bool):  # null: the model's own crop
        return []
    problem = segment_problem(name or cfg.model.name, seg, discriminator=bool(cfg.loss.discriminator))
    return [f"{where}: {problem}"] if problem else []


def _pending(path: str, pending_roots: Iterable[Path]) -> bool:
    p = Path(path).resolve()
    return any(p == r or r in p.parents for r in pending_roots)


def check_data(cfg, where: str, pending_roots: Iterable[Path] = (), memo: dict | None = None) -> list[str]:
    """Shard sources of data.train / data.valid and the eval.testsets entries of a RunConfig ``cfg``;
    ``memo`` (shared by the calls of one check) opens each source once."""
    pending_roots = [Path(r).resolve() for r in pending_roots]
    memo = {} if memo is None else memo
    problems = []
    for key, path in (("train", cfg.data.train), ("valid", cfg.data.valid)):
        if path and not _pending(path, pending_roots):
            if (path, key) not in memo:
                memo[path, key] = _split_problem(path, key)
            problems += [f"{where}: data.{key}: {p}" for p in memo[path, key]]
    for path in cfg.eval.testsets or []:
        if not _pending(path, pending_roots):
            if (path, "test") not in memo:
                memo[path, "test"] = _testset_problem(path)
            problems += [f"{where}: eval.testsets: {p}" for p in memo[path, "test"]]
    return problems


def _split_problem(path: str, split: str) -> tuple[str, ...]:
    """Why a shard source (folder, pattern, URL) cannot be read (empty when it can)."""
    from sharding.errors import SourceError
    from sharding.shards import check_source

    try:
        check_source(path, split)
    except (SourceError, OSError) as e:
        return (str(e),)
    return ()


def _testset_problem(path: str) -> tuple[str, ...]:
    """Why a test set cannot be opened (empty when it can)."""
    from sharding.errors import SourceError
    from training.evaluation.testsets import TestSetError, open_testset

    try:
        open_testset(path)
    except (TestSetError, SourceError, OSError, ValueError) as e:
        return (str(e),)
    return ()


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


def cells_text(ids: list[str], total: int) -> str:
    """``cell x``, ``cells x, y``, or ``all N cells``: who a problem concerns."""
    if len(ids) == 1:
        return f"cell {ids[0]}"
    return f"all {total} cells" if len(ids) == total else f"cells {', '.join(ids)}"


def check_plan(plan) -> list[str]:
    """All checks of a `SweepPlan`. Invalid cell configs raise PreflightError at once (nothing can be
    planned then); the other problems are returned (the caller raises them, after a dry run's plan is
    shown). Each distinct model name, crop and data folder is checked once."""
    plan.raise_cell_errors()
    per_cell: dict[str, list[str]] = {}  # problem -> cells (one line for a problem shared by many)
    checked: dict[tuple, list[str]] = {}
    memo: dict = {}
    for cell in plan.cells:
        c = cell.config
        key = (c.model.name, c.data.segment_samples, c.loss.discriminator, c.data.train, c.data.valid,
               tuple(c.eval.testsets))
        if key not in checked:
            checked[key] = check_model(c.model.name, "") + check_segment(c, "") + check_data(c, "", plan.pending_data, memo)
        for msg in checked[key]:
            per_cell.setdefault(msg.removeprefix(": "), []).append(cell.id)
    problems = [f"{cells_text(ids, len(plan.cells))}: {msg}" for msg, ids in per_cell.items()]
    if plan.profile is not None:
        for account in sorted({c.config.launcher.account or "" for c in plan.cells} - {""}):
            problems += check_slurm(None, {"account": account}, plan.spec.source)
        problems += check_slurm(plan.profile, {}, plan.spec.source)
    if plan.tracking is not None:
        problems += check_tracking_uri(plan.tracking.store, plan.spec.source)
    return list(dict.fromkeys(problems))


def preflight_run(cfg, where: str = "run config") -> None:
    """All checks of one run config (`orchestrate train`)."""
    problems = check_model(cfg.model.name, where) + check_segment(cfg, where) + check_data(cfg, where)
    if cfg.mlflow.enabled:
        problems += check_tracking_uri(cfg.mlflow.tracking_uri, where)
    if cfg.launcher.executor == "slurm":
        problems += check_slurm(None, {"account": cfg.launcher.account}, where)
    raise_if(problems)


def preflight_tune(spec) -> None:
    """All checks of a tune file: its base config's data, the model names (base, or every choice of a
    `model.name` space axis), the training crop for each of them (base, or every choice of a
    `data.segment_samples` axis) and the search's MLflow store."""
    from orchestrator.mlflow_sweep import absolute_tracking_uri
    from training.config import load_run_config

    cfg = load_run_config(None, [], base=spec.base)
    problems = []
    kind, args = spec.space.get("model.name", (None, []))
    names = [str(a) for a in args] if kind in ("choice", "grid_search") else [cfg.model.name]
    kind, args = spec.space.get("data.segment_samples", (None, []))
    if kind is None:
        segments = [cfg.data.segment_samples]
    else:  # a range axis (randint, ...) is not checked
        segments = list(args) if kind in ("choice", "grid_search") else []
    for name in names:
        problems += check_model(name, spec.source)
        for seg in segments:
            problems += check_segment(cfg, spec.source, name, seg)
    problems += check_data(cfg, spec.source)
    if not spec.mlflow.get("server"):
        problems += check_tracking_uri(absolute_tracking_uri(spec.mlflow.get("tracking_uri"), spec.search_dir),
                                       spec.source)
    raise_if(problems)
