"""`orchestrate mlflow-server`: one MLflow tracking server for a sweep's many jobs."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from orchestrator import mlflow_server as ms
from orchestrator.cliutil import positive_float

NAME = "mlflow-server"
HELP = "run an MLflow tracking server (SQLite/PostgreSQL store, proxied artifacts) for many jobs"
DESCRIPTION = """Run `mlflow server` so that many SLURM jobs log through one process instead of
writing one SQLite file at once. Bind it to the login node's address (`mlflow_host` in the cluster
profile, slurm/NAME.yaml; default 127.0.0.1); jobs then use tracking URI http://HOST:PORT and upload
artifacts through the server (--serve-artifacts)."""
EPILOG = """examples:
  orchestrate mlflow-server runs/mlflow --background               # detached; prints the URI
  orchestrate mlflow-server runs/mlflow --background --profile lumi --port 5055
  orchestrate mlflow-server runs/mlflow --backend-store-uri postgresql://u:p@db/mlflow --background
  orchestrate mlflow-server runs/mlflow --status                   # is it up? (exit 1 if not)
  orchestrate mlflow-server runs/mlflow --stop                     # signals only the recorded server itself
  orchestrate mlflow-server runs/mlflow                            # foreground, Ctrl-C stops it
A stopped or crashed server started again with --background comes back on its recorded port when
that port is free (running jobs reconnect to the same URI).
files: DIR/server.json (uri, pid, identity, ...), DIR/server.pid, DIR/server.log, DIR/mlflow.db (default store), DIR/artifacts/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default="mlflow", help="server folder (default: ./mlflow)")
    p.add_argument("--backend-store-uri", help="sqlite:///PATH or postgresql://... (default: DIR/mlflow.db)")
    p.add_argument("--artifacts-destination", help="artifact root the server writes (default: DIR/artifacts)")
    p.add_argument("--host", help="address to bind (default: the profile's mlflow_host, else 127.0.0.1)")
    p.add_argument("--profile", help="cluster profile (slurm/NAME.yaml or a path) holding mlflow_host")
    p.add_argument("--port", type=int, help="port 1-65535 (default: 5000 in the foreground; with --background the "
                                            "recorded one when free, else a free one)")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (>= 2; default 2)")
    p.add_argument("--timeout", type=positive_float, default=120.0, help="seconds to wait for /health (default 120)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--background", action="store_true", help="start detached, wait until healthy, print URI")
    mode.add_argument("--stop", action="store_true", help="stop the server recorded in DIR/server.json")
    mode.add_argument("--status", action="store_true", help="print DIR/server.json if the server answers")


def run(args: argparse.Namespace) -> int:
    if args.stop:
        outcome = ms.stop_server(args.dir)
        if outcome == "not the server":
            info = ms.read_server(args.dir)
            print(f"{args.dir}/server.json names pid {info.pid if info else '?'}, which is another process now "
                  f"(the server is gone); nothing signalled")
        else:
            print("stopped" if outcome == "stopped" else f"no running server recorded in {args.dir}")
        return 0
    if args.status:
        info = ms.running_server(args.dir)
        print(json.dumps(asdict(info), indent=2) if info else f"no healthy server recorded in {args.dir}")
        return 0 if info else 1
    options = dict(
        backend_store_uri=args.backend_store_uri,
        artifacts_destination=args.artifacts_destination,
        host=args.host,
        profile=args.profile,
        workers=args.workers,
    )
    if args.background:
        info = ms.ensure_server_info(args.dir, port=args.port, timeout_s=args.timeout, **options)
        print(info.uri)
        return 0
    return ms.serve_foreground(args.dir, port=5000 if args.port is None else args.port, **options)
