"""The driver's single MLflow writer: a Ray Tune callback that turns trial events into MLflow runs
(one child run per trial under the sweep's parent, through tracking.SweepTracker). Ray and MLflow are
imported here; only the sweep driver imports this module.

A child run is created at the trial's first report (or its error), not at its start: a trial that a
killed driver started but Tune's state never recorded leaves no run behind. Each epoch is logged once
(the tracker skips steps already logged). A trial ends FINISHED when its last report was the epoch that
ended its training (fit's `final`), EARLY_STOPPED when a scheduler stopped it, FAILED on an error.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ray import tune

from experiments.schema import M, Status, Tag
from experiments.sweep_spec import Phase, SweepSpec
from experiments.trial import TrialJob, TrialKey, trial_run_dir, trial_status
from ssd_core.config import ExperimentConfig, config_hash, flatten, to_yaml


def _error_line(trial) -> str:
    """The trial's exception as one line ('NonFiniteLossError: ...'), from Ray's error file."""
    text = ""
    try:
        if trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text()
    except (OSError, AttributeError):
        pass
    if not text:
        err = trial.get_error() if hasattr(trial, "get_error") else None
        text = str(err or "trial failed")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    hits = [ln for ln in lines if "Error" in ln.split(":", 1)[0] or "Exception" in ln.split(":", 1)[0]]
    line = hits[-1] if hits else lines[-1] if lines else "trial failed"
    return line.replace("ssd_core.errors.", "")


class MLflowTuneCallback(tune.Callback):
    """One phase's trial events -> the sweep's MLflow runs (picklable: Tune saves it with its state)."""

    def __init__(self, spec: SweepSpec, job: TrialJob, tracker, phase: Phase):
        self.spec, self.job, self.tracker, self.phase = spec, job, tracker, phase
        self._cfg: dict[str, ExperimentConfig] = {}

    def _ensure(self, trial) -> str:
        tid = trial.trial_id
        if tid in self._cfg and self.tracker.run_id(tid) is not None:
            return self.tracker.run_id(tid)
        if tid not in self._cfg:
            self._cfg[tid] = self.job.resolve(trial.config)
        cfg = self._cfg[tid]
        key = TrialKey.of(trial.config)
        arm, seed = key.arm, key.seed
        tags = {Tag.SEED: seed, Tag.CONFIG_HASH: config_hash(cfg), Tag.TRIAL_ID: tid,
                Tag.PHASE: self.phase.kind, Tag.EXPERIMENT: self.phase.dirname}
        if arm:
            tags[Tag.ARM] = arm
            tags[Tag.NOTE] = self.spec.file.arms[arm].note
        if self.phase.kind == "search":
            tags[Tag.SEARCHED] = json.dumps(sorted(k for k, _ in key.params))
        if key.source_trial:  # a confirm run: the search trial whose configuration it retrains
            tags[Tag.SOURCE_TRIAL] = key.source_trial
        name = "-".join(str(p) for p in (arm, f"s{seed}", tid) if p is not None)
        return self.tracker.child(tid, params=flatten(cfg), tags=tags, run_name=name)

    # The child run is created at the trial's first report (or its error), not at its start: a
    # trial that a killed driver started but Tune's state never recorded leaves no run behind.
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._ensure(trial)
        epoch = int(result.get(M.EPOCH, result.get("training_iteration", 0)))
        metrics = {k: v for k, v in result.items()
                   if "/" in k and not k.startswith("config/") and isinstance(v, (int, float))}
        self.tracker.log_epoch(trial.trial_id, epoch, metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ensure(trial)
        tid = trial.trial_id
        status = trial_status(getattr(trial, "last_result", None), self._cfg[tid].train.epochs)
        run_dir = trial_run_dir(self.job, tid)
        self.tracker.end_child(tid, status, config_yaml=to_yaml(self._cfg[tid]),
                               checkpoint=run_dir / "best.pt", detections=run_dir / M.TEST_DETECTIONS)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ensure(trial)
        self.tracker.end_child(trial.trial_id, Status.FAILED, error=_error_line(trial),
                               config_yaml=to_yaml(self._cfg[trial.trial_id]))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cfg"] = {}
        return state
