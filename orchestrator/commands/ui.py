"""`orchestrate ui`: open the MLflow UI on the store the sweeps log to."""

from __future__ import annotations

import argparse
import os

from orchestrator import mlflow_server as ms

NAME = "ui"
HELP = "start the MLflow UI on a sweep's tracking store and print its URL"
DESCRIPTION = """Start `mlflow ui` on the tracking store of a sweep (its ledger.json names it), of a
tracking URI, or of $MLFLOW_TRACKING_URI (default sqlite:///mlflow.db), and print the URL. A sweep
that logs to a tracking server (http://...) needs no new process: its URL is printed (or, when it
does not answer, how to start it: exit 2). On a SQLite store its server wrote, the UI serves the
artifacts from that server's folder."""
EPILOG = """examples:
  orchestrate ui --sweep runs/demo                 # the sweep's store; open the printed URL
  orchestrate ui --tracking-uri sqlite:///runs/demo/mlflow.db --port 5001
  ssh -L 5000:localhost:5000 login-node            # then run `orchestrate ui` there, browse localhost:5000
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sweep", help="sweep folder (with ledger.json) or name under runs/")
    src.add_argument("--tracking-uri", help="MLflow tracking URI (sqlite:///..., postgresql://..., http://...)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")


def run(args: argparse.Namespace) -> int:
    server_dir = None
    if args.sweep:
        from orchestrator.compare import resolve_sweep
        from orchestrator.sweeps.status import resolve_sweep_dir

        ref = resolve_sweep(resolve_sweep_dir(args.sweep))
        uri, server_dir = ref.tracking_uri, ref.server_dir
    else:
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    return ms.open_ui(uri, host=args.host, port=args.port, server_dir=server_dir)
