"""One MLflow tracking server per sweep: many SLURM jobs log through it, none writes the store.

Many jobs writing one SQLite file on a shared filesystem hit "database is locked" and
schema-migration races; a single ``mlflow server`` on the login node serialises the writes (SQLite)
or pools them (PostgreSQL), and proxies artifact uploads (``--serve-artifacts``) so jobs need no
access to the artifact store. Layout of a server folder ``DIR``::

    DIR/server.json    {"uri", "pid", "host", "port", "backend_store_uri", "artifacts_destination", ...,
                        "identity": the process's identity (common/procid.py)}; kept after a stop, so
                        the next start comes back on the recorded port when it is free
    DIR/server.pid     its process id (= its process group: the uvicorn workers too), while it runs
    DIR/server.log     the server's stdout + stderr
    DIR/server.lock    held while a command checks for / starts the server
    DIR/mlflow.db      the default SQLite backend store
    DIR/artifacts/     the default artifact destination

    uri = ensure_server("runs/sweep-a/mlflow")      # starts it once, reuses it afterwards
    stop_server("runs/sweep-a/mlflow")

Nothing is ever signalled but the recorded process itself: its identity (boot, start time, command
line) is checked first, so a stale pid that now names another process is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from common import procid
from orchestrator.errors import UserError
from training.sqlite_store import ensure_sqlite_file
from training.tracking import server_problem, unavailable_message

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
SERVER_JSON = "server.json"
SERVER_LOG = "server.log"
SERVER_PID = "server.pid"
SERVER_LOCK = "server.lock"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ServerInfo:
    """What ``server.json`` records about a running server."""

    uri: str
    pid: int
    host: str
    port: int
    backend_store_uri: str
    artifacts_destination: str
    workers: int
    log_path: str
    started_at: float
    identity: dict | None = None  # common.procid.identify(pid); None in files of older versions


# ---------------------------------------------------------------- configuration


def profile_mlflow_host(profile: str | os.PathLike | None) -> str:
    """The login node's address from a cluster profile (``slurm/NAME.yaml`` or a path), key
    ``mlflow_host``; ``127.0.0.1`` when the profile, the file or the key is missing or unusable."""
    if not profile:
        return DEFAULT_HOST
    path = Path(profile)
    if not path.suffix:
        path = REPO_ROOT / "slurm" / f"{profile}.yaml"
    import yaml

    try:
        text = path.read_text()
    except OSError as e:
        log.debug("cluster profile %s unreadable (%s); mlflow host %s", path, e, DEFAULT_HOST)
        return DEFAULT_HOST
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:  # a malformed profile must not stop a sweep
        log.warning("cluster profile %s is not valid YAML (%s); mlflow host %s", path, e, DEFAULT_HOST)
        return DEFAULT_HOST
    host = data.get("mlflow_host") if isinstance(data, dict) else None
    if isinstance(host, str) and host.strip():
        return host.strip()
    return DEFAULT_HOST


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("0.0.0.0", "") else "", 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """True when a server could bind ``host:port`` now (``SO_REUSEADDR``, as uvicorn binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("0.0.0.0", "") else "", port))
        except OSError:
            return False
    return True


def reachable_host() -> str | None:
    """This machine's address as other machines (compute nodes) reach it: what its host name
    resolves to; None when that is a loopback address or does not resolve."""
    try:
        addr = socket.gethostbyname(socket.gethostname())
        return None if ipaddress.ip_address(addr).is_loopback else addr
    except (OSError, ValueError):
        return None


def _connect_host(host: str) -> str:
    """The address clients use: the bound one, or this machine's name for a wildcard bind."""
    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


