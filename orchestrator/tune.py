"""Hyper-parameter search with Ray Tune: a YAML search space over RunConfig keys, ASHA on `val/pesq`.

Each trial is one ordinary training run (``training.run.train(cfg, workdir)``), logged as an MLflow
child run of the search's parent run (tags ``se.kind=sweep``/``se.sweep=<name>`` on the parent,
``se.sweep``, ``se.cell``, ``se.trial`` on the children). ASHA needs a score after every validation:
the trial passes ``on_validation=fn`` to the engine, which calls ``fn(step, {"val/<metric>": ...})``
on rank 0 after each validation; ``fn`` reports it to Tune (one process, no restarts; a trial
ASHA stops ends there).

Tune file (``sweeps/tune_demo.yaml``)::

    name: tune_demo
    base: {data.batch_size: 2, trainer.max_steps: 40, trainer.val_every: 10}   # or a RunConfig YAML path
    space:
      optim.lr: {loguniform: [1.0e-4, 1.0e-3]}
      data.batch_size: {choice: [2, 4]}
    scheduler: {metric: val/pesq, mode: max, grace_period: 1, reduction_factor: 2}
    num_samples: 4
    resources: {cpu: 1, gpu: 0}
    mlflow: {tracking_uri: null, experiment: null, server: false}

Folders: ``ROOT/NAME/trials/<trial_id>/`` (run directories), ``ROOT/NAME/ray/`` (Tune's own state),
``ROOT/NAME/tune_results.json`` (the summary, also an artifact of the parent run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_text
from common.rundir import RUN_ID_FILE
from orchestrator.errors import UserError
from orchestrator.sweeps.spec import key_error, nest_dotted

log = logging.getLogger(__name__)

TOP_KEYS = ("name", "base", "overrides", "space", "scheduler", "num_samples", "max_concurrent", "resources",
            "mlflow", "root", "seed")  # fmt: skip
SPACE_KINDS = {  # kind -> number of arguments (None: a non-empty list of values)
    "loguniform": 2, "uniform": 2, "randint": 2, "lograndint": 2, "quniform": 3, "qloguniform": 3,
    "choice": None, "grid_search": None,
}  # fmt: skip

TrainFn = Callable[..., int]


@dataclass
class TuneSpec:
    """A parsed, checked tune file."""

    name: str
    source: str
    base: dict  # nested RunConfig values (the base file merged with the inline mapping)
    space: dict[str, tuple[str, list]]  # dotted key -> (kind, arguments)
    metric: str = "val/pesq"
    mode: str = "max"
    grace_period: int = 1
    reduction_factor: float = 2.0
    num_samples: int = 4
    max_concurrent: int | None = None
    resources: dict = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    mlflow: dict = field(default_factory=dict)
    root: str = "runs"
    seed: int | None = 0

    @property
    def search_dir(self) -> Path:
        return Path(self.root).resolve() / self.name


@dataclass
class TrialSummary:
    trial_id: str
    values: dict
    iterations: int
    last: float | None
    best: float | None
    stopped_early: bool
    mlflow_run_id: str | None
    workdir: str
    error: str | None = None


@dataclass
class TuneOutcome:
    name: str
    tracking_uri: str
    parent_run_id: str
    max_iterations: int
    trials: list[TrialSummary]
    best: TrialSummary | None


# ---------------------------------------------------------------- the tune file


# The tune file's base config nests dotted keys exactly as a sweep file's does.
_err = key_error
_nest = nest_dotted


def _parse_space(space: Any, source: str) -> dict[str, tuple[str, list]]:
    if not isinstance(space, dict) or not space:
        raise _err(source, "space", "expected a non-empty mapping `config.key: {kind: [args]}`")
    out = {}
    for key, dist in space.items():
        where = f"space.{key}"
        if not isinstance(dist, dict) or len(dist) != 1:
            raise _err(source, where, f"expected one of {{{', '.join(SPACE_KINDS)}}}: [args], got {dist!r}")
        (kind, args), = dist.items()
        if kind not in SPACE_KINDS:
            raise _err(source, where, f"unknown distribution {kind!r} (known: {', '.join(SPACE_KINDS)})")
        n = SPACE_KINDS[kind]
        if not isinstance(args, list) or (n is None and not args) or (n is not None and len(args) != n):
            want = "a non-empty list of values" if n is None else f"a list of {n} numbers"
            raise _err(source, where, f"{kind} expects {want}, got {args!r}")
        if n is not None:
            if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                raise _err(source, where, f"{kind} expects numbers, got {args!r}")
            if args[0] >= args[1] or (kind.startswith("log") and args[0] <= 0):
                raise _err(source, where, f"{kind} expects 0 < low < high (low < high for uniform), got {args!r}")
        out[str(key)] = (kind, list(args))
    return out


def load_tune_spec(path: str | os.PathLike, overrides: list[str] | None = None) -> TuneSpec:
    """Read and check a tune file; every trial's config is validated here, before Ray starts.

    ``overrides`` (``key=value``) apply to the base config of every trial."""
    from common.config import ConfigError, check_value, load_yaml, merge

    source = str(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping at the top level")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise _err(source, unknown[0], f"unknown key (known: {', '.join(TOP_KEYS)})")
    name = data.get("name") or Path(source).stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise _err(source, "name", f"expected a name of letters, digits, '-', '_', '.', got {name!r}")
    base_value = data.get("base") or {}
    if isinstance(base_value, str):
        base_path = Path(base_value)
        if not base_path.is_absolute() and not base_path.exists():
            base_path = Path(source).parent / base_path
        base = load_yaml(base_path)
        if not isinstance(base, dict):
            raise _err(source, "base", f"{base_path} does not hold a mapping of RunConfig values")
        base = _nest(base, str(base_path), "base")
    else:
        base = _nest(base_value, source, "base")
    for i, item in enumerate(data.get("overrides") or []):
        if not isinstance(item, str) or "=" not in item:
            raise _err(source, f"overrides[{i}]", f"expected 'key=value', got {item!r}")
    overrides = list(data.get("overrides") or []) + list(overrides or [])
    sched = data.get("scheduler") or {}
    if not isinstance(sched, dict):
        raise _err(source, "scheduler", "expected a mapping (metric, mode, grace_period, reduction_factor)")
    bad = sorted(set(sched) - {"type", "metric", "mode", "grace_period", "reduction_factor"})
    if bad:
        raise _err(source, f"scheduler.{bad[0]}", "unknown key (metric, mode, grace_period, reduction_factor)")
    if sched.get("type", "asha") != "asha":
        raise _err(source, "scheduler.type", f"only 'asha' is supported, got {sched.get('type')!r}")
    res = data.get("resources") or {}
    if not isinstance(res, dict) or set(res) - {"cpu", "gpu"}:
        raise _err(source, "resources", f"expected {{cpu: N, gpu: M}} per trial, got {res!r}")
    try:  # Ray refuses a trial of 0 CPUs only deep inside Tune, with a traceback
        res = {"cpu": check_value(res.get("cpu", 1), float, {"gt": 0}, "resources.cpu"),
               "gpu": check_value(res.get("gpu", 0), float, {"ge": 0}, "resources.gpu")}
    except ConfigError as e:
        raise UserError(f"{source}: {e}") from None
    ml = data.get("mlflow") or {}
    if not isinstance(ml, dict) or set(ml) - {"tracking_uri", "experiment", "server"}:
        raise _err(source, "mlflow", f"expected {{tracking_uri, experiment, server}}, got {ml!r}")
    spec = TuneSpec(
        name=name, source=source, base=base, space=_parse_space(data.get("space"), source),
        metric=str(sched.get("metric", "val/pesq")), mode=str(sched.get("mode", "max")),
        grace_period=sched.get("grace_period", 1), reduction_factor=sched.get("reduction_factor", 2),
        num_samples=data.get("num_samples", 4), max_concurrent=data.get("max_concurrent"),
        resources=res,
        mlflow=dict(ml), root=str(data.get("root", "runs")), seed=data.get("seed", 0),
    )  # fmt: skip
    if spec.mode not in ("max", "min"):
        raise _err(source, "scheduler.mode", f"expected max or min, got {spec.mode!r}")
    for key, value, ok in (
        ("scheduler.grace_period", spec.grace_period, isinstance(spec.grace_period, int) and spec.grace_period >= 1),
        ("scheduler.reduction_factor", spec.reduction_factor,
         isinstance(spec.reduction_factor, (int, float)) and 1 < spec.reduction_factor < math.inf),
        ("num_samples", spec.num_samples, isinstance(spec.num_samples, int) and spec.num_samples >= 1),
        ("max_concurrent", spec.max_concurrent, spec.max_concurrent is None
         or (isinstance(spec.max_concurrent, int) and spec.max_concurrent >= 1)),
    ):  # fmt: skip
        if not ok:
            raise _err(source, key, f"invalid value {value!r}")
    if overrides:
        from common.config import parse_overrides

        for key, value, _src in parse_overrides(overrides):
            spec.base = merge(spec.base, _nest({key: value}, source, "overrides"))
    # every corner of the space must give a valid RunConfig: check the first/last of each axis now
    for key, (kind, args) in spec.space.items():
        for value in (args if kind in ("choice", "grid_search") else args[:2]):
            trial_config(spec, {key: value}, trial_id="check", parent_run_id=None, tracking_uri="sqlite:///x.db")
    return spec


def search_space(spec: TuneSpec) -> dict:
    """The Ray Tune ``param_space`` (dotted config key -> Tune domain)."""
    from ray import tune

    return {k: getattr(tune, kind)(args) if kind in ("choice", "grid_search") else getattr(tune, kind)(*args)
            for k, (kind, args) in spec.space.items()}  # fmt: skip


def trial_config(spec: TuneSpec, values: dict, *, trial_id: str, parent_run_id: str | None, tracking_uri: str,
                 experiment: str | None = None, cpus: float | None = None):  # fmt: skip
    """The trial's RunConfig: base <- sampled values <- naming and MLflow nesting (validated)."""
    from common.config import merge
    from training.config import load_run_config

    cfg_dict = merge(spec.base, _nest(values, spec.source, "space"))
    cfg_dict = merge(cfg_dict, {
        "name": f"{spec.name}-{trial_id}",
        "launcher": {"executor": "ray"},
        "mlflow": {"tracking_uri": tracking_uri, "experiment": experiment or spec.name, "run_name": trial_id,
                   "parent_run_id": parent_run_id,
                   "tags": {"se.sweep": spec.name, "se.cell": trial_id, "se.trial": trial_id}},
    })  # fmt: skip
    cfg = load_run_config(None, [], base=cfg_dict)
    if cpus and cfg.trainer.num_threads is None:
        cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, num_threads=max(1, int(cpus))))
    return cfg


