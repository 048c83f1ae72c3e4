"""`ssdlab report | runs | ui`: regenerate a sweep's report, browse runs, start the MLflow UI.

    ssdlab report --sweep NAME [--tracking-uri URI] [--format md,csv,tex,html] [--out DIR] [--top-k 10]
    ssdlab runs [--sweep NAME] [--sort val/mAP50] [--tracking-uri URI] [--limit N]
    ssdlab ui [--port 5000] [--tracking-uri URI]

The store defaults to $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db. Handlers return exit codes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.schema import Tag
from ssd_core import metrics as M
from ssd_core.config import DEFAULT_TRACKING_URI
from ssd_core.errors import UserError

# reports.load imports MLflow (seconds): it is imported inside the handlers, so every other
# `ssdlab` command starts fast.



def register(subparsers) -> None:
    uri_help = f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})"
    p = subparsers.add_parser("report", help="regenerate a sweep's tables and plots from MLflow")
    p.add_argument("--sweep", default=None, help=f"sweep name (tag {Tag.SWEEP}); without it: the sweeps in the store")
    p.add_argument("--tracking-uri", default=None, help=uri_help)
    p.add_argument("--format", default="md", help="comma-separated: md,csv,tex,html (default md)")
    p.add_argument("--out", default=None, help="output directory (default reports/out/<sweep>)")
    p.add_argument("--top-k", type=int, default=10, help="trials in the search table (default 10)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots (faster)")
    p.add_argument("--arms", default=None, help="comma-separated arms to report, the first as the baseline "
                                                "(default: every arm, the sweep's baseline first)")
    p.add_argument("--ui-url", default=None,
                   help="MLflow UI address (e.g. http://127.0.0.1:5000): the HTML report links each trial to its run page")
    p.add_argument("--no-log", action="store_true",
                   help="do not attach the written report to the sweep's parent run (artifacts under report/)")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("runs", help="list runs in a terminal table")
    p.add_argument("--sweep", default=None, help="only this sweep's trials")
    p.add_argument("--sort", default="score",
                   help="score (best val metric over epochs, default), test, duration, start, or any metric name")
    p.add_argument("--tracking-uri", default=None, help=uri_help)
    p.add_argument("--limit", type=int, default=0, help="show at most N runs (0 = all)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the runs as JSON records (machine values)")
    fmt.add_argument("--csv", action="store_true", help="print the runs as CSV (machine values)")
    p.set_defaults(func=cmd_runs)

    p = subparsers.add_parser("ui", help="start the MLflow UI on 127.0.0.1 (a tracking server: print its URL)")
    p.add_argument("--port", type=int, default=5000, help="TCP port on 127.0.0.1 (default 5000)")
    p.add_argument("--tracking-uri", default=None, help=uri_help)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the UI to listen (default 120)")
    p.set_defaults(func=cmd_ui)


def _store(uri: str | None) -> str:
    from experiments.tracking.store import sqlite_file, store_problem
    from reports.load import resolve_tracking_uri

    uri = resolve_tracking_uri(uri)
    db = sqlite_file(uri)
    if db is not None and not db.is_file():
        raise UserError(f"MLflow store {uri} not found (no such database file); pass --tracking-uri")
    problem = store_problem(uri, write=False)  # a garbage file: one line, not sqlalchemy's traceback
    if problem:
        raise UserError(f"MLflow store {uri}: {problem}; pass --tracking-uri")
    if uri.startswith(("http://", "https://")):  # asked once, bounded (MLflow's client retries for minutes)
        from experiments.tracking.store import check_store

        check_store(uri, "--tracking-uri", write=False)
    return uri


def cmd_report(args: argparse.Namespace) -> int:
    from reports.report import FORMATS, build_report, write_report

    if args.sweep is None:  # what there is to report on
        from reports.load import list_sweeps

        uri = _store(args.tracking_uri)
        names = list_sweeps(uri)
        for name in names:
            print(name)
        raise UserError(f"--sweep: which sweep? {len(names)} in {uri}" + (f": {', '.join(names)}" if names else ""))

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format {args.format!r}: unknown {', '.join(bad) or '(empty)'}; "
                        f"choose from {','.join(FORMATS)}")
    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    report = build_report(args.sweep, _store(args.tracking_uri), top_k=args.top_k,
                          with_plots=not args.no_plots, arms=arms)
    out = Path(args.out) if args.out else Path("reports") / "out" / args.sweep
    files = write_report(report, out, formats, ui_url=args.ui_url)
    if "md" in formats:
        sys.stdout.write(report.markdown())
    print(f"wrote {len(files)} files to {out}", file=sys.stderr)
    if not args.no_log and report.data is not None and report.data.parent_id:
        attach(report, files, args.ui_url)
    return 0


def attach(report, files: list[Path], ui_url: str | None) -> None:
    """The report onto the sweep's parent run (artifacts under report/): report.html first, which MLflow's
    viewer renders (written for it when --format left it out), then the other files. A sqlite store whose
    artifacts do not live beside its database (a copied store still pointing at the original's) is left
    alone, and the line says so."""
    import tempfile

    from experiments.schema import Artifact
    from experiments.tracking.store import mlflow_client, sqlite_file
    from reports.report import write_report

    data = report.data
    client = mlflow_client(data.tracking_uri)
    where = client.get_run(data.parent_id).info.artifact_uri
    db = sqlite_file(data.tracking_uri)
    if db is not None and where.startswith("file:"):
        from urllib.parse import unquote, urlparse

        folder = Path(unquote(urlparse(where).path)).resolve()
        if not folder.is_relative_to(db.resolve().parent):
            print(f"report not attached to parent run {data.parent_id}: its artifacts live at {folder}, not beside "
                  f"{db} (a copied store?); --no-log says nothing", file=sys.stderr)
            return
    with tempfile.TemporaryDirectory(prefix="ssdlab-report-") as tmp:
        html = [f for f in files if f.name == "report.html"] or write_report(report, tmp, ("html",), ui_url=ui_url)
        for f in html + [f for f in files if f.name != "report.html"]:
            client.log_artifact(data.parent_id, str(f), artifact_path=Artifact.REPORT)
    print(f"attached to parent run {data.parent_id}: {where}/{Artifact.REPORT}/report.html", file=sys.stderr)


def format_terminal(columns: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A plain aligned text table (two spaces between columns)."""
    widths = [max([len(c)] + [len(r[j]) for r in rows]) for j, c in enumerate(columns)]

    def line(cells):
        return "  ".join(c.rjust(w) if j in numeric else c.ljust(w)
                         for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows]) + "\n"


