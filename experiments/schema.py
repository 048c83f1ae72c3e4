"""ssdlab's MLflow vocabulary, defined once: tag names, run statuses, metric names, and the rule that
picks a sweep's best trial. Writers (experiments/tracking.py, sweep.py), readers (reports/) and test
fixtures import these names; nothing else spells them. No MLflow import: workers load it for free.

A run's SCORE is its best value of the sweep's selection metric (`val/...`, docs: ssd_core/metrics.py)
over its evaluated epochs: the epoch kept as best.pt. The BEST TRIAL of a set is the finished trial
(early-stopped and failed ones never win) with the best score; ties go to the lowest seed, then the
lowest trial id. The Optuna objective, ASHA, the confirm phase, `ssdlab runs` and `ssdlab report`
all use `best_index` below. What a table REPORTS for a run is its `test/...` value at that checkpoint.
"""
from __future__ import annotations

import math
from enum import Enum
from typing import Iterable, Optional, Sequence

from ssd_core import metrics as M  # metric names live with the code that computes them

__all__ = ["Status", "MLFLOW_STATUS", "Tag", "Kind", "M", "score_of", "best_index", "better"]


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


# ssdlab status -> MLflow run status
MLFLOW_STATUS = {Status.FINISHED: "FINISHED", Status.EARLY_STOPPED: "FINISHED", Status.FAILED: "FAILED",
                 Status.KILLED: "KILLED", Status.RUNNING: "RUNNING", Status.LOST: "KILLED"}
# MLflow run status -> ssdlab status, for runs without an ssdlab.status tag
FROM_MLFLOW = {"FINISHED": Status.FINISHED, "FAILED": Status.FAILED, "KILLED": Status.FAILED,
               "RUNNING": Status.RUNNING, "SCHEDULED": Status.RUNNING}


class Kind:
    """Values of `ssdlab.kind`."""

    SWEEP, TRIAL, TRAIN = "sweep", "trial", "train"


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
    MODE = "ssdlab.mode"
    SEEDS = "ssdlab.seeds"
    SAMPLER = "ssdlab.sampler"
    COUNTS = "ssdlab.counts"          # JSON {status: number of trials}, set when the sweep ends or stops
    # a trial (child run)
    TRIAL_ID = "ssdlab.trial_id"
    ARM = "ssdlab.arm"
    SEED = "ssdlab.seed"
    PHASE = "ssdlab.phase"            # grid | search | confirm
    EXPERIMENT = "ssdlab.experiment"  # the Ray Tune experiment (phase folder)
    SEARCHED = "ssdlab.searched"      # JSON list of the searched config keys
    # an `ssdlab train` run
    RUN_DIR = "ssdlab.run_dir"
    # MLflow's own
    PARENT = "mlflow.parentRunId"


def score_of(values: Iterable[float], mode: str = "max") -> float:
    """A run's score: the best finite value of its selection metric over epochs (nan when none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan
    return max(finite) if mode == "max" else min(finite)


def better(a: float, b: float, mode: str = "max") -> bool:
    """Is score a strictly better than b (nan is worse than everything)?"""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a > b if mode == "max" else a < b


def best_index(scores: Sequence[float], statuses: Sequence[str], seeds: Sequence[Optional[float]],
               trial_ids: Sequence[str], mode: str = "max") -> Optional[int]:
    """Index of the best trial: finished, best finite score, then lowest seed, then lowest trial id;
    None when no finished trial has a finite score."""
    def key(i: int):
        s = float(scores[i])
        seed = seeds[i]
        seed = math.inf if seed is None or (isinstance(seed, float) and math.isnan(seed)) else float(seed)
        return (-s if mode == "max" else s, seed, str(trial_ids[i]))

    ok = [i for i in range(len(scores)) if str(statuses[i]) == Status.FINISHED.value
          and scores[i] is not None and math.isfinite(float(scores[i]))]
    return min(ok, key=key) if ok else None
