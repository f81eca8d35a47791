"""Experiment tracking behind a small `log(metrics, step)` / `flush()` / `close()` interface (MLflow).

One MLflow run per training run. Its id is written to `WORKDIR/mlflow_run_id` and stored in every
checkpoint; a resumed run re-opens it by id.

Live and exactly once. `log()` buffers; the trainer calls `flush()` right after every training
window (`trainer.log_every` steps) and every validation, so curves lag by at most `log_every` steps.
A preempted or killed run resumes from its newest complete checkpoint and recomputes, bit for bit,
the values of the steps after it -- some of which MLflow already holds. How it knows which: at the
first flush after a (re-)open the tracker asks MLflow for the largest step already stored for each
key it is about to write (`get_metric_history`, once per key per session) and skips every point
at or below it. MLflow itself is the record, not a side file in the workdir: a side file written
after `log_batch` could lag a crash between the two and cause a duplicate; a file written before
could claim a point that never arrived. Points are buffered per key in step order, so a `log_batch`
cut short by a crash leaves a per-key prefix, and the skip rule fills the rest. A flush that fails
(server unreachable) keeps its points and retries at the next flush; what is still unflushed at a
checkpoint is stored in it (`pending()`) and re-flushed on resume (`restore_pending()`), so nothing
is lost. The rule assumes an exact resume (same world size): after a world-size change the
recomputed values differ and the already-logged ones are kept.

Provenance (`source_tags()`): MLflow's standard `mlflow.source.git.commit`, `mlflow.user`,
`mlflow.source.name/type`, plus `se.git_dirty` and `se.version.<package>`. The commit comes from git
when the code is a git checkout, else from `SE_GIT_COMMIT` / `SE_GIT_DIRTY`, which the orchestrator
sets at submission (`capture_source_env()`) and every launcher passes on (containers included).
The resolved config is logged as artifact `config.yaml` when the run opens (`log_text`).

System metrics: MLflow's own `SystemMetricsMonitor` (CPU %, memory, disk, network; NVIDIA GPUs
through pynvml, AMD/ROCm through pyrsmi when installed), every `mlflow.system_metrics_s` seconds,
keys `system/...`, continued after a resume (`resume_logging`). Needs psutil.

Only rank 0 logs (`build_tracker` returns a `NullTracker` elsewhere).
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from common.rundir import RUN_ID_FILE

log = logging.getLogger(__name__)


GIT_COMMIT_ENV, GIT_DIRTY_ENV = "SE_GIT_COMMIT", "SE_GIT_DIRTY"
SYSTEM_PREFIX = "system/"
VERSION_PACKAGES = ("se-orchestrator", "torch", "numpy", "mlflow", "webdataset", "mamba-ssm", "causal-conv1d")


def git_source() -> tuple[str, str]:
    """(full commit hash, "true"/"false"/"unknown" dirty flag) of the code being run: git in this
    package's folder, else the `SE_GIT_COMMIT` / `SE_GIT_DIRTY` captured at submission, else "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        if head.returncode == 0 and head.stdout.strip():
            st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=10, cwd=here)
            dirty = "unknown" if st.returncode else ("true" if st.stdout.strip() else "false")
            return head.stdout.strip(), dirty
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get(GIT_COMMIT_ENV) or "unknown", os.environ.get(GIT_DIRTY_ENV) or "unknown"


def capture_source_env() -> None:
    """At submission: put this checkout's commit and dirty flag into the environment the jobs inherit
    (a job in a container without git reads them back in `git_source()`). Existing values win."""
    if os.environ.get(GIT_COMMIT_ENV):
        return
    commit, dirty = git_source()
    if commit != "unknown":
        os.environ[GIT_COMMIT_ENV], os.environ[GIT_DIRTY_ENV] = commit, dirty


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (absent ones left out) and Python's."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # a container uid without a passwd entry and no USER variable
        return os.environ.get("SLURM_JOB_USER", "unknown")


def source_tags(source_name: str = "training.run") -> dict[str, str]:
    """MLflow's standard source tags + dirty flag + package versions (see module docstring)."""
    commit, dirty = git_source()
    tags = {"mlflow.source.git.commit": commit, "se.git_dirty": dirty, "mlflow.user": _user(),
            "mlflow.source.name": source_name, "mlflow.source.type": "JOB"}
    tags |= {f"se.version.{k}": v for k, v in package_versions().items()}
    return tags


