"""Run a sweep: SweepSpec -> Ray Tune experiments (OptunaSearch, ASHA, resources, resume) -> MLflow.

    spec = load_sweep("sweeps/demo.yaml")
    run_sweep(spec)                           # local Ray; address="auto" or "HOST:PORT" for a cluster
    run_sweep(spec, resume=True)              # after the driver died: Tuner.restore(...)

Roles:

* Workers run `train_fn(cfg, callbacks=[report], run_dir, resume)` (`ssd_core.train.fit` by
  default; injectable for tests). The callback calls `ray.tune.report(metrics, checkpoint)` each
  epoch with `last.pt` + `best.pt`. A retried trial (FailureConfig) or a restored one gets its
  latest Tune checkpoint back and resumes fit from it. Workers never touch MLflow.
* The driver is the single MLflow writer: `MLflowTuneCallback` (a `ray.tune.Callback`) turns
  trial events into parent/child runs through `tracking.SweepTracker`, whose run identity is
  found again by tags after a restore, and which never logs a step twice.
* Early stopping: ASHA (time_attr `epoch`) for search phases, and for arms only when the sweep
  asks. A trial that ASHA stops before its last epoch is tagged `ssdlab.status=early_stopped`.
* A non-finite loss (`NonFiniteLossError`) fails its trial with `ssdlab.error`; a marker in the
  run dir makes any retry fail at once instead of training into the same NaN again.
* The end: the parent run gets `ssdlab.counts` (trials by status, from MLflow, earlier launches of a
  resumed sweep included) and, when trials failed, `ssdlab.error`; `SweepResult.failures` lists them
  (`ssdlab sweep` prints each and exits 1). A phase that stopped early (Ctrl-C) is counted from each
  trial's own record (`phase_states`), not from Tune's TERMINATED, which covers cut-short trials too.

The searcher sees the metric under the internal key `ssdlab_objective`: the latest evaluated
value of the sweep metric (the mode's worst value before the first evaluation), so epochs
without an evaluation (eval.every_epochs > 1) still carry one. MLflow only gets metric names with
a "/" (train/loss, val/mAP50, ...) as reported by fit.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from experiments.schema import Kind, M, Param, Status, Tag, best_index, parse_space
from experiments.sweep_spec import Phase, SweepSpec, parent_params, parent_tags, plan
from ssd_core.config import ExperimentConfig, apply_overrides, config_hash, flatten, resolve_data_root, to_yaml
from ssd_core.errors import ConfigError, NonFiniteLossError

OBJECTIVE = "ssdlab_objective"
NONFINITE_MARKER = "NONFINITE_LOSS.txt"
REPORTED = "reported.json"  # the whole Tune checkpoint: which epoch was reported (the weights stay in the run dir)
DEFAULT_STORAGE = "runs/ray"


# --------------------------------------------------------------------------- trial configs


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
        meta = config["ssdlab"]
        cfg = self.spec.resolve(meta.get("arm"), int(meta["seed"]), searched_params(config))
        try:
            root = resolve_data_root(cfg)
        except ConfigError:
            return cfg
        if not root.is_absolute():
            root = Path(self.cwd) / root
        return apply_overrides(cfg, {"data.root": str(root)})


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


# --------------------------------------------------------------------------- driver side


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


class MLflowTuneCallback:
    """The driver's single MLflow writer, as a `ray.tune.Callback` (built by `make_callback`)."""


def trial_status(last_result: Optional[dict], planned_epochs: int) -> Status:
    """FINISHED when the trial's last report was the epoch that ended its training (fit marks it `final`;
    for a trainable without that mark: it reached train.epochs), else EARLY_STOPPED (a scheduler)."""
    last = last_result or {}
    if M.FINAL in last:
        return Status.FINISHED if last[M.FINAL] else Status.EARLY_STOPPED
    return Status.FINISHED if int(last.get(M.EPOCH, 0)) >= planned_epochs else Status.EARLY_STOPPED


def make_callback(spec: SweepSpec, job: TrialJob, tracker, phase: Phase):
    from ray import tune

    class _Callback(tune.Callback, MLflowTuneCallback):
        def __init__(self):
            self.spec, self.job, self.tracker, self.phase = spec, job, tracker, phase
            self._cfg: dict[str, ExperimentConfig] = {}

        def _ensure(self, trial) -> str:
            tid = trial.trial_id
            if tid in self._cfg and self.tracker.run_id(tid) is not None:
                return self.tracker.run_id(tid)
            if tid not in self._cfg:
                self._cfg[tid] = self.job.resolve(trial.config)
            cfg = self._cfg[tid]
            meta = trial.config["ssdlab"]
            arm, seed = meta.get("arm"), meta["seed"]
            searched = searched_params(trial.config)
            tags = {Tag.SEED: seed, Tag.CONFIG_HASH: config_hash(cfg), Tag.TRIAL_ID: tid,
                    Tag.PHASE: self.phase.kind, Tag.EXPERIMENT: self.phase.dirname}
            if arm:
                tags[Tag.ARM] = arm
                tags[Tag.NOTE] = self.spec.file.arms[arm].note
            if self.phase.kind == "search":
                tags[Tag.SEARCHED] = json.dumps(sorted(searched))
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

    return _Callback()


