"""Experiment tracking behind a small `log(metrics, step)` / `flush()` / `close()` interface (MLflow).

One MLflow run per training run. Its id is written to `WORKDIR/mlflow_run_id` and stored in every
checkpoint; a resumed run re-opens it by id.

Off the training loop's critical path. `log()` buffers; `flush()` (the trainer calls it right after
every training window of `trainer.log_every` steps and every validation) hands the buffer to a
background sender thread and returns at once: the trainer never waits on the network. The sender
writes the points in step order, 1000 per `log_batch`, and also does the run's other writes (tags,
the config text, artifacts) in the order they were asked for. When the tracking server does not
answer (crash, login-node reboot) it warns once, keeps every point and retries with a growing pause
(1 s ... 30 s); when the server is back it writes them all, into the same run. Held points cost
≈0.1 KB of memory each (a million after hours of outage at the planned cadence of a large sweep).
A fresh run whose server does not answer at the start trains on; its MLflow run is created when the
server answers. `close()` waits for the sender while the server makes progress and gives up after
`TIMEOUT_S` without any (one warning line; the points are in the newest checkpoint, see below).

Exactly once. A preempted or killed run resumes from its newest complete checkpoint and recomputes,
bit for bit, the values of the steps after it -- some of which MLflow already holds. Before its first
write after a (re-)open, and after any write that failed (a `log_batch` the server committed just
before it died reports a failure too), the sender asks MLflow for the largest step stored per key
(one `get_run`: MLflow keeps each key's latest metric by step) and skips every point at or below it.
MLflow itself is the record, not a side file in the workdir: a side file written after `log_batch`
could lag a crash between the two and cause a duplicate; a file written before could claim a point
that never arrived. Points go out per key in step order, so a `log_batch` cut short leaves a per-key
prefix, and the skip rule fills the rest. What is not yet confirmed written at a checkpoint (buffered
or in the sender's hands) is stored in it (`pending()`) and handed over again on resume
(`restore_pending()`), so nothing is lost. The rule assumes an exact resume (same world size): after
a world-size change the recomputed values differ and the already-logged ones are kept.

Bounded waits (`limit_http_waits`, the one rule every MLflow client of the project uses, through
`mlflow_client()`): each HTTP call to a tracking server gives up after `TIMEOUT_S` (MLflow's own
default retries for minutes); commands that need the server probe it first (`require_tracking`) and
stop within `TIMEOUT_S` with one line naming the server and what to do (`TrackingError`).

Provenance (`source_tags()`): MLflow's standard `mlflow.source.git.commit`, `mlflow.user`,
`mlflow.source.name/type`, plus `se.git_dirty` and `se.version.<package>`. The commit comes from git
when the code is a git checkout, else from `SE_GIT_COMMIT` / `SE_GIT_DIRTY`, which the orchestrator
sets at submission (`capture_source_env()`) and every launcher passes on (containers included).
The resolved config is logged as artifact `config.yaml` when the run opens (`log_text`).

System metrics: MLflow's own `SystemMetricsMonitor` (CPU %, memory, disk, network; NVIDIA GPUs
through pynvml, AMD/ROCm through pyrsmi when installed), every `mlflow.system_metrics_s` seconds,
keys `system/...`, continued after a resume (`resume_logging`), started once the run is open. Its
samples taken while the server is down are lost (MLflow's monitor does not keep them). Needs psutil.

Only rank 0 logs (`build_tracker` returns a `NullTracker` elsewhere).
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.config import ConfigError
from common.rundir import RUN_ID_FILE
from training.sqlite_store import ensure_sqlite_file

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


# ---------------------------------------------------------------- bounded waits, one rule for every client

TIMEOUT_S = 10  # seconds an MLflow HTTP call (connect, or read) may take before it counts as failed
HTTP_LIMITS = {  # MLflow's defaults: 120 s per attempt, 7 retries with exponential pauses (minutes)
    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(TIMEOUT_S),
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",  # the tracker's sender retries itself; commands say "retry later"
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
}
HEALTH_TIMEOUT_S = 5.0
START_HINT = "start it (`orchestrate mlflow-server DIR --background`, DIR: the folder with its server.json)"


class TrackingError(ConfigError):
    """The tracking server or run cannot be used: one line naming the URI and what the user can do."""


def limit_http_waits() -> None:
    """Make every MLflow HTTP call of this process give up after `TIMEOUT_S` without retries (values
    already in the environment win). MLflow reads these variables at each call."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout is the commands' (--json)
    for k, v in HTTP_LIMITS.items():
        os.environ.setdefault(k, v)


