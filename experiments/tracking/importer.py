"""Runs made outside Ray enter the lab like any other: `ssdlab import RUN_DIR... --sweep NAME`.

    read_run(path)                    a run dir written by ssd_core.train.fit (`ssdlab train`, a SLURM job, a
                                      notebook, benchmarks/gpu_ablation.py) -> RunDir; ImportProblem naming the
                                      file when it is not one, or not ended
    import_runs(paths, sweep, uri)    log them as one sweep: a parent run and one child per run dir with the tags,
                                      metric history and artifacts a Ray sweep gives them (experiments/tracking's
                                      SweepTracker, the sweep's own writer), so `ssdlab report --sweep NAME` makes
                                      the same tables

A run's status is its own final mark: `finished` when its last metrics.jsonl line is the final epoch, `failed`
when fit left the non-finite-loss marker. A run dir without either (still running, or killed) is skipped: its
numbers are not a result. Idempotent: a child run's trial id is a digest of the run's config.yaml and
metrics.jsonl, so importing the same run again (from any path) finds it and adds nothing; runs already in the
sweep keep their arms in the parent's arm list.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from experiments.schema import Kind, M, PhaseKind, Status, Tag
from ssd_core import rundir as RD
from ssd_core.errors import UserError

IMPORT_STORAGE = "ssdlab import"   # the parent run's storage tag: imported sweeps have no Ray storage
IMPORT_PHASE = "import"


class ImportProblem(UserError):
    """A run dir that cannot be imported (named, with the file and the reason)."""


@dataclass
class RunDir:
    path: Path
    cfg: Any                          # the run's ExperimentConfig (its config.yaml)
    history: list[dict]               # metrics.jsonl, one dict per epoch
    status: Status
    error: Optional[str] = None
    key: str = ""                     # digest of config.yaml + metrics.jsonl: the trial id's stem
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def trial_id(self) -> str:
        return f"import-{self.key[:12]}"


def read_run(path: Path) -> RunDir:
    from ssd_core.config import load_config

    path = Path(path)
    if not path.is_dir():
        raise ImportProblem(f"{path}: not a run dir ({'a file' if path.exists() else 'no such folder'})")
    config, metrics = path / RD.CONFIG, path / RD.METRICS
    for f in (config, metrics):
        if not f.is_file():
            raise ImportProblem(f"{f}: missing: not a run dir written by ssdlab train / ssd_core.train.fit")
    try:
        cfg = load_config(config)
    except UserError as exc:
        raise ImportProblem(f"{config}: {exc}") from None
    raw = metrics.read_bytes()
    history = []
    for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ImportProblem(f"{metrics}: line {n} is not JSON (cut by a kill?): not importable") from None
        if not isinstance(row, dict) or not isinstance(row.get(M.EPOCH), int):
            raise ImportProblem(f"{metrics}: line {n}: expected an object with an integer epoch")
        history.append(row)
    if not history:
        raise ImportProblem(f"{metrics}: no epoch logged")
    marker = path / RD.NONFINITE_MARKER
    if marker.is_file():
        status, error = Status.FAILED, marker.read_text(errors="replace").strip().splitlines()[0][:500] or "non-finite loss"
    elif history[-1].get(M.FINAL):
        status, error = Status.FINISHED, None
    else:
        last, total = history[-1][M.EPOCH], cfg.train.epochs
        raise ImportProblem(f"{metrics}: the run stopped at epoch {last} of {total} without its final epoch "
                            f"(still running, or killed): not a result, skipped")
    key = hashlib.sha256(config.read_bytes() + b"\0" + raw).hexdigest()
    files = {name: path / name for name in (RD.BEST, RD.TEST_DETECTIONS) if (path / name).is_file()}
    return RunDir(path, cfg, history, status, error, key, files)


def arm_of(run: RunDir, arm_from: Optional[str]) -> str:
    """The run's arm: the value of config key `arm_from` (a string value as it is, any other as 'key=value',
    e.g. 'augment.photometric=True'), else the config's name."""
    if not arm_from:
        return run.cfg.name
    from ssd_core.config import flatten

    flat = flatten(run.cfg)
    if arm_from not in flat:
        raise ImportProblem(f"{run.path / RD.CONFIG}: --arm-from {arm_from}: no such config key")
    value = flat[arm_from]
    return value if isinstance(value, str) else f"{arm_from}={value}"


def _epoch_metrics(row: dict) -> dict[str, float]:
    """The metrics a sweep logs per epoch (experiments/sweep/callback.py): names with a '/', and the score."""
    return {k: float(v) for k, v in row.items()
            if ("/" in k or k == M.SCORE) and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v))}