def _needs_allowed_hosts(host: str) -> bool:
    """MLflow's default Host-header check admits only localhost and private IPs."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True  # a host name
    return not (ip.is_loopback or ip.is_private)


TIMING_ENV = "SE_SERVER_TIMING"  # a folder: serve orchestrator.mlflow_timing's app, which writes there


def server_command(
    *,
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = DEFAULT_HOST,
    port: int = 5000,
    workers: int = 2,
) -> list[str]:
    """The ``mlflow server`` command line (uvicorn with ``workers`` processes, artifacts proxied)."""
    if workers < 2:
        raise UserError(f"mlflow server: --workers must be >= 2, got {workers}")
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", artifacts_destination,
        "--serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    connect = _connect_host(host)
    if _needs_allowed_hosts(connect):
        allowed = ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", connect, f"{connect}:*"]
        cmd += ["--allowed-hosts", ",".join(allowed)]
    if os.environ.get(TIMING_ENV):  # the scale rehearsal: log-batch timed inside the server
        cmd += ["--app-name", "se-timed"]
    return cmd


def server_env() -> dict[str, str]:
    """The server's environment: no telemetry, no GenAI job runner (5 idle processes we never use)."""
    env = dict(os.environ)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def default_backend_store_uri(dir: str | os.PathLike) -> str:
    return f"sqlite:///{Path(dir).resolve() / 'mlflow.db'}"


def _check_backend(uri: str, *, create: bool = True) -> str:
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "mysql", "mssql"):
        raise UserError(
            f"mlflow server: --backend-store-uri must be sqlite:///PATH or postgresql://..., got {uri!r}"
        )
    if create:
        ensure_sqlite_file(uri)  # mode from the umask (SQLite alone would make it 0644)
    return uri


def check_port(host: str, port: int | None) -> None:
    """UserError (one line) for a port outside 1-65535 or one that is in use on ``host``."""
    if port is None:
        return
    if not 1 <= int(port) <= 65535:
        raise UserError(f"mlflow server: --port must be 1-65535, got {port}")
    if not port_free(host, int(port)):
        raise UserError(f"mlflow server: port {port} on {host} is in use; choose another --port "
                        f"(or leave it out: a free one is picked)")


# ---------------------------------------------------------------- health and state