class NullTracker:
    """Accepts everything, records nothing (ranks > 0, mlflow.enabled = false)."""

    run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self, strict: bool = True) -> None:
        pass

    def pending(self) -> list:
        return []

    def restore_pending(self, pending: list) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker(NullTracker):
    """Live, exactly-once MLflow logging for rank 0 (see module docstring)."""

    def __init__(self, cfg, workdir: Path, *, run_id: str | None, params: dict[str, str], tags: dict[str, str]):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
        self._buffer: list[tuple[str, float, int, int]] = []
        self._logged_max: dict[str, int] = {}  # key -> max step in MLflow, for the keys known this session
        self._sysmon = None
        run_id = run_id or _read_run_id(workdir)
        if run_id:
            self.run_id = run_id
            self._fresh_run = False  # MLflow may hold points of this run: ask per key before writing
            self.client.update_run(run_id, status="RUNNING")
            log.info("MLflow: re-opened run %s", run_id)
        else:
            exp_id = self._experiment_id(cfg)
            all_tags = {k: str(v) for k, v in tags.items()}
            if cfg.parent_run_id:
                all_tags["mlflow.parentRunId"] = str(cfg.parent_run_id)
            run = self.client.create_run(exp_id, tags=all_tags, run_name=cfg.run_name or tags.get("run_name"))
            self.run_id = run.info.run_id
            self._fresh_run = True
            self._log_params(params)
            _write_run_id(workdir, self.run_id)
            log.info("MLflow: created run %s in experiment %s", self.run_id, exp_id)
        self._start_system_metrics(cfg, resume=not self._fresh_run)

    def _experiment_id(self, cfg) -> str:
        if cfg.parent_run_id:
            return self.client.get_run(cfg.parent_run_id).info.experiment_id
        exp = self.client.get_experiment_by_name(cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(cfg.experiment, artifact_location=_artifact_root(cfg))
        except Exception:  # another run created it meanwhile
            exp = self.client.get_experiment_by_name(cfg.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def _start_system_metrics(self, cfg, *, resume: bool) -> None:
        interval = float(getattr(cfg, "system_metrics_s", 10.0) or 0)
        if interval <= 0:
            return
        try:
            import psutil  # noqa: F401  (MLflow's CPU monitor needs it)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._sysmon = SystemMetricsMonitor(self.run_id, sampling_interval=interval, resume_logging=resume,
                                                tracking_uri=cfg.tracking_uri)
            self._sysmon.start()
        except Exception as e:  # never a reason to stop training
            log.warning("MLflow system metrics off: %s", e)
            self._sysmon = None

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        for k, v in metrics.items():
            v = float(v)
            if math.isfinite(v):
                self._buffer.append((k, v, now, int(step)))

    def pending(self) -> list:
        return [list(item) for item in self._buffer]

    def restore_pending(self, pending: list) -> None:
        self._buffer = [(str(k), float(v), int(t), int(s)) for k, v, t, s in pending] + self._buffer

    def _max_logged_step(self, key: str) -> int:
        if key not in self._logged_max:
            if self._fresh_run:
                self._logged_max[key] = -1
            else:
                hist = self.client.get_metric_history(self.run_id, key)
                self._logged_max[key] = max((m.step for m in hist), default=-1)
        return self._logged_max[key]

    def flush(self, strict: bool = True) -> None:
        """Write the buffered points MLflow does not hold yet. `strict=False` (the live flushes during
        training): a failure is logged and the points stay buffered for the next flush."""
        from mlflow.entities import Metric

        if not self._buffer:
            return
        try:
            fresh = [m for m in self._buffer if m[3] > self._max_logged_step(m[0])]
            for i in range(0, len(fresh), 1000):
                chunk = fresh[i : i + 1000]
                self.client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk])
                for k, _, _, s in chunk:
                    self._logged_max[k] = max(self._logged_max[k], s)
        except Exception as e:
            if strict:
                raise
            self._buffer = [m for m in self._buffer if m[3] > self._logged_max.get(m[0], -1)]
            log.warning("MLflow: %d metric points not written yet (%s); retrying at the next flush",
                        len(self._buffer), e)
            return
        self._buffer.clear()

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set (or overwrite) run tags, e.g. device and version facts known only inside the job."""
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i : i + 100])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        if self._sysmon is not None:
            self._sysmon.finish()  # its last aggregate is written while the run is still RUNNING
            self._sysmon = None
        self.flush()
        self.client.set_terminated(self.run_id, status=status)


def build_tracker(cfg_mlflow, workdir: Path, *, rank: int, run_id: str | None, params: dict, tags: dict):
    """The tracker of this rank: MLflow on rank 0 when enabled, else a NullTracker."""
    if rank != 0 or not cfg_mlflow.enabled:
        return NullTracker()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return MlflowTracker(cfg_mlflow, workdir, run_id=run_id, params=params, tags=tags)


def _artifact_root(cfg) -> str | None:
    """Beside a sqlite database: `<db folder>/mlartifacts/<experiment>` (None: MLflow's default)."""
    uri = str(cfg.tracking_uri)
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :])
    return (db.resolve().parent / "mlartifacts" / cfg.experiment).as_uri()


def _read_run_id(workdir: Path) -> str | None:
    p = Path(workdir) / RUN_ID_FILE
    return p.read_text().strip() or None if p.is_file() else None


def _write_run_id(workdir: Path, run_id: str) -> None:
    from training.checkpoint import atomic_write_text

    Path(workdir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(workdir) / RUN_ID_FILE, run_id + "\n")