@dataclass
class ImportResult:
    parent_run_id: str
    imported: list[str]               # run dirs logged now
    present: list[str]                # run dirs already in the sweep (nothing added)
    skipped: list[str]                # one line each: the run dir and why


def import_runs(paths: Iterable[Path], sweep: str, uri: str, experiment: Optional[str] = None,
                arm_from: Optional[str] = None, baseline: Optional[str] = None, metric: str = M.map50(M.VAL),
                log_checkpoints: bool = True) -> ImportResult:
    from experiments.tracking.store import ensure_store
    from experiments.tracking.sweep_tracker import SweepTracker
    from experiments.tracking.writer import find_run
    from ssd_core.config import config_hash, flatten, to_yaml

    runs, skipped = [], []
    for p in paths:
        try:
            run = read_run(Path(p))
            runs.append((run, arm_of(run, arm_from)))
        except ImportProblem as exc:
            skipped.append(str(exc))
    if not runs:
        raise ImportProblem("nothing to import: " + ("; ".join(skipped) if skipped else "no run dirs given"))
    ensure_store(uri)
    experiment = experiment or sweep  # as a sweep file without tracking.experiment
    tracker = SweepTracker(uri, experiment, sweep, IMPORT_STORAGE)
    client = tracker.parent.client
    old = find_run(client, tracker.parent.exp_id, {Tag.KIND: Kind.SWEEP, Tag.SWEEP: sweep, Tag.STORAGE: IMPORT_STORAGE})
    arms = json.loads(old.data.tags.get(Tag.ARMS, "[]")) if old is not None else []
    for _, arm in runs:
        if arm not in arms:
            arms.append(arm)
    if baseline is not None and baseline not in arms:
        raise ImportProblem(f"--baseline {baseline}: not an arm of the imported runs ({', '.join(arms)})")
    base = baseline or (old.data.tags.get(Tag.BASELINE_ARM) if old is not None else None) or arms[0]
    seeds = sorted({int(r.cfg.train.seed) for r, _ in runs})
    tracker.parent_tags = {Tag.ARMS: json.dumps(arms), Tag.BASELINE_ARM: base, Tag.METRIC: metric,
                           Tag.SEEDS: json.dumps(seeds), Tag.SEARCH_SPACE: "{}",
                           Tag.NOTE: f"imported with ssdlab import ({len(arms)} arms)"}
    parent = tracker.start()
    imported, present = [], []
    for run, arm in runs:
        done = find_run(client, tracker.parent.exp_id, {Tag.PARENT: parent, Tag.TRIAL_ID: run.trial_id})
        if done is not None and done.data.tags.get(Tag.STATUS) == run.status.value:
            present.append(str(run.path))
            continue
        tags = {Tag.SEED: run.cfg.train.seed, Tag.CONFIG_HASH: config_hash(run.cfg), Tag.ARM: arm,
                Tag.PHASE: PhaseKind.GRID, Tag.EXPERIMENT: IMPORT_PHASE, Tag.SOURCE_DIR: str(run.path.resolve()),
                Tag.DESCRIPTION: f"imported run: arm {arm}, seed {run.cfg.train.seed}, from {run.path.resolve()}"}
        tracker.child(run.trial_id, params=flatten(run.cfg), tags=tags,
                      run_name=f"{arm}-s{run.cfg.train.seed}-{run.trial_id}")
        if (run.path / RD.DATA_RECORD).is_file():  # what it trained and was scored on (runs from before lack it)
            tracker.children[run.trial_id].log_dataset(json.loads((run.path / RD.DATA_RECORD).read_text()))
        for row in run.history:
            tracker.log_epoch(run.trial_id, int(row[M.EPOCH]), _epoch_metrics(row))
        tracker.log_checkpoints = log_checkpoints
        tracker.end_child(run.trial_id, run.status, error=run.error, config_yaml=to_yaml(run.cfg),
                          checkpoint=run.files.get(RD.BEST), detections=run.files.get(RD.TEST_DETECTIONS))
        imported.append(str(run.path))
    tracker.summarize()
    if imported:
        try:
            tracker.register_best(metric)
        except Exception as exc:  # the runs are logged: a registry hiccup must not fail the import
            skipped.append(f"best run not registered: {type(exc).__name__}: {exc}")
    tracker.finish(Status.FINISHED)
    return ImportResult(parent, imported, present, skipped)