def is_healthy(uri: str, timeout_s: float = 2.0) -> bool:
    """True when ``GET uri/health`` answers 200."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def read_server(dir: str | os.PathLike) -> ServerInfo | None:
    """``DIR/server.json`` as a :class:`ServerInfo`, or None when absent or unreadable."""
    path = Path(dir) / SERVER_JSON
    try:
        data = json.loads(path.read_text())
        return ServerInfo(**{k: data.get(k) if k == "identity" else data[k] for k in ServerInfo.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_server(dir: str | os.PathLike) -> ServerInfo | None:
    """The server recorded in ``DIR`` if its process lives and ``/health`` answers, else None."""
    info = read_server(dir)
    if info and is_server_process(info) and is_healthy(info.uri):
        return info
    return None


def is_server_process(info: ServerInfo) -> bool:
    """True when the recorded pid still is the server (its identity; for a record of an older
    version without one: a live process whose command line is `mlflow server ... --port PORT`)."""
    if info.identity is not None:
        return procid.is_same(info.identity)
    ident = procid.identify(info.pid)
    cmd = f" {ident['cmdline']} " if ident else ""
    return " mlflow server " in cmd and f" --port {info.port} " in cmd


def _write_json_atomic(path: Path, data: dict) -> None:
    from common.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def wait_healthy(uri: str, *, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``/health`` until it answers; raise ``TimeoutError`` (or ``RuntimeError`` if ``proc``
    exits) otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_healthy(uri):
            return
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(f"mlflow server exited with code {proc.returncode} before it answered at {uri}")
        time.sleep(0.5)
    raise ServerStartError(f"mlflow server at {uri} did not answer within {timeout_s:.0f} s")


class ServerStartError(UserError):
    """The server did not come up (one line; the server's log says why)."""


def _last_log_line(log_path: Path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


# ---------------------------------------------------------------- start / stop


def _setup(
    dir: str | os.PathLike, backend_store_uri: str | None, artifacts_destination: str | None,
    host: str | None, profile: str | None,
) -> tuple[Path, str, str, str]:
    """A server's folder (created, absolute), host (``host`` or the profile's ``mlflow_host``),
    checked backend store (default ``DIR/mlflow.db``) and artifact destination (default
    ``DIR/artifacts``; a path is created and made absolute)."""
    d = Path(dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    host = host or profile_mlflow_host(profile)
    backend = _check_backend(backend_store_uri or default_backend_store_uri(d))
    artifacts = artifacts_destination or str(d / "artifacts")
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        artifacts = str(Path(artifacts).resolve())
    return d, host, backend, artifacts


def start_server(
    dir: str | os.PathLike,
    *,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    host: str | None = None,
    profile: str | None = None,
    port: int | None = None,
    workers: int = 2,
    timeout_s: float = 120.0,
) -> ServerInfo:
    """Start ``mlflow server`` detached (own session, survives this process), wait until healthy,
    record it in ``DIR/server.json``. Host: ``host`` or the profile's ``mlflow_host``; port: ``port``,
    else the port recorded in ``DIR/server.json`` by an earlier server on the same host when it is
    free (a restarted server keeps its URI), else a free one. UserError (one line) for a bad or busy
    port and for a server that does not come up (it is killed; ``DIR/server.log`` says why)."""
    d, host, backend, artifacts = _setup(dir, backend_store_uri, artifacts_destination, host, profile)
    check_port(host, port)
    previous = read_server(d)
    if port is None and previous is not None and previous.host == host and port_free(host, previous.port):
        port = previous.port
    port = port or free_port(host if host != "0.0.0.0" else "")
    cmd = server_command(
        backend_store_uri=backend, artifacts_destination=artifacts, host=host, port=port, workers=workers
    )
    log_path = d / SERVER_LOG
    uri = f"http://{_connect_host(host)}:{port}"
    log.info("starting mlflow server at %s (store %s, log %s)", uri, backend, log_path)
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=server_env(), cwd=d, start_new_session=True,
        )  # fmt: skip
    try:
        wait_healthy(uri, timeout_s=timeout_s, proc=proc)
    except BaseException as e:
        _kill_group(proc.pid, timeout_s=10)
        with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        if isinstance(e, ServerStartError):
            raise ServerStartError(f"{e}; {log_path}: {_last_log_line(log_path)}") from None
        raise
    info = ServerInfo(
        uri=uri, pid=proc.pid, host=host, port=port, backend_store_uri=backend,
        artifacts_destination=artifacts, workers=workers, log_path=str(log_path), started_at=time.time(),
        identity=procid.identify(proc.pid),  # after /health answered: the exec'd server, not our fork
    )  # fmt: skip
    (d / SERVER_PID).write_text(f"{proc.pid}\n")
    _write_json_atomic(d / SERVER_JSON, asdict(info))
    return info


def _kill_group(pid: int, *, timeout_s: float = 15.0, identity: dict | None = None) -> None:
    """SIGTERM the server's process group (server, uvicorn workers), SIGKILL after ``timeout_s``.
    With ``identity``, the first signal goes only if the leader still is that process; the group's
    id cannot be reused while any member lives, so the SIGKILL reaches only its survivors."""
    if identity is not None:
        if not procid.signal_if_same(identity, signal.SIGTERM, group=True):
            return
    else:  # our own child, just started
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    if _wait_group_gone(pid, timeout_s):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _wait_group_gone(pid, timeout_s)


def _wait_group_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    return False


def stop_server(dir: str | os.PathLike, *, timeout_s: float = 15.0) -> str:
    """Stop the server recorded in ``DIR`` (its whole process group) after checking that the recorded
    pid still is that server (:func:`is_server_process`). Returns "stopped", "not running" (nothing
    recorded, or its process is gone) or "not the server" (the pid now names another process: nothing
    is signalled). ``server.json`` stays (a later start reuses its port); ``server.pid`` goes."""
    info = read_server(dir)
    if info is None:
        return "not running"
    outcome = "not running"
    if is_server_process(info):
        _kill_group(info.pid, timeout_s=timeout_s, identity=info.identity)
        outcome = "stopped"
    elif procid.identify(info.pid) is not None:
        outcome = "not the server"
    with contextlib.suppress(FileNotFoundError):
        (Path(dir) / SERVER_PID).unlink()
    return outcome


@contextlib.contextmanager
def _locked(dir: Path):
    """An exclusive lock on ``DIR/server.lock``: one command at a time checks and starts."""
    dir.mkdir(parents=True, exist_ok=True)
    with open(dir / SERVER_LOCK, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_server(dir: str | os.PathLike, **options) -> str:
    """The URI of the server recorded in ``DIR``, starting one first if none answers.

    ``options`` are :func:`start_server`'s; they matter only when a server is started. A server
    that died or was stopped comes back on its recorded host and port when that port is free, so its
    URI stays the same. Concurrent calls on one ``DIR`` start one server (file lock)."""
    return ensure_server_info(dir, **options).uri


def ensure_server_info(dir: str | os.PathLike, **options) -> ServerInfo:
    """:func:`ensure_server`, returning the whole record."""
    d = Path(dir)
    with _locked(d):
        return running_server(d) or start_server(d, **options)


def serve_foreground(
    dir: str | os.PathLike,
    *,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    host: str | None = None,
    profile: str | None = None,
    port: int = 5000,
    workers: int = 2,
) -> int:
    """Run the server in this terminal until Ctrl-C; returns its exit code."""
    d, host, backend, artifacts = _setup(dir, backend_store_uri, artifacts_destination, host, profile)
    check_port(host, port)
    cmd = server_command(
        backend_store_uri=backend, artifacts_destination=artifacts, host=host, port=port, workers=workers
    )
    print(f"mlflow server: http://{_connect_host(host)}:{port}  (Ctrl-C stops it)", flush=True)
    proc = subprocess.Popen(cmd, env=server_env(), cwd=d)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


# ---------------------------------------------------------------- the UI


def start_advice(server_dir: str | os.PathLike | None) -> str:
    """What to do about a sweep's server that does not answer: the exact command when its folder is known."""
    folder = str(server_dir) if server_dir else "DIR"
    return (f"start it with `orchestrate mlflow-server {folder} --background` (it comes back on its recorded "
            f"port{'' if server_dir else '; DIR: the folder with its server.json'}), or retry later")


def require_server(uri: str, server_dir: str | os.PathLike | None = None) -> None:
    """UserError within a few seconds (one line: the server, how to start it) when the tracking server
    ``uri`` does not answer; nothing for a database store."""
    problem = server_problem(uri)
    if problem:
        raise UserError(unavailable_message(uri, problem, start_advice(server_dir)))


def store_artifacts(store_uri: str) -> str | None:
    """Where the artifacts of a SQLite store fronted by a tracking server are (``mlflow-artifacts:``
    URIs in the store resolve against it): the artifact destination recorded by the server beside
    it (``<db folder>/<db name>-server/``), else that folder's ``artifacts/``; None without one."""
    if not store_uri.startswith("sqlite:///"):
        return None
    db = Path(store_uri[len("sqlite:///") :])
    folder = db.parent / f"{db.stem}-server"
    info = read_server(folder)
    if info is not None:
        return info.artifacts_destination
    return str(folder / "artifacts") if (folder / "artifacts").is_dir() else None


def ui_command(tracking_uri: str, *, host: str = DEFAULT_HOST, port: int = 5000) -> list[str] | None:
    """``mlflow ui`` over a database store (serving the artifacts its server wrote, if any); None when
    ``tracking_uri`` is already a server (it serves the UI itself)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", _check_backend(tracking_uri, create=False),
           "--host", host, "--port", str(port)]  # fmt: skip
    artifacts = store_artifacts(tracking_uri)
    return cmd + ["--artifacts-destination", artifacts] if artifacts else cmd


def open_ui(tracking_uri: str, *, host: str = DEFAULT_HOST, port: int = 5000, timeout_s: float = 120.0,
            out=print, server_dir: str | os.PathLike | None = None) -> int:  # fmt: skip
    """Print the UI's URL; start ``mlflow ui`` on a database store and serve until Ctrl-C. A tracking
    server that does not answer is a UserError naming it and how to start it (``server_dir``: its folder)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).is_file():
        raise UserError(f"tracking URI {tracking_uri}: no such database file")
    cmd = ui_command(tracking_uri, host=host, port=port)
    if cmd is None:
        require_server(tracking_uri, server_dir)
        out(f"MLflow UI: {tracking_uri.rstrip('/')}  (served by the tracking server)")
        return 0
    check_port(host, port)
    url = f"http://{_connect_host(host)}:{port}"
    proc = subprocess.Popen(cmd, env=server_env())
    try:
        wait_healthy(url, timeout_s=timeout_s, proc=proc)
        out(f"MLflow UI: {url}  (store {tracking_uri}; Ctrl-C stops it)")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