def mlflow_client(uri: str):
    """An `MlflowClient` for `uri` under `limit_http_waits()`: the one way the project opens one."""
    limit_http_waits()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def is_http(uri: str | None) -> bool:
    return str(uri or "").startswith(("http://", "https://"))


def server_problem(uri: str, timeout_s: float = HEALTH_TIMEOUT_S) -> str | None:
    """Why the tracking server at `uri` cannot be used now (e.g. "connection refused"), None when it
    answers (any HTTP status: a server behind auth answers too) or `uri` is not a server."""
    if not is_http(uri):
        return None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        return str(getattr(reason, "strerror", None) or reason).lower()


def unavailable_message(uri: str, reason: str, advice: str = "") -> str:
    """The one line for a tracking server that does not answer."""
    return f"MLflow tracking server {uri} does not answer ({reason}): {advice or START_HINT + ', or retry later'}"


def check_metric_keys(keys) -> None:
    """MLflow's own rule for metric names (letters, digits, `_ - . : /`, space; no `..` path parts);
    TrackingError naming the first bad key."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_metric_name

    for key in keys:
        try:
            _validate_metric_name(key)
        except MlflowException:
            raise TrackingError(f"MLflow metric name {key!r} is not allowed: MLflow takes letters, digits, "
                                f"'_', '-', '.', ':', '/' and spaces") from None


def require_tracking(uri: str, *, run_id: str | None = None, keys=(), opt_out: str = "") -> None:
    """Before any work of a command that writes to MLflow: its metric `keys` are valid names, the
    server answers (within `HEALTH_TIMEOUT_S`), and `run_id` (if given) is in its store. TrackingError
    otherwise: one line with the URI, what is wrong and the choices (`opt_out`: the command's option
    to skip MLflow, e.g. "--no-mlflow")."""
    skip = f", or add {opt_out}" if opt_out else ""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise TrackingError(f"tracking URI {uri}: no such database file (a reader does not create one){skip}")
    try:
        check_metric_keys(keys)
    except TrackingError as e:
        raise TrackingError(f"{e} (rename it{skip})") from None
    problem = server_problem(uri)
    if not problem and run_id:
        from mlflow.exceptions import MlflowException

        try:
            mlflow_client(uri).get_run(run_id)
        except MlflowException as e:
            if not is_unreachable(e):
                raise TrackingError(f"MLflow run {run_id} is not in the store at {uri} ({_short(e)}): give the "
                                    f"tracking URI of the store that holds it{skip}") from None
            problem = _short(e)
    if problem:
        raise TrackingError(unavailable_message(uri, problem, f"retry when it is back{skip}"))


REFUSALS = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                      "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_STATE", "BAD_REQUEST", "ENDPOINT_NOT_FOUND"})


def is_unreachable(exc: BaseException) -> bool:
    """False for a definite refusal by MLflow (unknown run, bad value, permission: retrying cannot
    help), True for everything that may pass later (no answer, timeout, 5xx/429, a locked SQLite file)."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, RestException):
        code = exc.get_http_status_code()
        return code >= 500 or code == 429
    if isinstance(exc, MlflowException):
        return exc.error_code not in REFUSALS
    return True


def _short(exc: BaseException) -> str:
    """The gist of an MLflow/HTTP error, one line."""
    text = str(exc).replace("\n", " ")
    for marker in ("Connection refused", "timed out", "Name or service not known", "No route to host",
                   "Connection aborted", "Connection reset"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text[:160]


# ---------------------------------------------------------------- trackers


class NullTracker:
    """Accepts everything, records nothing (ranks > 0, mlflow.enabled = false)."""

    run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self, strict: bool = False) -> None:
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


