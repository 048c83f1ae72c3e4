"""The worker side of a sweep: what runs inside each Ray Tune trial. No MLflow here (workers never log
to it); Ray is imported only inside the functions that need it.

    TrialKey      a trial's identity (arm, seed, searched params, the search trial a confirm run retrains)
    TrialJob      what every worker needs (shipped once via tune.with_parameters); .config(key) resolves
                  and caches the trial's ExperimentConfig
    run_trial     the Tune trainable: resume from the trial's newest consistent state, call fit
    TuneReporter  fit callback: each epoch -> ray.tune.report(metrics, marker checkpoint)

Resuming: the trial's own last.pt is the newest consistent state (fit writes it first and checks its
config hash); the Tune checkpoint is a marker naming the epoch Tune has seen, and the epochs after it are
reported again from last.pt's history, so Tune, ASHA and MLflow get one continuous history.
"""
from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from experiments.schema import M, Status
from experiments.sweep_spec import SweepSpec
from ssd_core.config import ExperimentConfig, apply_overrides, config_hash, resolve_data_root
from ssd_core.errors import ConfigError, NonFiniteLossError

OBJECTIVE = "ssdlab_objective"
NONFINITE_MARKER = "NONFINITE_LOSS.txt"
REPORTED = "reported.json"  # the whole Tune checkpoint: which epoch was reported (the weights stay in the run dir)
META = "ssdlab"             # the key of a Tune trial config that holds the TrialKey fields


@dataclass(frozen=True)
class TrialKey:
    """Everything that makes a trial's config: the arm, the seed, the searched params (sorted pairs), and
    for a confirm run the search trial whose configuration it retrains."""

    arm: Optional[str]
    seed: int
    params: tuple = ()
    source_trial: Optional[str] = None

    @classmethod
    def of(cls, config: dict[str, Any]) -> "TrialKey":
        """From a Tune trial config: {"ssdlab": {arm, seed, source_trial}, <dotted key>: value, ...}."""
        meta = config[META]
        params = tuple(sorted((k, v) for k, v in config.items() if k != META))
        return cls(meta.get("arm"), int(meta["seed"]), params, meta.get("source_trial"))


@dataclass
class TrialJob:
    """What every worker needs (shipped once via tune.with_parameters)."""

    spec: SweepSpec
    train_fn: Callable
    cwd: str          # the driver's working directory: relative data paths resolve against it
    gpu: float
    storage: str      # the sweep's state folder (runs/ray/<name>); trial run dirs live under it

    def resolve(self, config: dict[str, Any]) -> ExperimentConfig:
        """Trial config (Tune's `config` dict) -> the resolved ExperimentConfig, data root absolute."""
        return self.config(TrialKey.of(config))

    def config(self, key: TrialKey) -> ExperimentConfig:
        """The trial's ExperimentConfig, resolved once per key (cached)."""
        return _resolve(self, key)

    def __hash__(self) -> int:
        return id(self)

    def _resolve(self, key: TrialKey) -> ExperimentConfig:
        cfg = self.spec.resolve(key.arm, key.seed, dict(key.params))
        try:
            root = resolve_data_root(cfg)
        except ConfigError:
            return cfg
        if not root.is_absolute():
            root = Path(self.cwd) / root
        return apply_overrides(cfg, {"data.root": str(root)})


@functools.lru_cache(maxsize=4096)
def _resolve(job: "TrialJob", key: TrialKey) -> ExperimentConfig:
    return job._resolve(key)


def searched_params(config: dict[str, Any]) -> dict[str, Any]:
    """The dotted config keys a trial config carries besides its `ssdlab` metadata."""
    return {k: v for k, v in config.items() if k != "ssdlab"}


# --------------------------------------------------------------------------- worker side


