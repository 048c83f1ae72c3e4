"""ssdlab's MLflow vocabulary, defined once: tag names, run statuses, metric names, and the rule that
picks a sweep's best trial. Writers (experiments/tracking/, experiments/sweep/), readers (reports/) and test
fixtures import these names; nothing else spells them. No MLflow import: workers load it for free.

A run's SCORE is fit's `score` (ssd_core/metrics.py): its best value of the sweep's selection metric
(`val/...`) over its evaluated epochs, the epoch kept as best.pt. fit computes it and logs it every epoch;
everyone else reads it (a run's latest `score`), never recomputes it. The BEST TRIAL of a set is the
finished trial (early-stopped and failed ones never win) with the best score; ties go to the lowest seed,
then the lowest trial id. The Optuna objective, ASHA, the confirm phase, the registry, `ssdlab runs` and
`ssdlab report` all use `best_index` below, and a sweep's end carries its pick as a `BestTrial`. What a
table REPORTS for a run is its `test/...` value at that checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional, Sequence

from ssd_core import metrics as M  # metric names live with the code that computes them
from ssd_core.config import short

__all__ = ["Status", "COUNTED", "MLFLOW_STATUS", "Tag", "Kind", "PhaseKind", "MAXIMISED", "MINIMISED", "OPTUNA_DIRECTION", "Artifact", "M", "best_index", "BestTrial", "Param", "parse_space",
           "SpaceError", "grid_points", "grid_size", "KINDS", "SEARCH_OBJECTIVES", "pareto_front"]


class Status(str, Enum):
    """`ssdlab.status` of a run (MLflow's own status cannot say "early-stopped")."""

    RUNNING = "running"
    FINISHED = "finished"          # trained to its end (epochs, iterations or time budget)
    EARLY_STOPPED = "early_stopped"  # a scheduler (ASHA) stopped it before its end
    FAILED = "failed"
    KILLED = "killed"              # a sweep interrupted (resumable); the tag keeps "running"
    LOST = "lost"                  # a trial Ray Tune lost: the driver died before Tune's state recorded it

    def __str__(self) -> str:
        return self.value


# The statuses the tables and the live view count trials by, in their column order (the finished ones first:
# the only ones averaged)
COUNTED = (Status.FINISHED.value, Status.EARLY_STOPPED.value, Status.FAILED.value, Status.RUNNING.value)

# ssdlab status -> MLflow run status
MLFLOW_STATUS = {Status.FINISHED: "FINISHED", Status.EARLY_STOPPED: "FINISHED", Status.FAILED: "FAILED",
                 Status.KILLED: "KILLED", Status.RUNNING: "RUNNING", Status.LOST: "KILLED"}
# MLflow run status -> ssdlab status, for runs without an ssdlab.status tag
FROM_MLFLOW = {"FINISHED": Status.FINISHED, "FAILED": Status.FAILED, "KILLED": Status.FAILED,
               "RUNNING": Status.RUNNING, "SCHEDULED": Status.RUNNING}


class Kind:
    """Values of `ssdlab.kind`."""

    SWEEP, TRIAL, TRAIN = "sweep", "trial", "train"


class PhaseKind:
    """Values of `ssdlab.phase`: a sweep phase's kind (experiments/sweep/plan.py): explicit trials (arms x
    seeds, a sequential wave, an imported run), an Optuna search, or the confirm phase retraining a search's
    best configuration with the other seeds."""

    GRID, SEARCH, CONFIRM = "grid", "search", "confirm"


# The direction of each objective as Ray Tune and pareto_front spell it: the selection metric (a run's score) is
# maximised, the further objectives a search may minimise (SEARCH_OBJECTIVES) are minimised; and as Optuna does.
MAXIMISED, MINIMISED = "max", "min"
OPTUNA_DIRECTION = {MAXIMISED: "maximize", MINIMISED: "minimize"}


class Tag:
    """Tag names (docs/interfaces.md lists what each holds)."""

    # every ssdlab run
    KIND = "ssdlab.kind"
    STATUS = "ssdlab.status"
    ERROR = "ssdlab.error"
    CONFIG_HASH = "ssdlab.config_hash"
    NOTE = "ssdlab.note"
    # a sweep's parent run
    SWEEP = "ssdlab.sweep"
    STORAGE = "ssdlab.storage"
    ARMS = "ssdlab.arms"
    BASELINE_ARM = "ssdlab.baseline_arm"
    SEARCH_SPACE = "ssdlab.search_space"
    METRIC = "ssdlab.metric"
    SEEDS = "ssdlab.seeds"
    SAMPLER = "ssdlab.sampler"
    OBJECTIVES = "ssdlab.objectives"  # JSON list of the search's further objectives (minimised), [] for one
    COUNTS = "ssdlab.counts"          # JSON {status: number of trials}, set when the sweep ends or stops
    DESIGN = "ssdlab.design"          # JSON: the sweep's design (factors, levels, points; experiments/design.py)
    SEQUENTIAL = "ssdlab.sequential"  # JSON: sequential seeding's looks, and per arm its seeds and why it stopped
    # a trial (child run)
    TRIAL_ID = "ssdlab.trial_id"
    ARM = "ssdlab.arm"
    SEED = "ssdlab.seed"
    PHASE = "ssdlab.phase"            # grid | search | confirm (PhaseKind)
    EXPERIMENT = "ssdlab.experiment"  # the Ray Tune experiment (phase folder)
    SEARCHED = "ssdlab.searched"      # JSON list of the searched config keys
    SOURCE_TRIAL = "ssdlab.source_trial"  # a confirm run: the search trial whose configuration it retrains
    SOURCE_DIR = "ssdlab.source_dir"      # an imported run (ssdlab import): the run dir it was read from
    NODE = "ssdlab.node"              # "<hostname>/<ip>/<Ray node id>" of the node that ran its latest attempt
    NODES = "ssdlab.nodes"            # JSON list of every node its attempts ran on, in order
    PRECISION = "ssdlab.precision"    # the training precision train.amp resolved to there (ssd_core/precision.py)
    DATA_SKIPPED = "ssdlab.data.skipped"  # how many unreadable images data.skip_bad left out (the list: Artifact.DATA)
    # an `ssdlab train` run
    RUN_DIR = "ssdlab.run_dir"
    # the end of a sweep (parent run): the best trial by the schema's rule, and its registered model
    BEST_TRIAL = "ssdlab.best_trial"
    BEST_RUN = "ssdlab.best_run"
    BEST_SCORE = "ssdlab.best_score"
    REGISTERED_MODEL = "ssdlab.registered_model"  # "<name>/<version>" in the MLflow model registry
    # provenance (every ssdlab run): what made it
    GIT_DIRTY = "ssdlab.git_dirty"        # "true" when the working tree had uncommitted changes
    COMMAND = "ssdlab.command"            # the command line
    VERSIONS = "ssdlab.versions"          # JSON {package: version}: torch, torchvision, ray, mlflow, optuna, ssdlab
    # MLflow's own
    PARENT = "mlflow.parentRunId"
    GIT_COMMIT = "mlflow.source.git.commit"
    DESCRIPTION = "mlflow.note.content"   # the run description the MLflow UI shows
    RUN_NAME = "mlflow.runName"


class Artifact:
    """Artifact folders of ssdlab runs (the files in them are named by ssd_core/rundir.py)."""

    CHECKPOINTS = "checkpoints"   # a trial's weights-only best.pt
    EVIDENCE = "evidence"         # detections.png, pr_curves.png (experiments/evidence.py)
    BUDGET = M.TEST_AT            # the test detections at each budget point (eval.test_at)
    REPORT = "report"             # a sweep's parent: the report `ssdlab report` wrote
    DATA = "data"                 # data.json (what the run trained and was scored on), skipped_images.txt


# Further objectives a search may minimise beside its selection metric (search.objectives): deployment costs
# measured at a trial's final epoch (config `deploy`, ssd_core/metrics.py). Every one is minimised.
SEARCH_OBJECTIVES = tuple(
    [M.deploy(t, b, one) for b in M.DEPLOY_BACKENDS for t in ("latency_ms",) for one in (False, True)]
    + [M.deploy("model_mb", b) for b in M.DEPLOY_BACKENDS if b != "torch"]
    + [M.DEPLOY_PARAMS, M.DEPLOY_GFLOPS, M.DEPLOY_CHECKPOINT_MB])


def best_index(scores: Sequence[float], statuses: Sequence[str], seeds: Sequence[Optional[float]],
               trial_ids: Sequence[str]) -> Optional[int]:
    """Index of the best trial: finished, best finite score, then lowest seed, then lowest trial id;
    None when no finished trial has a finite score."""
    def key(i: int):
        s = float(scores[i])
        seed = seeds[i]
        seed = math.inf if seed is None or (isinstance(seed, float) and math.isnan(seed)) else float(seed)
        return (-s, seed, str(trial_ids[i]))

    ok = [i for i in range(len(scores)) if str(statuses[i]) == Status.FINISHED.value
          and scores[i] is not None and math.isfinite(float(scores[i]))]
    return min(ok, key=key) if ok else None


@dataclass(frozen=True)
class BestTrial:
    """A sweep's best trial (best_index over the trials' scores), as the sweep's end hands it on: to the
    registry and the parent run's tags, to the command's closing lines; the report makes one the same way."""

    trial_id: str
    run_id: str
    score: float                      # fit's score: the best val/... over its epochs
    arm: Optional[str] = None
    seed: Optional[int] = None
    reported: Optional[float] = None  # its test/... value at the selected checkpoint (None without a test split)
    model: Optional[str] = None       # "<name>/<version>" in the MLflow model registry, once registered


# --------------------------------------------------------------------------- the search space
# A sweep's `search.space` (experiments/sweep/spec.py) maps dotted config keys to one distribution each:
#   {uniform: [lo, hi]} | {loguniform: [lo, hi]} | {int: [lo, hi]} (inclusive) | {choice: [v, ...]}
# with an optional `when: {key: value, ...}`. Parsed here, once: the sweep validates and samples with these
# Params, the parent run stores the space as written (Tag.SEARCH_SPACE), the report parses it back here.

KINDS = ("uniform", "loguniform", "int", "choice")


class SpaceError(ValueError):
    """A malformed distribution: `where` is the key path under search.space ("train.lr.uniform")."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution."""

    key: str
    kind: str                      # one of KINDS
    low: Optional[float] = None    # uniform / loguniform / int
    high: Optional[float] = None
    choices: tuple = ()            # choice
    when: tuple = ()               # ((config key, value), ...): sample only when all hold

    def suggest(self, trial):
        """Ask an Optuna trial (define-by-run) for this parameter."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "loguniform")

    def optuna(self):
        """The Optuna distribution (for a study rebuilt from finished runs)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high))
        return FloatDistribution(self.low, self.high, log=self.kind == "loguniform")

    def cast(self, value):
        """A value read back (an MLflow param, parsed) as this distribution's type; ValueError if outside."""
        if self.kind == "choice":
            for c in self.choices:
                if value == c or str(value) == str(c):
                    return c
            raise ValueError(f"{self.key}: {short(value)} is not one of {list(self.choices)}")
        return int(value) if self.kind == "int" else float(value)

    def extremes(self) -> list:
        """The values that must give a valid config: every choice, or both bounds."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def grid(self) -> Optional[list]:
        """The values of a grid axis (choice values, an int range inclusive); None for float ranges."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        return None

    def applies(self, chosen: dict, config: dict) -> bool:
        """Whether `when` holds: each key equals its value, read from the parameters sampled so far,
        else from the trial's config (flattened)."""
        return all(chosen.get(k, config.get(k)) == v for k, v in self.when)


