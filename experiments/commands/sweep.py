"""`ssdlab sweep FILE [--address auto|HOST:PORT] [--resume] [--storage PATH] [--dry-run]`.

The sweep file is validated in full first (a bad key exits 2 before Ray starts). Local Ray by
default; a cluster with --address or $RAY_ADDRESS. Trial state lives under STORAGE/<name>
(default runs/ray/<name>); after the driver dies, `--resume` continues from it.
"""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    sw = subparsers.add_parser("sweep", help="run a sweep file (Ray Tune + Optuna + MLflow)")
    sw.add_argument("file", help="sweep YAML, e.g. sweeps/demo.yaml")
    sw.add_argument("--address", default=None, help="Ray cluster: auto or HOST:PORT (default: $RAY_ADDRESS, else local)")
    sw.add_argument("--resume", action="store_true", help="continue an interrupted sweep from its Ray Tune state")
    sw.add_argument("--restart", action="store_true",
                    help="start afresh: move a previous launch's state aside (its MLflow runs are kept)")
    sw.add_argument("--storage", default=None, help="trial state folder (default: runs/ray)")
    sw.add_argument("--dry-run", action="store_true", help="print the trial plan and resources, run nothing")
    sw.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    sw.set_defaults(func=sweep)


def sweep(args) -> int:
    from experiments.sweep_spec import describe, load_sweep

    spec = load_sweep(args.file)
    if args.dry_run:
        print(describe(spec))
        return 0
    from experiments.sweep import SweepInterrupted, run_sweep  # Ray sizes each worker's threads to its CPUs

    try:
        result = run_sweep(spec, address=args.address, resume=args.resume, storage=args.storage,
                           num_cpus=args.num_cpus, restart=args.restart)
    except SweepInterrupted as exc:
        print(f"ssdlab sweep: interrupted: {exc}", file=sys.stderr)
        return 130
    print(f"sweep {result.name}: {result.trials} trials in {result.wall_s:.0f} s; "
          f"state {result.storage}; MLflow parent run {result.parent_run_id} "
          f"({spec.file.tracking.uri}, experiment {spec.experiment_name})")
    return 0