# --------------------------------------------------------------------------- search space


class DefineByRun:
    """Optuna define-by-run space (picklable: the searcher is checkpointed with the experiment).

    Parameters (experiments.schema.Param) are sampled in file order; one with `when: {key: value}` is
    sampled only when each key equals the value, looking first at the parameters sampled so far, then
    at the arm's config.
    """

    def __init__(self, params: list[Param], base_flat: dict[str, Any]):
        self.params, self.base_flat = list(params), base_flat

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for p in self.params:
            if p.applies(chosen, self.base_flat):
                chosen[p.key] = p.suggest(trial)


def make_sampler(search):
    import optuna

    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=search.seed)
    params = parse_space(search.space)
    axes = {p.key: sorted(set(p.grid()), key=repr) for p in params}
    return optuna.samplers.GridSampler(axes, seed=search.seed)


# --------------------------------------------------------------------------- tuners


def _trainable(job: TrialJob):
    from ray import tune

    res = {"cpu": job.spec.file.resources.cpu, "gpu": job.spec.file.resources.gpu}
    return tune.with_resources(tune.with_parameters(run_trial, job=job), res)


def _new_tuner(spec: SweepSpec, job: TrialJob, phase: Phase, storage: Path, callback, best_params=None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    f = spec.file
    search_alg = scheduler = None
    asha = spec.asha
    if phase.kind == "search":
        meta = dict(phase.trials[0])
        param_space = {"ssdlab": meta}
        base_flat = flatten(spec.resolve(phase.arm, meta["seed"]))
        search_alg = OptunaSearch(space=DefineByRun(parse_space(f.search.space), base_flat), metric=OBJECTIVE,
                                  mode=spec.mode, sampler=make_sampler(f.search))
        num_samples = phase.num_samples
    else:
        trials = [{**t} for t in phase.trials]
        param_space = {"ssdlab": tune.grid_search(trials), **(best_params or {})}
        num_samples = 1
    if asha is not None and phase.kind != "confirm":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.max_t(phase.arm),
                                  grace_period=asha.grace_period, reduction_factor=asha.reduction_factor)
    tune_config = tune.TuneConfig(metric=OBJECTIVE, mode=spec.mode, search_alg=search_alg, scheduler=scheduler,
                                  num_samples=num_samples, max_concurrent_trials=f.max_concurrent,
                                  reuse_actors=True)
    run_config = tune.RunConfig(
        name=phase.dirname, storage_path=str(storage), callbacks=[callback], verbose=0,
        failure_config=tune.FailureConfig(max_failures=f.failure.max_failures),
        # 2, not 1: Tune deletes a trial's older checkpoints as soon as it registers a new one, and saves
        # its experiment state a step later; with one kept, a driver killed in that window resumes the
        # trial from a deleted checkpoint and it fails. Two kept close that for epochs longer than
        # Tune's snapshot period (>= 10 s); with shorter epochs a kill can still land in the window.
        # Every Tune checkpoint is a marker of a few bytes (the weights stay in the trial's run dir), so
        # all are kept: Tune never deletes the one its last experiment snapshot points at.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None))
    return tune.Tuner(_trainable(job), param_space=param_space, tune_config=tune_config, run_config=run_config)


def _best_params(results, mode: str) -> Optional[dict[str, Any]]:
    """The searched params of the phase's best trial (experiments.schema.best_index: finished trials
    only, best score); None when no finished trial has one."""
    rows = [r for r in results if r.metrics]
    scores = [float(r.metrics.get(M.SCORE, r.metrics.get(OBJECTIVE, float("nan")))) for r in rows]
    statuses = [Status.FINISHED.value if r.error is None and r.metrics.get(M.FINAL, 1) else Status.EARLY_STOPPED.value
                for r in rows]
    seeds = [r.config.get("ssdlab", {}).get("seed") for r in rows]
    ids = [str(r.metrics.get("trial_id", i)) for i, r in enumerate(rows)]
    i = best_index(scores, statuses, seeds, ids, mode)
    return None if i is None else searched_params(rows[i].config)


@dataclass
class SweepResult:
    name: str
    storage: Path
    parent_run_id: str
    trials: int
    wall_s: float
    results: list  # one ray.tune.ResultGrid per phase
    counts: dict = field(default_factory=dict)    # ssdlab.status -> trials (MLflow, all launches; ssdlab.counts)
    failures: list = field(default_factory=list)  # (trial id, run name, one-line error) of each failed trial


def _init_ray(address: Optional[str], num_cpus: Optional[int]) -> bool:
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    # No dashboard UI. Ray 2.60's raylet still starts ray::DashboardAgent and ray::RuntimeEnvAgent (it is
    # always handed both commands and fate-shares with them; ray.init has no switch, ray-project/ray#19420).
    # After a SIGKILLed driver they notice the raylet's death within a second, then spend 60 s (a fixed
    # timeout) reporting it to the dead GCS before exiting; they hold no ssdlab files, so --resume is unaffected.
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


def prepare_inputs(spec: SweepSpec, job: TrialJob) -> None:
    """Shared inputs, once, in the driver: the synthetic data set of every arm that asks for one."""
    from ssd_core.synth import ensure_synthetic

    done = set()
    for arm in spec.arm_names or [None]:
        cfg = job.resolve({"ssdlab": {"arm": arm, "seed": spec.file.seeds[0]}})
        s = cfg.data.synthetic
        if s is None:
            continue
        key = (cfg.data.root, json.dumps(s.generator_args(), sort_keys=True))
        if key not in done:
            ensure_synthetic(cfg.data.root, **s.generator_args())
            done.add(key)


class SweepInterrupted(KeyboardInterrupt):
    """Ray Tune stopped before every trial ended (SIGINT/SIGTERM): continue with `--resume`."""


SNAPSHOT = "sweep_snapshot.json"


def _snapshot(spec: SweepSpec) -> dict[str, Any]:
    return {"sweep": spec.file.model_dump(mode="json"), "base": flatten(spec.base)}


def check_snapshot(spec: SweepSpec, storage: Path, resume: bool) -> None:
    """A resumed sweep must train exactly what it started with: the sweep file and the resolved base
    config are recorded at launch, and `--resume` refuses (ConfigError) when either changed."""
    path = storage / SNAPSHOT
    now = _snapshot(spec)
    if resume and path.is_file():
        then = json.loads(path.read_text())
        diff = sorted(k for part in ("sweep", "base") for k in set(then[part]) | set(now[part])
                      if then[part].get(k) != now[part].get(k))
        if diff:
            where = "experiment" if any(k in then["base"] or k in now["base"] for k in diff) else "<sweep>"
            raise ConfigError(f"{spec.path}: {where}: changed since this sweep started ({path}); resuming needs "
                              f"the same sweep and base config; differing keys: {', '.join(diff[:10])}")
        return
    storage.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(now, indent=1, sort_keys=True, default=str))