def parse_param(key: str, dist: Any) -> Param:
    """One entry of search.space -> Param; SpaceError names the key path."""
    if not isinstance(dist, dict):
        raise SpaceError(key, f"expected a mapping like {{uniform: [lo, hi]}}, got {short(dist)}")
    kinds = [k for k in dist if k in KINDS]
    unknown = [k for k in dist if k not in KINDS and k != "when"]
    if unknown or len(kinds) != 1:
        raise SpaceError(key, f"expected exactly one of {', '.join(KINDS)} (plus optional when), got {sorted(dist)}")
    kind, arg = kinds[0], dist[kinds[0]]
    where = f"{key}.{kind}"
    when = dist.get("when")
    if when is not None and (not isinstance(when, dict) or not when):
        raise SpaceError(f"{key}.when", f"expected a mapping {{key: value}}, got {short(when)}")
    when = tuple((str(k), v) for k, v in (when or {}).items())
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise SpaceError(where, f"expected a non-empty list, got {short(arg)}")
        bad = [v for v in arg if not (v is None or isinstance(v, (bool, int, float, str)))]
        if bad:
            raise SpaceError(where, f"choices must be numbers, strings, booleans or null, got {bad}")
        return Param(key, kind, choices=tuple(arg), when=when)
    if not (isinstance(arg, list) and len(arg) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)):
        raise SpaceError(where, f"expected [low, high], got {short(arg)}")
    lo, hi = arg
    if not all(math.isfinite(v) for v in arg):
        raise SpaceError(where, f"bounds must be finite numbers, got {short(arg)}")
    if not lo < hi:
        raise SpaceError(where, f"low {lo} must be below high {hi}")
    if kind == "loguniform" and lo <= 0:
        raise SpaceError(where, f"low {lo} must be > 0 for a log scale")
    if kind == "int" and not all(isinstance(v, int) for v in arg):
        raise SpaceError(where, f"expected integer bounds, got {short(arg)}")
    return Param(key, kind, float(lo) if kind != "int" else lo, float(hi) if kind != "int" else hi, when=when)


