"""`ssdlab sweep FILE [--address auto|HOST:PORT] [--resume] [--storage PATH] [--dry-run]`.

The sweep file is validated in full first (a bad key exits 2 before Ray starts), then the MLflow
store is opened (experiments/tracking/store.py), before anything is created. Local Ray by default; a cluster
with --address or $RAY_ADDRESS. Trial state lives under STORAGE/<name> (default runs/ray/<name>);
after the driver dies, `--resume` continues from it.
"""
from __future__ import annotations

import argparse
import sys

from experiments.sweep.storage import DEFAULT_STORAGE
from ssd_core import metrics as M
from ssd_core.config import DEFAULT_TRACKING_URI
from ssdlab.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

EXIT_STATUS = f"""exit status:
  {EXIT_OK}    every trial ended (finished or early-stopped)
  {EXIT_FAILED}    some trial failed after its retries: each failed trial's error is printed at the end
  {EXIT_BAD_INPUT}    bad input (sweep file, base config, MLflow store, options): nothing was started
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C, SIGTERM): continue with --resume"""


def register(subparsers) -> None:
    sw = subparsers.add_parser("sweep", help="run a sweep file (Ray Tune + Optuna + MLflow)",
                               epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("file", help="sweep YAML, e.g. sweeps/demo.yaml")
    sw.add_argument("--address", default=None, help="Ray cluster: auto or HOST:PORT (default: $RAY_ADDRESS, else local)")
    sw.add_argument("--resume", action="store_true", help="continue an interrupted sweep from its Ray Tune state")
    sw.add_argument("--restart", action="store_true",
                    help="start afresh: move a previous launch's state aside (its MLflow runs are kept)")
    sw.add_argument("--storage", default=None, help=f"trial state folder (default: {DEFAULT_STORAGE})")
    sw.add_argument("--dry-run", action="store_true", help="print the trial plan and resources, run nothing")
    sw.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    sw.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a config key for every trial, over the sweep's overrides (e.g. -o train.epochs=5 for a first "
                         "look); give the same ones to --resume")
    sw.add_argument("--quiet", action="store_true",
                    help="no live progress (default: a live table on a terminal, one line per change otherwise)")
    sw.set_defaults(func=sweep)


def sweep(args) -> int:
    from experiments.sweep.plan import describe
    from experiments.sweep.validate import load_sweep
    from experiments.tracking.store import store_problem
    from ssd_core.config import parse_overrides
    from ssd_core.errors import ConfigError

    spec = load_sweep(args.file, parse_overrides(args.override, "-o") if args.override else None)
    problem = store_problem(spec.file.tracking.uri)  # no connection: a dry run stays offline
    if problem:
        raise ConfigError(f"{spec.path}: tracking.uri: MLflow store {spec.file.tracking.uri}: {problem}")
    if args.dry_run:
        print(describe(spec))
        _warn_existing_state(spec, args)
        return EXIT_OK
    check_images(spec)  # an unreadable image stops the launch here, naming it, not at its iteration
    from experiments.sweep.plan import plan
    from experiments.sweep.status import expected_trials
    phases = plan(spec)
    first = sum(expected_trials(ph) for ph in phases)
    print(f"ssdlab sweep {spec.name}: {len(spec.arm_names) or 1} arm(s), {first} trials planned"
          + (" in the first wave" if spec.sequential else "") + f"; MLflow {spec.file.tracking.uri} "
          f"(experiment {spec.experiment_name}); starting Ray", flush=True)
    from experiments.sweep.driver import run_sweep  # Ray sizes each worker's threads to its CPUs
    from experiments.sweep.guards import SweepInterrupted, SweepStopped

    try:
        result = run_sweep(spec, phases=phases, address=args.address, resume=args.resume, storage=args.storage,
                           num_cpus=args.num_cpus, restart=args.restart, progress=not args.quiet)
    except SweepInterrupted as exc:
        print(f"ssdlab sweep: interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SweepStopped as exc:
        print(f"ssdlab sweep: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from experiments.sweep.status import format_counts

    print(f"sweep {result.name}: {result.trials} trials in {result.wall_s:.0f} s ({format_counts(result.counts)}); "
          f"state {result.storage}; MLflow parent run {result.parent_run_id} "
          f"({spec.file.tracking.uri}, experiment {spec.experiment_name})")
    for line in closing_lines(spec, result):
        print(line)
    if result.failures:
        print(f"ssdlab sweep: {len(result.failures)} of {sum(result.counts.values())} trials failed:", file=sys.stderr)
        for trial_id, run_name, error in result.failures:
            print(f"  {run_name or trial_id}: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def check_images(spec) -> None:
    """Every image header of each distinct data section of the sweep's arms (at their first seed), read before
    Ray starts: an unreadable one is refused in one line naming it (ssd_core.build.build_splits), unless the
    arm's config says data.skip_bad: true. Data the driver cannot see (a cluster's) is left to the workers."""
    import json
    import warnings

    from ssd_core.build import build_splits
    from ssd_core.config import resolve_data_root
    from ssd_core.data import DataWarning
    from ssd_core.errors import ConfigError as _ConfigError

    seen = set()
    for arm in spec.arm_names or [None]:
        cfg = spec.trial_config(arm, spec.seeds[0])
        key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if key in seen or cfg.data.synthetic is not None:
            continue
        seen.add(key)
        try:
            if not resolve_data_root(cfg).exists():
                continue
        except _ConfigError:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # repaired boxes: the trials log them, data check lists them
            build_splits(cfg, transform=False)


def _warn_existing_state(spec, args) -> None:
    """A dry run of a sweep whose state already exists: say that the launch will refuse, and what to do."""
    from pathlib import Path

    from experiments.sweep.storage import local_path, sweep_storage

    storage = sweep_storage(args.storage, spec.name)
    folder = local_path(storage)
    if folder is not None and any(Path(folder).glob("*/experiment_state-*.json")):
        print(f"note: {folder} already holds a launch of this sweep: a launch without --resume (continue it) or "
              f"--restart (start afresh, keeping its MLflow runs) will refuse", file=sys.stderr)


def closing_lines(spec, result) -> list[str]:
    """What a finished sweep says last: its best trial and registered model (result.best, the BestTrial the
    sweep's end picked), why each arm stopped (sequential seeding), and the two commands to look at it."""
    from experiments.sequential import REASONS

    lines = []
    b = result.best  # experiments.schema.BestTrial, or None
    if b is not None:
        test = f", {M.reported_of(spec.metric)} {b.reported:.4f}" if b.reported is not None else ""
        where = ", ".join(p for p in (f"arm {b.arm}" if b.arm else "", f"seed {b.seed}" if b.seed is not None else "")
                          if p)
        model = f"; registered as {b.model} (models:/{b.model.split('/')[0]}@best)" if b.model else ""
        lines.append(f"best trial {b.trial_id}{f' ({where})' if where else ''}: {spec.metric} {b.score:.4f}{test}{model}")
    for arm, (seeds, why) in result.stops.items():
        lines.append(f"  {arm}: {seeds} seeds, {REASONS.get(why, why)}")
    uri = "" if spec.file.tracking.uri == DEFAULT_TRACKING_URI else f" --tracking-uri {spec.file.tracking.uri}"
    look = f"look: ssdlab report --sweep {spec.name}{uri}   |   ssdlab ui{uri}"
    if getattr(result, "study", None):
        look += f"   |   ssdlab dashboard --study-storage {result.study}"
    lines.append(look)
    return lines