def _expected_trials(phase: Phase) -> int:
    return phase.num_samples if phase.kind == "search" else len(phase.trials)


NOT_STARTED = "not started"


def phase_states(results, expected: int, planned_epochs: Callable[[dict], int]) -> dict[str, int]:
    """A phase's trials by state, from each trial's own record: failed (an error), finished or
    early_stopped (its last result says done; experiments.sweep.trial_status), running (it reported but
    never ended: a stopped experiment cut it short; Tune calls such a trial TERMINATED too), not started.
    `planned_epochs(config)` is a trial's train.epochs."""
    counts = {Status.FINISHED.value: 0, Status.EARLY_STOPPED.value: 0, Status.FAILED.value: 0,
              Status.RUNNING.value: 0, NOT_STARTED: 0}
    for r in results:
        metrics = r.metrics or {}
        if r.error is not None:
            state = Status.FAILED.value
        elif metrics.get("done"):
            try:
                planned = planned_epochs(r.config)
            except Exception:  # a config that no longer resolves: the trial's own `final` mark decides
                planned = 0
            state = trial_status(metrics, planned).value
        elif metrics:
            state = Status.RUNNING.value
        else:
            state = NOT_STARTED
        counts[state] += 1
    counts[NOT_STARTED] += max(0, expected - len(results))
    return counts


def _ended(counts: dict[str, int]) -> int:
    return counts[Status.FINISHED.value] + counts[Status.EARLY_STOPPED.value] + counts[Status.FAILED.value]


def format_counts(counts: dict[str, int]) -> str:
    """{"finished": 2, "running": 1, ...} -> '2 finished, 1 running' (zeros left out)."""
    return ", ".join(f"{n} {s.replace('_', '-')}" for s, n in counts.items() if n) or "none"