def parse_space(space: dict) -> list[Param]:
    """search.space -> Params in file order (the sampling order `when` relies on)."""
    if not isinstance(space, dict):
        raise SpaceError("", f"expected a mapping of config keys to distributions, got {type(space).__name__}")
    return [parse_param(str(k), d) for k, d in space.items()]


def grid_size(params: Sequence[Param]) -> int:
    """The number of points of a grid space, without listing them."""
    return math.prod(len(p.grid() or ()) if p.kind != "int" else int(p.high) - int(p.low) + 1 for p in params)


def grid_points(params: Sequence[Param]) -> list[dict]:
    """Every combination of a grid space (choice values, int ranges inclusive)."""
    import itertools
    axes = {p.key: p.grid() for p in params}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[bool]:
    """Which points are Pareto-optimal: no other point is at least as good in every objective and better in
    one (`modes`: MAXIMISED | MINIMISED per objective). Points with a non-finite value are never on the front."""
    sign = [1.0 if m == MAXIMISED else -1.0 for m in modes]
    pts = [[s * float(v) for s, v in zip(sign, p)] for p in points]
    ok = [all(math.isfinite(v) for v in p) for p in pts]
    front = []
    for i, p in enumerate(pts):
        dominated = any(ok[j] and j != i and all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p))
                        for j, q in enumerate(pts))
        front.append(ok[i] and not dominated)
    return front