Point = tuple[str, float, int, int]  # key, value, timestamp (ms), step
BATCH = 1000  # MLflow's log_batch limit for metrics
STATS_ENV = "SE_TRACKING_STATS"  # a file: each closing tracker appends one JSON line of its SenderStats
MAX_PAUSE_S = 30.0


class MlflowTracker(NullTracker):
    """Live, exactly-once MLflow logging for rank 0 through a background sender (module docstring).

    Thread roles: `log`, `flush`, `pending`, `restore_pending` and the write requests are called by
    the trainer; `_send_loop` alone talks to MLflow after the opening attempt. `_queue` (handed over,
    not yet confirmed, head first) and `_ops` are shared under `_lock`."""

    def __init__(self, cfg, workdir: Path, *, run_id: str | None, params: dict[str, str], tags: dict[str, str]):
        self.uri = str(cfg.tracking_uri)
        ensure_sqlite_file(self.uri)
        self.client = mlflow_client(self.uri)
        self._cfg, self._workdir, self._params, self._tags = cfg, Path(workdir), params, tags
        self._buffer: list[Point] = []  # logged, not handed over yet (trainer thread only)
        self._queue: list[Point] = []
        self._ops: list[tuple[str, tuple]] = []  # ("set_tags", (tags,)), ("log_text", ...), ...
        self._lock = threading.Condition()
        self._logged_max: dict[str, int] | None = None  # key -> largest step MLflow holds; None: ask
        self._sysmon = None
        self._closing = False
        self._down_since: float | None = None
        self.stats = SenderStats()
        self.run_id = run_id or _read_run_id(workdir)
        self._fresh_run = self.run_id is None
        self._opened = False
        try:
            self._open()
        except Exception as e:
            if not is_unreachable(e):
                what = f"re-open run {self.run_id}" if self.run_id else f"create a run in experiment {cfg.experiment!r}"
                raise TrackingError(f"MLflow at {self.uri}: cannot {what}: {_short(e)}") from None
            self._went_down(e)
        self._sender = threading.Thread(target=self._send_loop, name="mlflow-sender", daemon=True)
        self._sender.start()

    # ----- the trainer's side
    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        for k, v in metrics.items():
            v = float(v)
            if math.isfinite(v):
                self._buffer.append((k, v, now, int(step)))

    def flush(self, strict: bool = False) -> None:
        """Hand the buffered points to the sender; returns at once. `strict`: also wait until MLflow
        holds them (tests, tools), TrackingError when the server makes no progress for `TIMEOUT_S`."""
        t0 = time.perf_counter()
        if self._buffer:
            with self._lock:
                self._queue.extend(self._buffer)
                self._lock.notify()
            self._buffer = []
        self.stats.blocked_s += time.perf_counter() - t0
        if strict and not self._drain(TIMEOUT_S):
            raise TrackingError(unavailable_message(self.uri, self._reason, f"{len(self.pending())} points not "
                                                    f"written yet; they are kept and retried"))

    def pending(self) -> list:
        """Every point not yet confirmed written (the sender's, then the buffer), as lists for a checkpoint."""
        with self._lock:
            queued = list(self._queue)
        return [list(p) for p in queued + self._buffer]

    def restore_pending(self, pending: list) -> None:
        self._buffer = [(str(k), float(v), int(t), int(s)) for k, v, t, s in pending] + self._buffer

    def _request(self, op: str, *args) -> None:
        with self._lock:
            self._ops.append((op, args))
            self._lock.notify()

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set (or overwrite) run tags, e.g. device and version facts known only inside the job."""
        self._request("set_tags", dict(tags))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._request("log_text", text, artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._request("log_artifact", str(path), artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self._request("log_artifacts", str(folder), artifact_path)

    def close(self, status: str = "FINISHED", idle_s: float = TIMEOUT_S) -> None:
        """Write what is left and mark the run `status`: waits while the server makes progress, gives
        up after `idle_s` without any (one warning; the points are in the newest checkpoint)."""
        if self._sysmon is not None:
            self._sysmon.finish()  # its last aggregate is written while the run is still RUNNING
            self._sysmon = None
        self.flush()
        self._request("terminate", status)
        self._closing = True
        done = self._drain(idle_s)
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._sender.join(timeout=TIMEOUT_S + 1)
        stats_file = os.environ.get(STATS_ENV)
        if stats_file:  # the rehearsal's record of this process's sender (benchmarks/rehearse.py)
            with open(stats_file, "a") as f:
                f.write(json.dumps({"run_id": self.run_id, **asdict(self.stats)}) + "\n")
        if not done:
            log.warning("MLflow: %d metric points and the run's status %s not written (%s does not answer: %s); "
                        "the points are stored in the newest checkpoint: run the same command again when the "
                        "server is back to write them", len(self.pending()), status, self.uri, self._reason)

    def _drain(self, idle_s: float) -> bool:
        """Wait until the sender has written everything handed over (True), or until it made no
        progress for `idle_s` (False)."""
        with self._lock:
            last, left = time.monotonic(), len(self._queue) + len(self._ops)
            while self._queue or self._ops or not self._opened:
                if not self._sender.is_alive():
                    return False
                now_left = len(self._queue) + len(self._ops) + (not self._opened)
                if now_left < left:
                    last, left = time.monotonic(), now_left
                if time.monotonic() - last > idle_s:
                    return False
                self._lock.wait(0.05)
        return True

    # ----- the sender's side
    _stop = False
    _reason = ""

    def _open(self) -> None:
        """Create the run (or re-open it: status RUNNING), its params and config text; start system metrics."""
        cfg = self._cfg
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
            log.info("MLflow: re-opened run %s", self.run_id)
        else:
            exp_id = self._experiment_id(cfg)
            all_tags = {k: str(v) for k, v in self._tags.items()}
            if cfg.parent_run_id:
                all_tags["mlflow.parentRunId"] = str(cfg.parent_run_id)
            run = self.client.create_run(exp_id, tags=all_tags, run_name=cfg.run_name or self._tags.get("run_name"))
            self._log_params(run.info.run_id, self._params)
            _write_run_id(self._workdir, run.info.run_id)
            self.run_id = run.info.run_id
            log.info("MLflow: created run %s in experiment %s", self.run_id, exp_id)
        self._opened = True
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

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def _send_loop(self) -> None:
        pause = 0.0
        while True:
            with self._lock:
                if pause:
                    self._lock.wait(min(pause, 1.0) if self._closing else pause)
                while not (self._stop or self._queue or self._ops or not self._opened):
                    self._lock.wait()
                if self._stop:
                    return
                ops, chunk = list(self._ops), self._queue[:BATCH]
            stage = "open"
            try:
                if not self._opened:
                    self._open()
                stage = "ops"
                self._do_ops(ops)
                stage = "write"
                self._write(chunk)
            except Exception as e:
                if is_unreachable(e):
                    self._logged_max = None  # a failed log_batch may have been committed: ask again
                    self._went_down(e)
                    pause = min(MAX_PAUSE_S, max(1.0, 2 * pause))
                    continue
                if stage == "open":  # e.g. the parent run is gone: nothing of this run can be written
                    log.error("MLflow: cannot open the run at %s (%s); nothing more is logged; the points "
                              "stay in the checkpoints", self.uri, _short(e))
                    return
                log.error("MLflow: %s refused (%s); dropped", "a write" if stage == "ops" else
                          f"{len(chunk)} metric points", _short(e))  # retrying cannot help
                with self._lock:
                    if stage == "ops" and self._ops:
                        self._ops.pop(0)
                    elif stage == "write":
                        del self._queue[: len(chunk)]
                    self._lock.notify_all()
                continue
            if self._down_since is not None:
                log.warning("MLflow: tracking server %s answers again after %.0f s; writing the %d points kept",
                            self.uri, time.monotonic() - self._down_since, len(self._queue))
                self._down_since = None
            pause = 0.0

    def _went_down(self, e: BaseException) -> None:
        self._reason = _short(e)
        if self._down_since is None:  # once per outage
            self._down_since = time.monotonic()
            log.warning("%s; training goes on, its points are kept and written when the server is back",
                        unavailable_message(self.uri, self._reason))

    def _do_ops(self, ops: list) -> None:
        from mlflow.entities import RunTag

        for op, args in ops:
            if op == "set_tags":
                items = [RunTag(str(k), str(v)[:5000]) for k, v in args[0].items()]
                for i in range(0, len(items), 100):
                    self.client.log_batch(self.run_id, tags=items[i : i + 100])
            elif op == "log_text":
                self.client.log_text(self.run_id, *args)
            elif op == "log_artifact":
                self.client.log_artifact(self.run_id, *args)
            elif op == "log_artifacts":
                self.client.log_artifacts(self.run_id, *args)
            elif op == "terminate":
                with self._lock:
                    if self._queue:  # the run's status comes after its last point
                        continue
                self.client.set_terminated(self.run_id, status=args[0])
            with self._lock:
                self._ops.remove((op, args))
                self._lock.notify_all()

    def _max_logged(self) -> dict[str, int]:
        """key -> largest step MLflow holds for this run (asked once per (re-)open and after a failure)."""
        if self._logged_max is None:
            if self._fresh_run and not self.stats.failures:
                self._logged_max = {}
            else:
                run = self.client.get_run(self.run_id)
                self._logged_max = {m.key: int(m.step) for m in run.data._metric_objs}
        return self._logged_max

    def _write(self, chunk: list[Point]) -> None:
        from mlflow.entities import Metric

        if not chunk:
            return
        logged = self._max_logged()
        fresh = [m for m in chunk if m[3] > logged.get(m[0], -1)]
        if fresh:
            t0 = time.perf_counter()
            try:
                self.client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in fresh])
            except Exception:
                self.stats.failures += 1
                raise
            self.stats.latencies_s.append(time.perf_counter() - t0)
            self.stats.points += len(fresh)
            for k, _, _, s in fresh:
                logged[k] = max(logged.get(k, -1), s)
        with self._lock:
            del self._queue[: len(chunk)]
            self._lock.notify_all()


@dataclass
class SenderStats:
    """What the sender did (read by benchmarks/bench_mlflow_rate.py and tests)."""

    points: int = 0  # metric points written
    failures: int = 0  # log_batch calls that failed
    latencies_s: list = field(default_factory=list)  # one per successful log_batch
    blocked_s: float = 0.0  # time the trainer spent inside flush()


class TrackerState:
    """The run's tracker as a checkpoint part: its MLflow run id and the points not written yet
    (`pending()`), fields `mlflow_run_id` / `pending_metrics` of `state.pt`. Restored before the tracker
    exists (the id says which run to re-open); `open()` builds it and hands it the restored points."""

    def __init__(self):
        self.tracker: NullTracker = NullTracker()  # until open()
        self._run_id: str | None = None
        self._pending: list = []

    def state_dict(self) -> dict:
        return {"mlflow_run_id": self.tracker.run_id or "", "pending_metrics": self.tracker.pending()}

    def load_state_dict(self, state: dict) -> None:
        self._run_id = state.get("mlflow_run_id") or None
        self._pending = state.get("pending_metrics", [])

    def open(self, cfg_mlflow, workdir: Path, *, rank: int, params: dict, tags: dict) -> NullTracker:
        """Build this rank's tracker (`build_tracker`), re-opening the restored run, with the restored points."""
        self.tracker = build_tracker(cfg_mlflow, workdir, rank=rank, run_id=self._run_id, params=params, tags=tags)
        self.tracker.restore_pending(self._pending)
        return self.tracker


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
    from common.atomic import atomic_write_text

    Path(workdir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(workdir) / RUN_ID_FILE, run_id + "\n")