def archive_sweep(spec: SweepSpec, storage: Path) -> Optional[Path]:
    """Move a previous launch's trial state aside (`<name>.<UTC time>`) so the sweep can start afresh,
    and repoint its MLflow parent run's `ssdlab.storage` tag there: the old runs stay in the store,
    complete and findable, and the new launch gets a parent run of its own. Returns the new folder."""
    if not storage.exists():
        return None
    from experiments.tracking import client_for, ensure_store, experiment_id, find_run

    target = storage.with_name(f"{storage.name}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    uri = spec.file.tracking.uri
    ensure_store(uri)
    client = client_for(uri)
    run = find_run(client, experiment_id(client, spec.experiment_name, uri),
                   {Tag.KIND: Kind.SWEEP, Tag.SWEEP: spec.name, Tag.STORAGE: str(storage)})
    storage.rename(target)
    if run is not None:
        client.set_tag(run.info.run_id, Tag.STORAGE, str(target))
    return target


def run_sweep(spec: SweepSpec, train_fn: Optional[Callable] = None, *, address: Optional[str] = None,
              resume: bool = False, storage: str | os.PathLike | None = None,
              num_cpus: Optional[int] = None, restart: bool = False) -> SweepResult:
    """Run (or with `resume`, continue) every phase of `spec`; MLflow gets one parent + one child per trial."""
    from ray import tune

    from experiments.store import check_store
    from experiments.tracking import SweepTracker, ensure_store

    if train_fn is None:
        from ssd_core.train import fit as train_fn
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    start = time.perf_counter()
    check_store(spec.file.tracking.uri, f"{spec.path}: tracking.uri")  # before anything is created
    storage = Path(storage or DEFAULT_STORAGE).resolve() / spec.name
    job = TrialJob(spec=spec, train_fn=train_fn, cwd=os.getcwd(), gpu=spec.file.resources.gpu, storage=str(storage))
    phases = plan(spec)
    if restart and not resume:
        archived = archive_sweep(spec, storage)
        if archived is not None:
            print(f"ssdlab sweep: previous launch of {spec.name!r} moved to {archived}")
    if not resume:
        for ph in phases:
            if tune.Tuner.can_restore(str(storage / ph.dirname)):
                raise ConfigError(f"{spec.path}: name: {storage / ph.dirname} already holds this sweep's "
                                  f"trials; continue it with --resume, or start afresh with --restart (keeps the old runs)")
    check_snapshot(spec, storage, resume)
    prepare_inputs(spec, job)
    f = spec.file
    ensure_store(f.tracking.uri)
    tracker = SweepTracker(f.tracking.uri, spec.experiment_name, spec.name, str(storage),
                           parent_tags=parent_tags(spec), parent_params=parent_params(spec),
                           log_checkpoints=f.tracking.log_checkpoints)
    parent = tracker.start()
    started_ray = _init_ray(address, num_cpus)
    grids, best_by_arm, trials = [], {}, 0
    try:
        for ph in phases:
            callback = make_callback(spec, job, tracker, ph)
            best = best_by_arm.get(ph.arm) if ph.kind == "confirm" else None
            if ph.kind == "confirm" and best is None:
                print(f"sweep {spec.name}: no trial of {ph.dirname.replace('confirm', 'search')} reported "
                      f"{spec.metric}; skipping {ph.dirname}")
                continue
            path = storage / ph.dirname
            if resume and tune.Tuner.can_restore(str(path)):
                tuner = tune.Tuner.restore(str(path), _trainable(job), resume_unfinished=True)
            else:
                tuner = _new_tuner(spec, job, ph, storage, callback, best_params=best)
            grid = tuner.fit()
            grids.append(grid)
            known = [str(r.metrics.get("trial_id")) for r in grid if r.metrics and r.metrics.get("trial_id")]
            tracker.mark_lost(ph.dirname, known)
            trials += len(grid)
            states = phase_states(grid, _expected_trials(ph), lambda config: job.resolve(config).train.epochs)
            if _ended(states) < _expected_trials(ph):
                raise SweepInterrupted(f"sweep {spec.name}: {ph.dirname} stopped with {_ended(states)} of "
                                       f"{_expected_trials(ph)} trials ended ({format_counts(states)}); "
                                       f"continue with --resume")
            if ph.kind == "search":
                best_by_arm[ph.arm] = _best_params(grid, spec.mode)
        counts, failures = tracker.summarize()  # ssdlab.counts (+ ssdlab.error when trials failed)
        tracker.finish(Status.FINISHED)
    except KeyboardInterrupt:
        _summarize_quietly(tracker)
        tracker.finish(Status.KILLED)  # resumable: ssdlab.status stays meaningful, MLflow status KILLED
        raise
    except BaseException:
        _summarize_quietly(tracker)
        tracker.finish(Status.FAILED)
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return SweepResult(spec.name, storage, parent, trials, time.perf_counter() - start, grids,
                       counts=counts, failures=failures)


def _summarize_quietly(tracker) -> None:
    """The parent's counts on the way out of a stopped or broken sweep, never hiding why it stopped."""
    try:
        tracker.summarize()
    except Exception:
        pass