def max_iterations(spec: TuneSpec) -> int:
    """Validations per full trial: ceil(max_steps / val_every) (1 when val_every is 0)."""
    from training.config import load_run_config

    t = load_run_config(None, [], base=spec.base).trainer
    return 1 if not t.val_every else math.ceil(t.max_steps / t.val_every)


# ---------------------------------------------------------------- one trial


def _default_train_fn() -> TrainFn:
    from training.run import train

    return train


def run_trial(config: dict, *, spec: TuneSpec, parent_run_id: str, tracking_uri: str, experiment: str,
              train_fn: TrainFn | None = None, cwd: str | None = None) -> None:  # fmt: skip
    """The Tune trainable (runs inside a Ray worker): one training run, reporting after each
    validation. ``cwd``: the submitting folder, where relative paths of the config (data, test
    sets) resolve. ``train_fn`` replaces ``training.run.train`` (tests)."""
    from ray import tune

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # Tune may have moved the worker into its trial folder
    train_fn = train_fn or _default_train_fn()
    trial_id = tune.get_context().get_trial_id()
    workdir = spec.search_dir / "trials" / trial_id
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = trial_config(spec, config, trial_id=trial_id, parent_run_id=parent_run_id, tracking_uri=tracking_uri,
                       experiment=experiment, cpus=spec.resources.get("cpu"))  # fmt: skip
    from training.config import save_config

    save_config(cfg, workdir / "tune_config.yaml")

    def report(step: int, metrics: dict) -> None:
        if spec.metric not in metrics:
            raise RuntimeError(f"trial {trial_id}: no {spec.metric} after step {step} (is data.valid set?)")
        tune.report({**{k: float(v) for k, v in metrics.items()}, "step": int(step)})

    rc = train_fn(cfg, workdir, on_validation=report)
    if rc != 0:
        raise RuntimeError(f"training exited with code {rc} (workdir {workdir})")


