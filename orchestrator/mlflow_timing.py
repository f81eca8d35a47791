"""The MLflow tracking server's own FastAPI app with each `log-batch` request timed at the server.

Served instead of MLflow's app (``mlflow server --app-name se-timed``, the ``mlflow.app`` entry point in
pyproject.toml) only when ``SE_SERVER_TIMING`` names a folder in the server's environment
(`orchestrator.mlflow_server.server_command`); the scale rehearsal sets it. Each uvicorn worker appends
one JSON line per second with requests to ``$SE_SERVER_TIMING/log-batch-<pid>.jsonl``:
``{"t": epoch s, "s": [seconds from request start to the end of the response, ...]}`` -- the time the
server spent on each request, without the client's connection and queueing on the client side.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from mlflow.server.fastapi_app import app as mlflow_app

from orchestrator.mlflow_server import TIMING_ENV as ENV_VAR

TIMED_SUFFIX = "/runs/log-batch"
FLUSH_S = 1.0


class _Timings:
    """Durations gathered in memory and appended once a second by a daemon thread (the request path
    only appends to a list)."""

    def __init__(self, folder: Path):
        self.path = folder / f"log-batch-{os.getpid()}.jsonl"
        self.lock, self.pending = threading.Lock(), []
        threading.Thread(target=self._flush_loop, daemon=True).start()

    def add(self, seconds: float) -> None:
        with self.lock:
            self.pending.append(round(seconds, 6))

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            with self.lock:
                batch, self.pending = self.pending, []
            if batch:
                with open(self.path, "a") as f:
                    f.write(json.dumps({"t": round(time.time(), 3), "s": batch}) + "\n")


class TimedApp:
    """ASGI wrapper: requests whose path ends with `TIMED_SUFFIX` are timed; all go to MLflow's app."""

    def __init__(self, inner):
        self.inner = inner
        self._timings: _Timings | None = None

    def _sink(self) -> _Timings | None:
        if self._timings is None and os.environ.get(ENV_VAR):
            folder = Path(os.environ[ENV_VAR])
            folder.mkdir(parents=True, exist_ok=True)
            self._timings = _Timings(folder)  # created in the worker process, after uvicorn's fork
        return self._timings

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or not scope.get("path", "").endswith(TIMED_SUFFIX):
            return await self.inner(scope, receive, send)
        t0 = time.perf_counter()
        try:
            return await self.inner(scope, receive, send)
        finally:
            sink = self._sink()
            if sink is not None:
                sink.add(time.perf_counter() - t0)


app = TimedApp(mlflow_app)

