"""`ssdlab dashboard`: a search sweep's Optuna study, live in optuna-dashboard (experiments/sweep/study.py).

    ssdlab dashboard SWEEP.yaml [--storage DIR] [--port 8080]   the study storage that sweep writes
    ssdlab dashboard --study-storage URL [--port 8080]          any Optuna storage (sqlite:///..., postgresql://...)

Bound to 127.0.0.1; prints the URL once it listens; Ctrl-C or SIGTERM stop it. The dashboard shows each
study (one per search phase and launch): optimisation history, parameter importances, parallel coordinates,
and the Pareto front of a multi-objective search (search.objectives).
"""
from __future__ import annotations

import argparse
import sys

from ssd_core.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("dashboard", help="show a search sweep's Optuna study live (optuna-dashboard)")
    p.add_argument("sweep", nargs="?", help="the sweep YAML whose study to show")
    p.add_argument("--storage", default=None, help="the sweep's trial state folder, as given to `ssdlab sweep`")
    p.add_argument("--study-storage", default=None, metavar="URL", help="an Optuna storage URL instead of a sweep")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for the dashboard to listen")
    p.set_defaults(func=cmd_dashboard)


def dashboard_command(url: str, port: int) -> list[str]:
    return [sys.executable, "-c", "import sys; from optuna_dashboard._cli import main; sys.exit(main())", url,
            "--host", "127.0.0.1", "--port", str(port)]


def study_storage(args: argparse.Namespace) -> str:
    """The Optuna storage URL the command shows; ConfigError naming the sweep when it has none."""
    from experiments.sweep import study as S
    from experiments.sweep.storage import sweep_storage
    from experiments.sweep.validate import load_sweep
    from experiments.tracking.store import sqlite_file

    if args.study_storage:
        url = args.study_storage
    elif args.sweep:
        spec = load_sweep(args.sweep)
        if spec.file.search is None:
            raise ConfigError(f"{args.sweep}: no search: section, so no Optuna study (arms and grids are in MLflow: "
                              f"ssdlab ui)")
        url = S.study_url(spec, sweep_storage(args.storage, spec.name))
        if url is None:
            raise ConfigError(f"{args.sweep}: search.storage: the study is kept in memory (search.storage: memory, "
                              f"or remote Ray storage): give search.storage a database URL to see it live")
    else:
        raise ConfigError("ssdlab dashboard: give a sweep YAML or --study-storage URL")
    db = sqlite_file(url)
    if db is not None and not db.expanduser().is_file():
        raise ConfigError(f"{db}: no Optuna study there yet (the sweep creates it when its search starts)")
    return url


def cmd_dashboard(args: argparse.Namespace) -> int:
    from ssdlab.serve import check_port, serve

    url = study_storage(args)
    check_port(args.port)

    def ready(base: str) -> None:
        print(f"Optuna dashboard for {url}: {base}  (Ctrl-C to stop)", flush=True)
    return serve(dashboard_command(url, args.port), args.port, "optuna-dashboard", args.timeout, ready)
