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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from typing import Any, Callable, Optional

from experiments.schema import Kind, M, Param, Status, Tag, best_index, parse_space
from experiments.sweep_spec import Phase, SweepSpec, parent_params, parent_tags, plan, wave_phase
from experiments.trial import (META, OBJECTIVE, TrialJob, TrialKey, result_status, run_trial, searched_params,
                              trial_status)
from ssd_core.config import flatten
from ssd_core.errors import ConfigError

DEFAULT_STORAGE = "runs/ray"


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
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=search.seed)
    params = parse_space(search.space)
    axes = {p.key: sorted(set(p.grid()), key=repr) for p in params}
    return optuna.samplers.GridSampler(axes, seed=search.seed)


# --------------------------------------------------------------------------- tuners


def _trainable(job: TrialJob):
    from ray import tune

    res = {"cpu": job.spec.file.resources.cpu, "gpu": job.spec.file.resources.gpu}
    return tune.with_resources(tune.with_parameters(run_trial, job=job), res)


def _new_tuner(spec: SweepSpec, job: TrialJob, phase: Phase, storage: Path, callback, best_params=None,
               study: tuple[Optional[str], str] = (None, "optuna")):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    f = spec.file
    search_alg = scheduler = None
    asha = spec.asha
    if phase.kind == "search":
        meta = dict(phase.trials[0])
        param_space = {META: meta}
        base_flat = flatten(spec.trial_config(phase.arm, meta["seed"]))
        # with search.objectives, Optuna gets [the score, each cost (minimised)] at a trial's end
        metric, mode = ([OBJECTIVE, *f.search.objectives], [spec.mode] + ["min"] * len(f.search.objectives)) \
            if f.search.objectives else (OBJECTIVE, spec.mode)
        url, name = study
        import optuna

        from experiments.study import open_storage
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "A new study created" lines: the terminal is ssdlab's
        search_alg = OptunaSearch(space=DefineByRun(parse_space(f.search.space), base_flat), metric=metric,
                                  mode=mode, sampler=make_sampler(f.search), study_name=name,
                                  storage=open_storage(url, f"{spec.path}: search.storage") if url else None)
        num_samples = phase.num_samples
    else:
        params, source = best_params or ({}, None)
        trials = [{**t, **({"source_trial": source} if source else {})} for t in phase.trials]
        param_space = {META: tune.grid_search(trials), **params}
        num_samples = 1
    if asha is not None and phase.kind != "confirm":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.max_t(phase.arm),
                                  grace_period=asha.grace_period, reduction_factor=asha.reduction_factor)
    tune_config = tune.TuneConfig(metric=OBJECTIVE, mode=spec.mode, search_alg=search_alg, scheduler=scheduler,
                                  num_samples=num_samples, max_concurrent_trials=f.max_concurrent,
                                  reuse_actors=True)
    run_config = tune.RunConfig(
        name=phase.dirname, storage_path=str(storage), verbose=0, stop=DiskFullStop(),
        callbacks=list(callback) if isinstance(callback, (list, tuple)) else [callback],
        failure_config=tune.FailureConfig(max_failures=f.failure.max_failures),
        # Tune deletes a trial's older checkpoints (num_to_keep) as soon as it registers a new one, and saves
        # its experiment state a step later: a driver killed in that window resumes the trial from a
        # deleted checkpoint and it fails, whatever num_to_keep is for epochs shorter than Tune's snapshot
        # period. So Tune deletes none: every checkpoint keeps its marker (Tune never loses the one its last
        # experiment snapshot points at), and the driver strips the weights (last.pt, best.pt) from all but
        # a trial's newest KEEP_STATE checkpoints (MLflowTuneCallback.on_checkpoint -> trial.prune_state);
        # a worker resumes from the newest checkpoint that still has them (trial.restore_newest_state).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None))
    return tune.Tuner(_trainable(job), param_space=param_space, tune_config=tune_config, run_config=run_config)


def _best_params(results, mode: str) -> Optional[tuple[dict[str, Any], str]]:
    """(searched params, trial id) of the phase's best trial (experiments.schema.best_index: finished
    trials only, best score); None when no finished trial has one."""
    rows = [r for r in results if r.metrics]
    scores = [float(r.metrics.get(M.SCORE, r.metrics.get(OBJECTIVE, float("nan")))) for r in rows]
    statuses = [result_status(r).value for r in rows]
    seeds = [r.config.get(META, {}).get("seed") for r in rows]
    ids = [str(r.metrics.get("trial_id", i)) for i, r in enumerate(rows)]
    i = best_index(scores, statuses, seeds, ids, mode)
    return None if i is None else (searched_params(rows[i].config), ids[i])


@dataclass
class SweepResult:
    name: str
    storage: Path | str  # a local folder, or the storage URI
    parent_run_id: str
    trials: int
    wall_s: float
    results: list  # one ray.tune.ResultGrid per phase
    counts: dict = field(default_factory=dict)    # ssdlab.status -> trials (MLflow, all launches; ssdlab.counts)
    failures: list = field(default_factory=list)  # (trial id, run name, one-line error) of each failed trial
    best: dict = field(default_factory=dict)      # the best trial: trial, arm, seed, score, reported, model
    stops: dict = field(default_factory=dict)     # sequential seeding: arm -> (seeds, why it stopped)
    study: Optional[str] = None                   # a search's Optuna storage URL (experiments/study.py)


LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray takes 127.0.0.1 as the node address


def quiet_engines() -> None:
    """The terminal shows ssdlab's own lines (experiments/progress.py), not Ray's and Tune's: Ray logs only
    errors, Tune's loggers are silent (a failed trial's error is ssdlab's to print), and Tune's legacy
    output engine at verbosity 0 prints nothing (its new engine prints an experiment box, a results path and a
    TensorBoard hint whatever the verbosity)."""
    import logging

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    for name, level in (("ray", logging.ERROR), ("ray.tune", logging.CRITICAL), ("ray.train", logging.CRITICAL),
                        ("ray._private.authentication", logging.ERROR)):
        logging.getLogger(name).setLevel(level)


def _init_ray(address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local Ray bound to 127.0.0.1.

    A local Ray listens on loopback only: Ray replaces 127.0.0.1 by the machine's network address unless
    it is told that this is a single-machine Ray (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read by this
    process and by the Ray processes it starts); then its GCS, raylet, agents and workers bind 127.0.0.1.
    Ray's token authentication stays as Ray sets it (on by default for a new local Ray: ~/.ray/auth_token)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    # No dashboard UI. Ray 2.60's raylet still starts ray::DashboardAgent and ray::RuntimeEnvAgent (it is
    # always handed both commands and fate-shares with them; ray.init has no switch, ray-project/ray#19420):
    # on a local Ray they listen on 127.0.0.1 only (the dashboard agent on no port at all).
    # After a SIGKILLed driver they notice the raylet's death within a second, then spend 60 s (a fixed
    # timeout) reporting it to the dead GCS before exiting; they hold no ssdlab files, so --resume is unaffected.
    import logging

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    quiet_engines()
    if address:
        ray.init(address=address, **kwargs)
    else:
        from ray._private import ray_constants

        _saved_mode.append((os.environ.get(LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER))
        os.environ[LOCAL_ONLY_ENV] = "0"          # the raylet, agents and workers this Ray starts
        ray_constants.ENABLE_RAY_CLUSTER = False  # this process (ray was imported before the variable was set)
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    return True


_saved_mode: list = []


def _shutdown_ray() -> None:
    """ray.shutdown() of the Ray this process started, and the cluster mode as it was before."""
    import ray
    from ray._private import ray_constants

    ray.shutdown()
    while _saved_mode:
        env, mode = _saved_mode.pop()
        if env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = env
        ray_constants.ENABLE_RAY_CLUSTER = mode


def prepare_inputs(spec: SweepSpec, job: TrialJob) -> None:
    """Shared inputs, once, in the driver: the synthetic data set of every arm that asks for one."""
    from ssd_core.synth import ensure_synthetic

    done = set()
    for arm in spec.arm_names or [None]:
        cfg = job.config(TrialKey(arm, spec.seeds[0]))
        s = cfg.data.synthetic
        if s is None:
            continue
        key = (cfg.data.root, json.dumps(s.generator_args(), sort_keys=True))
        if key not in done:
            ensure_synthetic(cfg.data.root, **s.generator_args())
            done.add(key)


class SweepInterrupted(KeyboardInterrupt):
    """Ray Tune stopped before every trial ended (SIGINT/SIGTERM): continue with `--resume`."""


def _tolerate_damaged_error_files() -> None:
    """Ray Tune unpickles each failed trial's error file to build its results, and a file cut short (a full
    disk) raises EOFError there, which would end the driver without a summary: read such a file as no
    pickled error (Tune then keeps the error's text)."""
    from ray.tune.experiment.trial import Trial

    if getattr(Trial.get_pickled_error, "_ssdlab", False):
        return
    original = Trial.get_pickled_error

    def get_pickled_error(self):
        try:
            return original(self)
        except (EOFError, OSError, ValueError, TypeError):
            return None

    get_pickled_error._ssdlab = True
    Trial.get_pickled_error = get_pickled_error


try:
    from ray.tune.stopper import Stopper as _Stopper
except ImportError:  # the sweep module is importable without Ray (dry runs)
    _Stopper = object


def _atomic_local_uploads() -> None:
    """Ray Tune copies its experiment state (and each trial's checkpoint) from a staging folder into the
    storage folder file by file, overwriting in place: a disk that fills midway leaves the newest state cut and
    the sweep unresumable. On a local filesystem each file is copied beside its target and renamed over it,
    so a failed copy leaves the previous version whole (object stores write whole objects already)."""
    import fnmatch
    import shutil

    import pyarrow.fs as pafs
    from ray.train._internal import storage as ray_storage

    original = ray_storage._upload_to_fs_path
    if getattr(original, "_ssdlab", False):
        return

    def upload(local_path, fs, fs_path, exclude=None):
        if not isinstance(fs, pafs.LocalFileSystem):
            return original(local_path=local_path, fs=fs, fs_path=fs_path, exclude=exclude)
        src = Path(local_path)
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        for f in files:
            rel = f.name if src.is_file() else f.relative_to(src).as_posix()
            if exclude and any(fnmatch.fnmatch(rel, pattern) for pattern in exclude):
                continue
            dst = Path(fs_path) if src.is_file() else Path(fs_path, rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.ssdlab-upload")
            try:
                shutil.copyfile(f, tmp)
                os.replace(tmp, dst)
            finally:
                tmp.unlink(missing_ok=True)

    upload._ssdlab = True
    ray_storage._upload_to_fs_path = upload


class DiskFullStop(_Stopper):
    """A Tune stopper that ends the experiment once a trial failed because a disk filled (the other trials
    would fail the same way): the driver's MLflow callback records such a failure (callback.DISK_FULL)."""

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        from experiments.callback import DISK_FULL
        return bool(DISK_FULL)


class SweepStopped(RuntimeError):
    """The sweep stopped for a reason the user fixes outside it (a full disk): one line, continue with --resume."""


class DriverLock:
    """One driver per sweep: an exclusive lock (flock) on `.<name>.driver.lock` beside the sweep's storage
    folder, held as long as the driver process lives. The kernel drops it when that process dies, however it
    dies, so a killed driver never leaves the sweep locked. The file names the holder (pid, host, start,
    command) for the message a second driver gets. Storage given as a URI is not locked (no shared flock)."""

    def __init__(self, storage: str, name: str):
        from experiments.storage import local_path

        folder = local_path(storage)
        self.path = None if folder is None else folder.parent / f".{name}.driver.lock"
        self.file = None

    def acquire(self) -> "DriverLock":
        import fcntl
        import socket
        import sys

        from ssd_core.errors import UserError

        if self.path is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                holder = json.loads(f.read() or "{}")
            except ValueError:
                holder = {}
            f.close()
            who = (f"driver pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')}"
                   if holder else "another driver")
            raise UserError(f"{self.path.name[1:-len('.driver.lock')]}: this sweep is already being run by {who} "
                            f"(lock {self.path}): wait for it to end, or stop it (Ctrl-C), then --resume") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "command": " ".join(sys.argv)[:500]}))
        f.flush()
        self.file = f
        return self

    def release(self) -> None:
        if self.file is not None:
            import fcntl

            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def check_free_space(spec: SweepSpec, job: TrialJob, storage: str) -> None:
    """Before a launch: the storage folder must hold the checkpoints of the first phase's trials (each keeps its
    last.pt and best.pt, and Tune's copies of both, to the end); UserError naming the folder and the space
    otherwise. A URI (object storage) is not checked."""
    import shutil

    from experiments.storage import local_path
    from ssd_core.errors import UserError

    folder = local_path(storage)
    if folder is None:
        return
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    # last.pt and best.pt in the run dir, and both again in each of the KEEP_STATE newest Tune checkpoints
    from experiments.trial import KEEP_STATE

    copies = 2 * (1 + KEEP_STATE)
    per_trial = copies * checkpoint_bytes(job.config(TrialKey(spec.arm_names[0] if spec.arm_names else None,
                                                                spec.seeds[0])))
    trials = sum(_expected_trials(ph) for ph in plan(spec))  # every trial keeps its state to the end
    need = trials * per_trial + 20_000_000
    if free < need:
        raise UserError(f"--storage {folder}: {free / 1e6:.0f} MB free where this sweep needs about {need / 1e6:.0f} MB "
                        f"({trials} trials, {per_trial / copies / 1e6:.0f} MB checkpoints each, kept as last.pt, best.pt "
                        f"and Tune's copies of both): free space there or pass --storage elsewhere")


def checkpoint_bytes(cfg) -> int:
    """About the size of one resumable checkpoint of `cfg`'s model: the weights and the optimizer's state
    (SGD momentum: 1 more copy, AdamW: 2), float32."""
    import torch

    from ssd_core.build import build_model

    classes = len(cfg.data.class_names) + 1 if cfg.data.class_names else 21
    try:
        with torch.device("meta"):
            model = build_model(cfg, classes)
        params = sum(p.numel() for p in model.parameters())
    except Exception:  # a model that cannot be built here is the trial's to report
        return 0
    copies = 1 + (2 if cfg.train.optimizer == "adamw" else 1)
    return 4 * params * copies


def check_restorable(path: str) -> None:
    """Before Tuner.restore: Ray Tune writes its experiment state in place, so a full disk can cut the newest
    copy; a damaged copy is moved aside (Tune then resumes from the newest whole one, and each trial from its
    newest checkpoint). SweepStopped, in one line, when none is whole."""
    import glob

    from experiments.storage import local_path

    folder = local_path(path)
    if folder is None:
        return
    states = sorted(glob.glob(str(folder / "experiment_state-*.json")))
    damaged = []
    for state in states:
        try:
            json.loads(Path(state).read_text())
        except (ValueError, OSError):
            damaged.append(state)
    for state in damaged:
        os.replace(state, state + ".damaged")
    if states and len(damaged) == len(states):
        raise SweepStopped(f"cannot resume {folder}: Ray Tune's saved state ({Path(damaged[-1]).name}) is damaged, "
                           f"cut when it was written (a full disk?), and no earlier copy is whole; start afresh with "
                           f"--restart (the runs logged so far stay in MLflow)")


SNAPSHOT = "sweep_snapshot.json"
SEQUENTIAL_STATE = "sequential.json"  # sequential seeding: the looks so far (what Tag.SEQUENTIAL holds)


def _snapshot(spec: SweepSpec) -> dict[str, Any]:
    return {"sweep": spec.file.model_dump(mode="json"), "base": flatten(spec.base)}


def check_snapshot(spec: SweepSpec, storage: str | Path, resume: bool) -> None:
    """A resumed sweep must train exactly what it started with: the sweep file and the resolved base
    config are recorded at launch, and `--resume` refuses (ConfigError) when either changed.
    `storage`: the sweep's folder or URI (experiments.storage)."""
    from experiments import storage as st

    path = st.join(str(storage), SNAPSHOT)
    now = _snapshot(spec)
    if resume and st.exists(path):
        then = json.loads(st.read_text(path))
        diff = sorted(k for part in ("sweep", "base") for k in set(then[part]) | set(now[part])
                      if then[part].get(k) != now[part].get(k))
        if diff:
            where = "experiment" if any(k in then["base"] or k in now["base"] for k in diff) else "<sweep>"
            raise ConfigError(f"{spec.path}: {where}: changed since this sweep started ({path}); resuming needs "
                              f"the same sweep and base config; differing keys: {', '.join(diff[:10])}")
        return
    st.write_text(path, json.dumps(now, indent=1, sort_keys=True, default=str))


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


def archive_sweep(spec: SweepSpec, storage: str | Path) -> Optional[Path | str]:
    """Move a previous launch's trial state aside (`<name>.<UTC time>`) so the sweep can start afresh,
    and repoint its MLflow parent run's `ssdlab.storage` tag there: the old runs stay in the store,
    complete and findable, and the new launch gets a parent run of its own. Returns the new folder
    (a Path; a URI string for remote storage)."""
    from experiments import storage as st

    if not st.exists(str(storage)):
        return None
    from experiments.tracking import client_for, ensure_store, experiment_id, find_run

    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    target = f"{str(storage).rstrip('/')}.{stamp}"
    uri = spec.file.tracking.uri
    ensure_store(uri)
    client = client_for(uri)
    run = find_run(client, experiment_id(client, spec.experiment_name, uri),
                   {Tag.KIND: Kind.SWEEP, Tag.SWEEP: spec.name, Tag.STORAGE: str(storage)})
    st.move(str(storage), target)
    if run is not None:
        client.set_tag(run.info.run_id, Tag.STORAGE, target)
    return target if st.is_uri(target) else Path(target)


def run_sweep(spec: SweepSpec, train_fn: Optional[Callable] = None, *, address: Optional[str] = None,
              resume: bool = False, storage: str | os.PathLike | None = None,
              num_cpus: Optional[int] = None, restart: bool = False, progress: bool = True) -> SweepResult:
    """Run (or with `resume`, continue) every phase of `spec`; MLflow gets one parent + one child per trial."""
    from experiments.storage import sweep_storage
    from experiments.store import check_store

    if train_fn is None:
        from ssd_core.train import fit as train_fn
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    start = time.perf_counter()
    storage = sweep_storage(storage, spec.name, DEFAULT_STORAGE)  # a local folder (resolved) or a URI
    job = TrialJob(spec=spec, train_fn=train_fn, cwd=os.getcwd(), gpu=spec.file.resources.gpu, storage=storage)
    if not resume:
        check_free_space(spec, job, storage)  # before anything is created
    check_store(spec.file.tracking.uri, f"{spec.path}: tracking.uri")
    lock = DriverLock(storage, spec.name).acquire()  # one driver per sweep (a second one is refused)
    try:
        return _run_locked(spec, job, storage, train_fn, address, resume, num_cpus, restart, progress, start)
    finally:
        lock.release()


def _run_locked(spec: SweepSpec, job: TrialJob, storage: str, train_fn, address, resume: bool, num_cpus, restart: bool,
                progress: bool, start: float) -> SweepResult:
    """run_sweep once the sweep's driver lock is held."""
    from ray import tune

    from experiments import storage as st
    from experiments.callback import MLflowTuneCallback
    from experiments.store import patient
    from experiments.progress import ProgressCallback
    from experiments.storage import join, local_path
    from experiments.tracking import SweepTracker, ensure_store

    phases = plan(spec)
    if restart and not resume:
        archived = archive_sweep(spec, storage)
        if archived is not None:
            print(f"ssdlab sweep: previous launch of {spec.name!r} moved to {archived}")
    if not resume:
        for ph in phases:
            if tune.Tuner.can_restore(join(storage, ph.dirname)):
                raise ConfigError(f"{spec.path}: name: {join(storage, ph.dirname)} already holds this sweep's "
                                  f"trials; continue it with --resume, or start afresh with --restart (keeps the old runs)")
    check_snapshot(spec, storage, resume)
    from experiments import study as S
    study_url = S.study_url(spec, storage)  # a search's Optuna study (ssdlab dashboard), never MLflow's database
    prepare_inputs(spec, job)
    f = spec.file
    ensure_store(f.tracking.uri)
    tracker = SweepTracker(f.tracking.uri, spec.experiment_name, spec.name, str(storage),
                           parent_tags=parent_tags(spec), parent_params=parent_params(spec),
                           log_checkpoints=f.tracking.log_checkpoints)
    parent = patient(tracker.start)
    patient(tracker.parent.client.log_artifact, parent, str(spec.path))  # the sweep file, as launched
    started_ray = _init_ray(address, num_cpus)
    import ray

    _tolerate_damaged_error_files()
    _atomic_local_uploads()

    job.driver_node = ray.get_runtime_context().get_node_id()  # its trials keep their run dirs in a local storage
    grids, best_by_arm, trials = [], {}, 0
    waves, outcomes = spec.waves(), {}
    try:
        for ph in phases:  # sequential seeding appends each next wave as it goes
            callback = MLflowTuneCallback(spec, job, tracker, ph)
            best = best_by_arm.get(ph.arm) if ph.kind == "confirm" else None
            if ph.kind == "confirm" and best is None:
                print(f"sweep {spec.name}: no trial of {ph.dirname.replace('confirm', 'search')} reported "
                      f"{spec.metric}; skipping {ph.dirname}")
                continue
            path = join(storage, ph.dirname)
            if resume and tune.Tuner.can_restore(path):
                check_restorable(path)
                # failed trials get another attempt from their newest checkpoint (one stopped by a full disk goes
                # on; one whose loss went non-finite fails again at once: its run dir holds the marker)
                tuner = tune.Tuner.restore(path, _trainable(job), resume_unfinished=True, resume_errored=True)
            else:
                views = [ProgressCallback(ph.dirname, _expected_trials(ph), spec.max_t(ph.arm),
                                          spec.file.max_concurrent or 1)] if progress else []
                tuner = _new_tuner(spec, job, ph, storage, [callback, *views], best_params=best,
                                   study=(study_url, S.study_name(spec.name, ph.dirname, parent)))
            from experiments.callback import DISK_FULL

            DISK_FULL.clear()
            grid = tuner.fit()
            grids.append(grid)
            if DISK_FULL:
                raise SweepStopped(f"sweep {spec.name} stopped: {DISK_FULL[0]}")
            known = [str(r.metrics.get("trial_id")) for r in grid if r.metrics and r.metrics.get("trial_id")]
            patient(tracker.mark_lost, ph.dirname, known)
            trials += len(grid)
            states = phase_states(grid, _expected_trials(ph), lambda config: job.config_of(config).train.epochs)
            if _ended(states) < _expected_trials(ph):
                raise SweepInterrupted(f"sweep {spec.name}: {ph.dirname} stopped with {_ended(states)} of "
                                       f"{_expected_trials(ph)} trials ended ({format_counts(states)}); "
                                       f"continue with --resume")
            if ph.kind == "search":
                best_by_arm[ph.arm] = _best_params(grid, spec.mode)
                _close_search(spec, tracker, storage, ph, study_url, S.study_name(spec.name, ph.dirname, parent),
                              best_by_arm[ph.arm], grid)
            if waves is not None:
                outcomes.update(wave_outcomes(grid, spec))
                k = len(waves.history)
                following = next_wave(waves, k, outcomes)
                patient(tracker.parent.set_tags, {Tag.SEQUENTIAL: json.dumps(waves.summary(), default=float)})
                st.write_text(st.join(storage, SEQUENTIAL_STATE), json.dumps(waves.summary(), indent=1, default=float))
                _print_look(spec, waves, k, following)
                if following:
                    phases.append(wave_phase(k + 1, following))
        counts, failures = patient(tracker.summarize)  # ssdlab.counts (+ ssdlab.error when trials failed)
        try:
            patient(tracker.register_best, spec.metric, spec.mode)  # ssdlab.best_* tags and the model registry
        except Exception as exc:  # the runs are logged: a registry hiccup must not fail the sweep
            print(f"sweep {spec.name}: best trial not registered: {type(exc).__name__}: {exc}")
        patient(tracker.finish, Status.FINISHED)
    except (KeyboardInterrupt, SweepStopped):
        _summarize_quietly(tracker)
        patient(tracker.finish, Status.KILLED, wait_s=60)  # resumable: ssdlab.status kept, MLflow status KILLED
        raise
    except BaseException:
        _summarize_quietly(tracker)
        patient(tracker.finish, Status.FAILED, wait_s=60)
        raise
    finally:
        if started_ray:
            _shutdown_ray()
    return SweepResult(spec.name, local_path(storage) or storage, parent, trials, time.perf_counter() - start, grids,
                       counts=counts, failures=failures, best=_best_of(tracker, spec), study=study_url,
                       stops={a: (d.seeds, d.reason) for a, d in waves.decisions.items()} if waves else {})


def _close_search(spec: SweepSpec, tracker, storage, ph: Phase, url: Optional[str], name: str, best, grid) -> None:
    """A search phase has ended: its study's lost suggestions marked FAIL and labelled for the dashboard, and
    the best trial's overrides written as best_hyperparameters.yaml (the phase folder; the parent's artifacts)."""
    from experiments import storage as st
    from experiments import study as S
    from experiments.store import patient

    S.close_study(url, name)
    S.label_study(url, name, {"sweep": spec.name, "phase": ph.dirname, "mlflow_parent_run": tracker.parent_id,
                              "metric": spec.metric, "mode": spec.mode})
    if best is None:
        return
    params, trial = best
    score = next((r.metrics.get(M.SCORE) for r in grid if r.metrics and str(r.metrics.get("trial_id")) == trial),
                 None)
    text = S.best_hyperparameters(params, sweep=spec.name, phase=ph.dirname, trial=trial,
                                  score=None if score is None else float(score), metric=spec.metric)
    st.write_text(st.join(storage, ph.dirname, S.BEST_HYPERPARAMETERS), text)
    where = S.BEST_HYPERPARAMETERS if ph.dirname == "search" else f"{ph.dirname}/{S.BEST_HYPERPARAMETERS}"
    patient(tracker.parent.client.log_text, tracker.parent_id, text, where)


def _best_of(tracker, spec: SweepSpec) -> dict:
    """What the closing line says of the best trial, from the parent run's tags and metrics."""
    try:
        run = tracker.parent.client.get_run(tracker.parent_id)
    except Exception:
        return {}
    tags, metrics = run.data.tags, run.data.metrics
    if Tag.BEST_RUN not in tags:
        return {}
    try:
        best = tracker.parent.client.get_run(tags[Tag.BEST_RUN]).data.tags
    except Exception:
        best = {}
    return {"trial": tags.get(Tag.BEST_TRIAL), "arm": best.get(Tag.ARM), "seed": best.get(Tag.SEED),
            "score": metrics.get(M.SCORE), "reported": metrics.get(M.reported_of(spec.metric)),
            "model": tags.get(Tag.REGISTERED_MODEL)}


def wave_outcomes(grid, spec: SweepSpec) -> dict[tuple[str, int], dict[str, Any]]:
    """(arm, seed) -> {"value": the reported test value (the score without a test split), "hours": device-hours,
    "matches": VOCMatches of its test detections or None} of each finished trial of a wave's ResultGrid."""
    from ssd_core import rundir as RD
    from ssd_core.evaluate import DetectionAccumulator

    reported = M.reported_of(spec.metric)
    out = {}
    for r in grid:
        metrics = r.metrics or {}
        key = TrialKey.of(r.config)
        if result_status(r, spec.trial_config(key.arm, key.seed).train.epochs) is not Status.FINISHED:
            continue  # failed or cut short: its seed is not paired
        value = metrics.get(reported, metrics.get(M.SCORE))
        if value is None:
            continue
        matches = None
        if r.checkpoint is not None:
            try:
                with r.checkpoint.as_directory() as d:
                    path = Path(d) / RD.TEST_DETECTIONS
                    if path.is_file():
                        acc = DetectionAccumulator.load(path)
                        matches = acc.matches()._replace(image_ids=np.asarray(acc.image_keys))
            except Exception:  # no detections: that seed's interval falls back to the paired t
                matches = None
        out[(key.arm, key.seed)] = {"value": float(value), "hours": float(metrics.get(M.DEVICE_HOURS, 0.0)),
                                    "matches": matches}
    return out


def next_wave(waves, k: int, outcomes: dict) -> list[tuple[str, int]]:
    """Look at the deltas after wave k (experiments.sequential.Waves.look) and return wave k + 1's trials."""
    scores = {key: o["value"] for key, o in outcomes.items()}
    matches = {key: o["matches"] for key, o in outcomes.items() if o["matches"] is not None}
    sizes = {len(m.image_ids) for m in matches.values()}
    if len(sizes) != 1:  # detections missing or on different images: the paired t over seeds
        matches, sizes = {}, {0}
    hours = [o["hours"] for o in outcomes.values()]
    plan = waves.plan
    upcoming = (len(waves.open_arms()) + 1) * (plan[k + 1] - plan[k]) if k + 1 < len(plan) else 0
    waves.look(k, scores, matches, sizes.pop(), spent_hours=sum(hours),
               next_hours=upcoming * (sum(hours) / len(hours) if hours else 0.0))
    return waves.wave(k + 1)


def _print_look(spec: SweepSpec, waves, k: int, following: list) -> None:
    from experiments.sequential import REASONS

    parts = []
    for d in waves.history[-1]:
        state = REASONS[d.reason] if d.reason else "open"
        parts.append(f"{d.arm} {d.delta:+.3f} [{d.low:+.3f}, {d.high:+.3f}] ({1 - d.level:.1%} interval): {state}")
    more = (f"wave {k + 2} trains {len(following)} trials (seeds {following[0][1]}-{following[-1][1]})"
            if following else "done")
    print(f"sweep {spec.name}: look {k + 1} of {len(waves.plan)} ({waves.plan[k]} seeds): " + "; ".join(parts)
          + f"; {more}", flush=True)


def _summarize_quietly(tracker) -> None:
    """The parent's counts on the way out of a stopped or broken sweep, never hiding why it stopped."""
    try:
        tracker.summarize()
    except Exception:
        pass