# ---------------------------------------------------------------- the search


def _tracking(spec: TuneSpec) -> str:
    from orchestrator.mlflow_sweep import absolute_tracking_uri

    if spec.mlflow.get("server"):
        from orchestrator.mlflow_server import ensure_server

        return ensure_server(spec.search_dir / "mlflow")
    return absolute_tracking_uri(spec.mlflow.get("tracking_uri"), spec.search_dir)


def _summaries(results, spec: TuneSpec, max_iter: int) -> list[TrialSummary]:
    out = []
    for r in results:
        m = r.metrics or {}
        trial_id = m.get("trial_id") or Path(str(r.path)).name
        df = r.metrics_dataframe
        scores = [float(x) for x in df[spec.metric].dropna()] if df is not None and spec.metric in df else []
        best = (max(scores) if spec.mode == "max" else min(scores)) if scores else None
        iters = int(m.get("training_iteration", 0) or 0)
        workdir = spec.search_dir / "trials" / trial_id
        run_id_file = workdir / RUN_ID_FILE
        out.append(TrialSummary(
            trial_id=trial_id, values={k: r.config.get(k) for k in spec.space}, iterations=iters,
            last=float(m[spec.metric]) if spec.metric in m else None, best=best,
            stopped_early=r.error is None and iters < max_iter,
            mlflow_run_id=run_id_file.read_text().strip() if run_id_file.is_file() else None,
            workdir=str(workdir), error=None if r.error is None else str(r.error).splitlines()[0][:300],
        ))  # fmt: skip
    return sorted(out, key=lambda t: t.trial_id)


