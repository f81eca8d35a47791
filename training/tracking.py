"""Experiment tracking behind a small `log(metrics, step)` / `close()` interface (MLflow backend).

One MLflow run per training run. Its id is written to `WORKDIR/mlflow_run_id` and stored in every
checkpoint; a resumed run re-opens it by id.

Exactly-once metric history across preemptions: metrics are buffered in memory and pushed to
MLflow only right after a checkpoint is complete (`flush()`); the buffer itself is stored in the
checkpoint (`pending()`), and after a resume it is re-flushed with de-duplication (a (key, step)
already in MLflow is skipped). So a step is in MLflow iff it is covered by a complete checkpoint,
and a crash between the checkpoint and the flush loses nothing. Price: the live view lags by up to
`trainer.ckpt_every` steps.

Only rank 0 logs (`build_tracker` returns a `NullTracker` elsewhere).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"


class NullTracker:
    """Accepts everything, records nothing (ranks > 0, mlflow.enabled = false)."""

    run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def pending(self) -> list:
        return []

    def restore_pending(self, pending: list) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker(NullTracker):
    """Buffered MLflow logging for rank 0 (see module docstring)."""

    def __init__(self, cfg, workdir: Path, *, run_id: str | None, params: dict[str, str], tags: dict[str, str]):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
        self._buffer: list[tuple[str, float, int, int]] = []
        self._logged_max: dict[str, int] | None = None  # key -> max step already in MLflow
        run_id = run_id or _read_run_id(workdir)
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            self._logged_max = None  # fetched lazily at the first flush
            log.info("MLflow: re-opened run %s", run_id)
        else:
            exp_id = self._experiment_id(cfg)
            all_tags = {k: str(v) for k, v in tags.items()}
            if cfg.parent_run_id:
                all_tags["mlflow.parentRunId"] = str(cfg.parent_run_id)
            run = self.client.create_run(exp_id, tags=all_tags, run_name=cfg.run_name or tags.get("run_name"))
            self.run_id = run.info.run_id
            self._logged_max = {}
            self._log_params(params)
            _write_run_id(workdir, self.run_id)
            log.info("MLflow: created run %s in experiment %s", self.run_id, exp_id)

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

    def _fetch_logged(self) -> dict[str, int]:
        run = self.client.get_run(self.run_id)
        out = {}
        for key in run.data.metrics:
            hist = self.client.get_metric_history(self.run_id, key)
            out[key] = max((m.step for m in hist), default=-1)
        return out

    def flush(self) -> None:
        from mlflow.entities import Metric

        if not self._buffer:
            return
        if self._logged_max is None:
            self._logged_max = self._fetch_logged()
        fresh = [m for m in self._buffer if m[3] > self._logged_max.get(m[0], -1)]
        items = [Metric(k, v, t, s) for k, v, t, s in fresh]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])
        for k, _, _, s in fresh:
            self._logged_max[k] = max(self._logged_max.get(k, -1), s)
        self._buffer.clear()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
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
