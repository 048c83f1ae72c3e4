"""`ssdlab server`: a shared MLflow tracking server for a team or a cluster (docs/cluster.md).

    ssdlab server --backend-store-uri postgresql://USER@DBHOST:5432/mlflow --artifacts-destination PATH|s3://...
                  [--host 127.0.0.1] [--port 5000] [--workers 2] [--allowed-hosts HOST:PORT,...] [--dry-run]

Runs `mlflow server` with the flags a team needs and nothing clever: runs, params and metrics in a SQL
database (PostgreSQL; MLflow creates its tables on first start), artifacts proxied by the server
(`--serve-artifacts`) into a shared folder or an object store, so clients need no credentials for it.
Bound to 127.0.0.1 unless `--host` says otherwise (MLflow then checks the Host header against
`--allowed-hosts`). Sweeps, `ssdlab train`, `report`, `runs` and `ui` use it with
`tracking.uri: http://HOST:PORT` (or --tracking-uri / $MLFLOW_TRACKING_URI).
"""
from __future__ import annotations

import os
import re
import sys

from ssd_core.errors import UserError

SQL_SCHEMES = ("postgresql", "mysql", "mssql", "sqlite")


def register(subparsers) -> None:
    p = subparsers.add_parser("server", help="run a shared MLflow tracking server (PostgreSQL + artifact store)")
    p.add_argument("--backend-store-uri", required=True,
                   help="the runs database, e.g. postgresql://mlflow@db.internal:5432/mlflow")
    p.add_argument("--artifacts-destination", required=True,
                   help="where artifacts go: a shared folder or an object store URI (s3://bucket/mlflow)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    p.add_argument("--allowed-hosts", default=None,
                   help="Host headers MLflow accepts when --host is not loopback, e.g. mlflow.internal:5000")
    p.add_argument("--dry-run", action="store_true", help="print the mlflow server command, run nothing")
    p.set_defaults(func=cmd_server)


def server_command(args) -> list[str]:
    scheme = re.match(r"^([a-z0-9]+)(\+[a-z0-9]+)?://", args.backend_store_uri)
    if scheme is None or scheme.group(1) not in SQL_SCHEMES:
        raise UserError(f"--backend-store-uri {args.backend_store_uri}: expected a database URI "
                        f"(postgresql://USER@HOST:PORT/DB for a team)")
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a TCP port")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", args.backend_store_uri,
           "--serve-artifacts", "--artifacts-destination", args.artifacts_destination,
           "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    if args.allowed_hosts:
        cmd += ["--allowed-hosts", args.allowed_hosts]
    return cmd


def cmd_server(args) -> int:
    cmd = server_command(args)
    if scheme_is_sqlite(args.backend_store_uri):
        print("ssdlab server: note: a sqlite backend serves one machine; a team's server wants PostgreSQL",
              file=sys.stderr)
    print(f"ssdlab server: MLflow at http://{args.host}:{args.port} (runs in {args.backend_store_uri}, "
          f"artifacts in {args.artifacts_destination})", file=sys.stderr, flush=True)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    os.execv(cmd[0], cmd)  # the server is this process from here on: signals reach it directly
    return 0  # not reached


def scheme_is_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:")