def run_tune(
    spec: TuneSpec | str | os.PathLike,
    *,
    address: str | None = None,
    num_cpus: int | None = 2,
    train_fn: TrainFn | None = None,
    overrides: list[str] | None = None,
    verbose: int = 1,
) -> TuneOutcome:
    """Run the search; returns the per-trial summary. Starts a local Ray (``num_cpus``) unless
    ``address`` (``auto`` inside a Ray cluster) is given or Ray is already initialised.
    ``train_fn`` replaces ``training.run.train`` (tests)."""
    if not isinstance(spec, TuneSpec):
        spec = load_tune_spec(spec, overrides)
    for var, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("MLFLOW_DISABLE_TELEMETRY", "true")):
        os.environ.setdefault(var, value)
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from orchestrator.mlflow_sweep import ensure_parent_run, finish_parent_run

    spec.search_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = _tracking(spec)
    experiment = spec.mlflow.get("experiment") or spec.name
    parent = ensure_parent_run(tracking_uri, experiment, spec.name)
    max_iter = max_iterations(spec)
    log.info("tune %s: %d samples, ASHA on %s (%s), %d validations per full trial, "
             "MLflow parent run %s at %s", spec.name, spec.num_samples, spec.metric, spec.mode, max_iter,
             parent, tracking_uri)  # fmt: skip
    started_ray = False
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=verbose > 0)  # fmt: skip
        started_ray = True
    t0 = time.monotonic()
    try:
        trainable = tune.with_parameters(run_trial, spec=spec, parent_run_id=parent, tracking_uri=tracking_uri,
                                         experiment=experiment, train_fn=train_fn, cwd=os.getcwd())  # fmt: skip
        trainable = tune.with_resources(trainable, {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]})
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_iter, grace_period=spec.grace_period,
                                  reduction_factor=spec.reduction_factor)  # fmt: skip
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, scheduler=scheduler, num_samples=spec.num_samples,
                search_alg=BasicVariantGenerator(random_state=spec.seed, max_concurrent=spec.max_concurrent or 0),
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(name="ray", storage_path=str(spec.search_dir), verbose=verbose,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )  # fmt: skip
        results = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    trials = _summaries(results, spec, max_iter)
    done = [t for t in trials if t.best is not None]
    best = (max if spec.mode == "max" else min)(done, key=lambda t: t.best) if done else None
    outcome = TuneOutcome(spec.name, tracking_uri, parent, max_iter, trials, best)
    _record(outcome, spec, time.monotonic() - t0)
    finish_parent_run(tracking_uri, parent, "FINISHED" if best is not None else "FAILED")
    return outcome


