"""`ssdlab import`: run dirs written outside Ray (ssdlab train, a SLURM job array, a notebook, the GPU script)
logged to MLflow as one sweep (experiments/tracking/importer.py), so `ssdlab report --sweep NAME` makes its tables.

    ssdlab import RUN_DIR... --sweep NAME [--arm-from KEY] [--baseline ARM] [--tracking-uri URI]
                  [--experiment NAME] [--no-checkpoints]

Exit 0 when every run dir was imported (or was already there), 1 when some were skipped (each named with
why; the others are imported), 2 when nothing could be.
"""
from __future__ import annotations

import argparse
import sys

from ssd_core.config import DEFAULT_TRACKING_URI


def register(subparsers) -> None:
    p = subparsers.add_parser("import", help="log run dirs made outside Ray (ssdlab train, SLURM, notebooks) as a sweep")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs written by ssdlab train / fit")
    p.add_argument("--sweep", required=True, help="the sweep name to log them under (ssdlab report --sweep NAME)")
    p.add_argument("--arm-from", default=None, metavar="KEY",
                   help="the config key whose value names each run's arm (default: the config's name)")
    p.add_argument("--baseline", default=None, metavar="ARM", help="the baseline arm (default: the first)")
    p.add_argument("--tracking-uri", default=None, help=f"MLflow store (default $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the sweep name)")
    p.add_argument("--no-checkpoints", action="store_true", help="do not log best.pt (weights only)")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from experiments.tracking.importer import import_runs
    from experiments.tracking.store import check_store
    from reports.load import resolve_tracking_uri

    uri = check_store(resolve_tracking_uri(args.tracking_uri), "--tracking-uri")
    r = import_runs([Path(p) for p in args.run_dirs], args.sweep, uri, experiment=args.experiment,
                    arm_from=args.arm_from, baseline=args.baseline, log_checkpoints=not args.no_checkpoints)
    for line in r.skipped:
        print(f"ssdlab import: skipped {line}", file=sys.stderr)
    print(f"sweep {args.sweep}: {len(r.imported)} run(s) imported, {len(r.present)} already there, "
          f"{len(r.skipped)} skipped (parent run {r.parent_run_id}); look: ssdlab report --sweep {args.sweep}"
          + (f" --tracking-uri {uri}" if args.tracking_uri else ""))
    return 1 if r.skipped else 0