def cmd_runs(args: argparse.Namespace) -> int:
    from reports.load import load_runs
    from reports.run_tables import runs_table

    runs = load_runs(_store(args.tracking_uri), sweep=args.sweep)
    if runs.empty:
        print("no runs", file=sys.stderr)
        return 0
    t = runs_table(runs, sort=args.sort)
    if args.limit > 0:
        t.rows, t.raw = t.rows[:args.limit], t.raw[:args.limit]
    if args.json or args.csv:
        from reports.render import table_csv
        if args.csv:
            sys.stdout.write(table_csv(t))
        else:
            import io

            import pandas as pd
            frame = pd.read_csv(io.StringIO(table_csv(t)))
            sys.stdout.write(frame.to_json(orient="records", indent=1) + "\n")
        return 0
    sys.stdout.write(format_terminal(t.columns, t.rows, t.numeric))
    for note in t.notes:
        print(note, file=sys.stderr)
    counts = runs["status"].value_counts()
    print(f"{len(runs)} runs: " + ", ".join(f"{int(n)} {s}" for s, n in sorted(counts.items())),
          file=sys.stderr)
    return 0


def experiment_urls(uri: str, base: str, limit: int = 8) -> list[tuple[str, str]]:
    """(experiment, its runs page) of the store's experiments, newest first (the Default one only if used)."""
    try:
        from experiments.tracking.store import mlflow_client

        exps = mlflow_client(uri).search_experiments(order_by=["last_update_time DESC"], max_results=limit + 1)
    except Exception:
        return []
    return [(e.name, f"{base}/#/experiments/{e.experiment_id}/runs{BY_SCORE}") for e in exps
            if not (e.name == "Default" and e.experiment_id == "0")][:limit]


# The runs table sorted by the lab's score, best first (MLflow's UI reads the sort from the URL; the columns
# and the grouping are kept in the browser, so those stay clicks: README "Browsing runs in MLflow").
BY_SCORE = f"?orderByKey=metrics.%60{M.SCORE}%60&orderByAsc=false"


def ui_command(uri: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", "127.0.0.1", "--port", str(port)]


def cmd_ui(args: argparse.Namespace) -> int:
    """Start `mlflow ui` on 127.0.0.1 and print its URLs once it listens, then where its log goes (the server's
    own output: experiments.tracking.store.ui_log); SIGTERM or Ctrl-C stop it too.
    A tracking server (http...) already has a UI: print its URL and return."""
    from experiments.tracking.store import ui_log
    from reports.load import resolve_tracking_uri
    from ssdlab.serve import check_port, serve

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {uri}", flush=True)
        return 0
    uri = _store(args.tracking_uri)
    check_port(args.port)
    log = ui_log(uri)

    def ready(base: str) -> None:
        experiments = experiment_urls(uri, base)  # (read before the first line: the URLs come out together)
        print(f"MLflow UI for {uri}: {base}  (Ctrl-C to stop)", flush=True)
        for name, url in experiments:
            print(f"  {name}: {url}", flush=True)
        print(f"MLflow server log: {log}", flush=True)
    return serve(ui_command(uri, args.port), args.port, "mlflow ui", args.timeout, ready, log=log)