class TuneReporter:
    """fit callback in the worker: each epoch -> `ray.tune.report(metrics, checkpoint)`.

    The searcher's objective is the run's score so far (`score` in fit's metrics: its best val metric,
    the best.pt epoch; ssd_core/metrics.py), or the sweep metric's best so far for a trainable that
    reports no score. The Tune checkpoint is a marker naming the epoch (and config hash): the weights
    stay in the trial's run dir, whose last.pt is always at least as new (it is written first)."""

    def __init__(self, metric: str, mode: str, config_hash: str = ""):
        self.metric, self.mode, self.config_hash = metric, mode, config_hash
        self.objective = float("-inf") if mode == "max" else float("inf")

    def on_fit_start(self, cfg, run_dir) -> None: ...

    def on_fit_end(self, result) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict, run_dir) -> None:
        from ray import tune

        if M.SCORE in metrics:
            self.objective = float(metrics[M.SCORE])
        elif self.metric in metrics:
            value = float(metrics[self.metric])
            self.objective = value if (value > self.objective if self.mode == "max" else value < self.objective) \
                else self.objective
        worst = -1e30 if self.mode == "max" else 1e30
        objective = self.objective if abs(self.objective) != float("inf") else worst
        result = {**metrics, "epoch": int(epoch), OBJECTIVE: objective}
        with tempfile.TemporaryDirectory(prefix="ssdlab-ckpt-") as tmp:
            marker = {"epoch": int(epoch), "iteration": metrics.get(M.ITERATION), "config_hash": self.config_hash}
            (Path(tmp) / REPORTED).write_text(json.dumps(marker))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))

    def replay(self, last_checkpoint: Path, after_epoch: int) -> int:
        """Report again the epochs of `last_checkpoint`'s history after `after_epoch`: a driver killed
        between a worker's report and Tune's state snapshot loses them from Tune's view, while last.pt
        (the newest consistent state) has them. Returns how many were replayed."""
        from ssd_core.checkpoint import load_checkpoint
        from ssd_core.errors import CheckpointError

        try:
            history = load_checkpoint(last_checkpoint).get("history") or []
        except CheckpointError:
            return 0
        todo = [m for m in history if int(m.get(M.EPOCH, 0)) > after_epoch]
        for m in todo:
            self.on_epoch_end(int(m[M.EPOCH]), m, last_checkpoint.parent)
        return len(todo)


def _cap_gpu_memory(fraction: float) -> None:
    """Fractional GPUs pack trials on one card: cap this worker's CUDA memory to its share."""
    if 0 < fraction < 1:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(fraction)


def trial_run_dir(job: TrialJob, trial_id: str) -> Path:
    """`<storage>/trials/<trial_id>`: the trial's run directory (last.pt, best.pt, metrics.jsonl).

    Not inside Ray's trial folder: Ray syncs that folder to storage while the trial writes, and would
    trip over the atomic checkpoint writes' temporary files. A retried or restored trial finds its
    files here again (and Tune's reported checkpoint, copied in, is the authority on resume)."""
    return Path(job.storage) / "trials" / trial_id


def run_trial(config: dict[str, Any], job: TrialJob) -> None:
    """The Tune trainable: resolve the trial config, resume from the newest consistent state, train.

    The newest consistent state is the trial's own last.pt (fit checks its config hash); Tune's
    checkpoint only says which epoch Tune has seen, and the epochs after it are reported again first,
    so Tune, ASHA and MLflow get one continuous history whatever moment a driver or worker died."""
    from ray import tune

    cfg = job.resolve(config)
    _cap_gpu_memory(job.gpu)
    run_dir = trial_run_dir(job, tune.get_context().get_trial_id())
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / NONFINITE_MARKER
    if marker.exists():  # a retry of a trial whose loss went non-finite: fail again, at once
        raise NonFiniteLossError(marker.read_text())
    seen = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            try:
                seen = int(json.loads((Path(ckpt_dir) / REPORTED).read_text())["epoch"])
            except (OSError, ValueError, KeyError, TypeError):
                seen = 0
    reporter = TuneReporter(job.spec.metric, job.spec.mode, config_hash(cfg))
    resume = (run_dir / "last.pt").is_file()
    if resume:
        reporter.replay(run_dir / "last.pt", seen)
    try:
        job.train_fn(cfg, callbacks=[reporter], run_dir=run_dir, resume=resume)
    except NonFiniteLossError as exc:
        marker.write_text(str(exc))
        raise


def trial_status(last_result: Optional[dict], planned_epochs: int) -> Status:
    """FINISHED when the trial's last report was the epoch that ended its training (fit marks it `final`;
    for a trainable without that mark: it reached train.epochs), else EARLY_STOPPED (a scheduler)."""
    last = last_result or {}
    if M.FINAL in last:
        return Status.FINISHED if last[M.FINAL] else Status.EARLY_STOPPED
    return Status.FINISHED if int(last.get(M.EPOCH, 0)) >= planned_epochs else Status.EARLY_STOPPED