def _record(outcome: TuneOutcome, spec: TuneSpec, seconds: float) -> None:
    """``tune_results.json`` beside the trials and as an artifact of the parent run; best on the parent."""
    from orchestrator import mlflow_sweep

    path = spec.search_dir / "tune_results.json"
    data = dataclasses.asdict(outcome) | {"metric": spec.metric, "mode": spec.mode, "seconds": round(seconds, 1)}
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    client = mlflow_sweep.client(outcome.tracking_uri)
    client.log_artifact(outcome.parent_run_id, str(path))
    for t in outcome.trials:  # mark how each trial ended; a run left RUNNING by a killed trial is KILLED
        if not t.mlflow_run_id:
            continue
        status = "error" if t.error else ("stopped" if t.stopped_early else "complete")
        client.set_tag(t.mlflow_run_id, "se.tune_status", status)
        if client.get_run(t.mlflow_run_id).info.status == "RUNNING":
            client.set_terminated(t.mlflow_run_id, "FAILED" if t.error else "KILLED")
    if outcome.best is not None:
        client.set_tag(outcome.parent_run_id, "se.best_trial", outcome.best.trial_id)
        client.log_metric(outcome.parent_run_id, f"best/{spec.metric}", outcome.best.best)
        for k, v in outcome.best.values.items():
            client.log_param(outcome.parent_run_id, f"best.{k}", str(v))


def format_outcome(outcome: TuneOutcome, metric: str = "val/pesq") -> str:
    """A one-screen summary: one line per trial, best marked."""
    lines = [f"# tune {outcome.name}: {len(outcome.trials)} trials, up to {outcome.max_iterations} validations each "
             f"(reported by the trainer's validation callback); MLflow parent run {outcome.parent_run_id} at "
             f"{outcome.tracking_uri}",
             f"{'trial':14s} {'iters':>5s} {'last ' + metric:>16s} {'best':>8s}  status    values"]  # fmt: skip
    for t in outcome.trials:
        status = "error" if t.error else ("stopped" if t.stopped_early else "complete")
        mark = " *" if outcome.best is not None and t.trial_id == outcome.best.trial_id else ""
        last = "-" if t.last is None else f"{t.last:.4f}"
        best = "-" if t.best is None else f"{t.best:.4f}"
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.values.items())
        lines.append(f"{t.trial_id:14s} {t.iterations:5d} {last:>16s} {best:>8s}  {status:9s} {values}{mark}")
        if t.error:
            lines.append(f"{'':14s} error: {t.error}")
    if outcome.best is not None:
        lines.append(f"best: {outcome.best.trial_id} ({metric} {outcome.best.best:.4f}), run dir {outcome.best.workdir}")
    return "\n".join(lines)
