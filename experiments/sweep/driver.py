"""Run a sweep: SweepSpec -> Ray Tune experiments (OptunaSearch, ASHA, resources, resume) -> MLflow.

    spec = load_sweep("sweeps/demo.yaml")
    run_sweep(spec)                           # local Ray; address="auto" or "HOST:PORT" for a cluster
    run_sweep(spec, resume=True)              # after the driver died: Tuner.restore(...)

A launch, with the driver lock held, is a short sequence of named steps over one `Launch` (the plan, made
once: by the caller, `ssdlab sweep`, or here):

    _check_launch     --restart moves a previous launch aside; a fresh launch over old state is refused
    _open_tracking    the trials' inputs, the sweep's MLflow parent run, the Optuna study's storage
    _start_ray        local Ray or the cluster's
    _run_phase        each phase a Ray Tune experiment (restored with --resume); _look after a sequential wave
    _close_sweep      counts, the best trial registered, the parent finished (_end_quietly when it stops)

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
  The best trial (SweepTracker.register_best: experiments.schema.best_index over the trials' scores) is
  registered and comes back as `SweepResult.best`, a BestTrial, for the closing lines.

The searcher sees fit's score so far under the internal key `ssdlab_objective` (job.NO_OBJECTIVE before
the first evaluation), so epochs without an evaluation (eval.every_epochs > 1) still carry one. MLflow
only gets metric names with a "/" (train/loss, val/mAP50, ...) and the score, as reported by fit.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from experiments.schema import MAXIMISED, OPTUNA_DIRECTION, BestTrial, M, PhaseKind, Status, Tag
from experiments.sweep.guards import (
    SEQUENTIAL_STATE,
    DriverLock,
    SweepInterrupted,
    SweepStopped,
    archive_sweep,
    check_free_space,
    check_restorable,
    check_snapshot,
    prepare_inputs,
)
from experiments.sweep.job import TrialJob, TrialKey
from experiments.sweep.plan import Phase, parent_params, parent_tags, plan, wave_phase
from experiments.sweep.ray_session import atomic_local_uploads, init_ray, shutdown_ray, tolerate_damaged_error_files
from experiments.sweep.spec import SweepSpec
from experiments.sweep.status import ended_count, expected_trials, format_counts, phase_states, result_status
from experiments.sweep.tuner import best_params, new_tuner, trainable
from ssd_core.errors import ConfigError


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
    best: Optional[BestTrial] = None              # the best trial (registered as `model` when that worked)
    stops: dict = field(default_factory=dict)     # sequential seeding: arm -> (seeds, why it stopped)
    study: Optional[str] = None                   # a search's Optuna storage URL (experiments/sweep/study.py)


def run_sweep(spec: SweepSpec, train_fn: Optional[Callable] = None, *, phases: Optional[list[Phase]] = None,
              address: Optional[str] = None, resume: bool = False, storage: str | os.PathLike | None = None,
              num_cpus: Optional[int] = None, restart: bool = False, progress: bool = True) -> SweepResult:
    """Run (or with `resume`, continue) every phase of `spec`; MLflow gets one parent + one child per trial.
    `phases`: the sweep's plan (experiments.sweep.plan.plan), when the caller has made it already."""
    from experiments.sweep.storage import sweep_storage
    from experiments.tracking.store import check_store

    if train_fn is None:
        from ssd_core.train import fit as train_fn
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    start = time.perf_counter()
    storage = sweep_storage(storage, spec.name)  # a local folder (resolved) or a URI (default: runs/ray/<name>)
    job = TrialJob(spec=spec, train_fn=train_fn, cwd=os.getcwd(), gpu=spec.file.resources.gpu, storage=storage)
    if not resume:
        check_free_space(spec, job, storage)  # before anything is created
    check_store(spec.file.tracking.uri, f"{spec.path}: tracking.uri")
    lock = DriverLock(storage, spec.name).acquire()  # one driver per sweep (a second one is refused)
    try:
        launch = Launch(spec, job, storage, list(plan(spec) if phases is None else phases), resume, progress)
        return _run_locked(launch, address, num_cpus, restart, start)
    finally:
        lock.release()


@dataclass
class Launch:
    """One launch of a sweep as the driver runs it: the plan (sequential seeding appends each next wave as it
    goes), where its state lives, the single MLflow writer and the Optuna study, and what the phases gave."""

    spec: SweepSpec
    job: TrialJob
    storage: str
    phases: list[Phase]
    resume: bool
    progress: bool
    tracker: Any = None                 # experiments.tracking.sweep_tracker.SweepTracker
    parent: Optional[str] = None        # its parent run
    study_url: Optional[str] = None     # a search's Optuna storage (experiments/sweep/study.py)
    grids: list = field(default_factory=list)        # one ray.tune.ResultGrid per phase run
    best_by_arm: dict = field(default_factory=dict)  # arm -> (searched params, trial id) of its search's best
    trials: int = 0
    waves: Any = None                   # experiments.sequential.Waves with sequential seeding
    outcomes: dict = field(default_factory=dict)     # sequential seeding: (arm, seed) -> wave_outcomes' record


def _run_locked(launch: Launch, address, num_cpus, restart: bool, start: float) -> SweepResult:
    """run_sweep once the sweep's driver lock is held: check the launch, open its MLflow parent, start Ray, run
    each phase, close the sweep (counts, the best trial registered); a stopped or broken sweep is marked so."""
    from experiments.sweep.storage import local_path

    _check_launch(launch, restart)
    _open_tracking(launch)
    started_ray = _start_ray(launch.job, address, num_cpus)
    try:
        for ph in launch.phases:  # sequential seeding appends each next wave as it goes
            _run_phase(launch, ph)
        counts, failures, best = _close_sweep(launch)
    except (KeyboardInterrupt, SweepStopped):
        _end_quietly(launch.tracker, Status.KILLED)  # resumable: ssdlab.status kept, MLflow status KILLED
        raise
    except BaseException:
        _end_quietly(launch.tracker, Status.FAILED)
        raise
    finally:
        if started_ray:
            shutdown_ray()
    waves = launch.waves
    return SweepResult(launch.spec.name, local_path(launch.storage) or launch.storage, launch.parent, launch.trials,
                       time.perf_counter() - start, launch.grids, counts=counts, failures=failures, best=best,
                       study=launch.study_url,
                       stops={a: (d.seeds, d.reason) for a, d in waves.decisions.items()} if waves else {})


def _check_launch(launch: Launch, restart: bool) -> None:
    """Before anything is written: --restart moves a previous launch aside; a fresh launch over a previous one's
    state is refused; the state's snapshot must match this sweep (check_snapshot)."""
    from ray import tune

    from experiments.sweep.storage import join

    spec, storage = launch.spec, launch.storage
    if restart and not launch.resume:
        archived = archive_sweep(spec, storage)
        if archived is not None:
            print(f"ssdlab sweep: previous launch of {spec.name!r} moved to {archived}")
    if not launch.resume:
        for ph in launch.phases:
            if tune.Tuner.can_restore(join(storage, ph.dirname)):
                raise ConfigError(f"{spec.path}: name: {join(storage, ph.dirname)} already holds this sweep's "
                                  f"trials; continue it with --resume, or start afresh with --restart (keeps the old runs)")
    check_snapshot(spec, storage, launch.resume)


def _open_tracking(launch: Launch) -> None:
    """The study's storage, the trials' inputs, and the sweep's parent run (found again on a resume), with the
    sweep file as launched among its artifacts."""
    from experiments.sweep import study as S
    from experiments.tracking.store import ensure_store, patient
    from experiments.tracking.sweep_tracker import SweepTracker

    spec, f = launch.spec, launch.spec.file
    launch.study_url = S.study_url(spec, launch.storage)  # a search's Optuna study (ssdlab dashboard), never MLflow's
    prepare_inputs(spec, launch.job)
    ensure_store(f.tracking.uri)
    launch.tracker = SweepTracker(f.tracking.uri, spec.experiment_name, spec.name, str(launch.storage),
                                  parent_tags=parent_tags(spec), parent_params=parent_params(spec),
                                  log_checkpoints=f.tracking.log_checkpoints)
    launch.parent = patient(launch.tracker.start)
    patient(launch.tracker.parent.client.log_artifact, launch.parent, str(spec.path))  # the sweep file, as launched
    launch.waves = spec.waves()


def _start_ray(job: TrialJob, address, num_cpus) -> bool:
    """Ray (local, or the cluster at `address`), made tolerant of damaged error files and partial uploads; the
    driver's node noted (its trials keep their run dirs in a local storage). Whether this call started it."""
    started = init_ray(address, num_cpus)
    import ray

    tolerate_damaged_error_files()
    atomic_local_uploads()
    job.driver_node = ray.get_runtime_context().get_node_id()
    return started


def _run_phase(launch: Launch, ph: Phase) -> None:
    """One phase as a Ray Tune experiment (restored with --resume), then: trials Tune lost marked, the phase
    checked complete, a search's best configuration kept for its confirm phase, a sequential look taken."""
    from ray import tune

    from experiments.sweep import study as S
    from experiments.sweep.callback import DISK_FULL, MLflowTuneCallback
    from experiments.sweep.progress import ProgressCallback
    from experiments.sweep.storage import join
    from experiments.tracking.store import patient

    spec, job, tracker = launch.spec, launch.job, launch.tracker
    best = launch.best_by_arm.get(ph.arm) if ph.kind == PhaseKind.CONFIRM else None
    if ph.kind == PhaseKind.CONFIRM and best is None:
        print(f"sweep {spec.name}: no trial of {ph.dirname.replace(PhaseKind.CONFIRM, PhaseKind.SEARCH)} reported "
              f"{spec.metric}; skipping {ph.dirname}")
        return
    path, study_name = join(launch.storage, ph.dirname), S.study_name(spec.name, ph.dirname, launch.parent)
    if launch.resume and tune.Tuner.can_restore(path):
        check_restorable(path)
        # failed trials get another attempt from their newest checkpoint (one stopped by a full disk goes
        # on; one whose loss went non-finite fails again at once: its run dir holds the marker)
        tuner = tune.Tuner.restore(path, trainable(job), resume_unfinished=True, resume_errored=True)
    else:
        views = [ProgressCallback(ph.dirname, expected_trials(ph), spec.max_t(ph.arm),
                                  spec.file.max_concurrent or 1)] if launch.progress else []
        tuner = new_tuner(spec, job, ph, launch.storage, [MLflowTuneCallback(spec, job, tracker, ph), *views],
                          best_params=best, study=(launch.study_url, study_name))
    DISK_FULL.clear()
    grid = tuner.fit()
    launch.grids.append(grid)
    if DISK_FULL:
        raise SweepStopped(f"sweep {spec.name} stopped: {DISK_FULL[0]}")
    known = [str(r.metrics.get("trial_id")) for r in grid if r.metrics and r.metrics.get("trial_id")]
    patient(tracker.mark_lost, ph.dirname, known)
    launch.trials += len(grid)
    states = phase_states(grid, expected_trials(ph), lambda config: job.config_of(config).train.epochs)
    if ended_count(states) < expected_trials(ph):
        raise SweepInterrupted(f"sweep {spec.name}: {ph.dirname} stopped with {ended_count(states)} of "
                               f"{expected_trials(ph)} trials ended ({format_counts(states)}); "
                               f"continue with --resume")
    if ph.kind == PhaseKind.SEARCH:
        launch.best_by_arm[ph.arm] = best_params(grid)
        _close_search(spec, tracker, launch.storage, ph, launch.study_url, study_name, launch.best_by_arm[ph.arm], grid)
    if launch.waves is not None:
        _look(launch, grid)


def _look(launch: Launch, grid) -> None:
    """Sequential seeding after a wave: the look at the deltas (next_wave), recorded on the parent and in the
    storage, and the next wave appended to the plan when an arm is still open."""
    from experiments.sweep import storage as st
    from experiments.tracking.store import patient

    spec, waves = launch.spec, launch.waves
    launch.outcomes.update(wave_outcomes(grid, spec))
    k = len(waves.history)
    following = next_wave(waves, k, launch.outcomes)
    patient(launch.tracker.parent.set_tags, {Tag.SEQUENTIAL: json.dumps(waves.summary(), default=float)})
    st.write_text(st.join(launch.storage, SEQUENTIAL_STATE), json.dumps(waves.summary(), indent=1, default=float))
    _print_look(spec, waves, k, following)
    failed = sum(1 for r in grid if r.error is not None)
    if following and failed:  # a setup that fails gets no more seeds: more waves would fail the same way
        print(f"sweep {spec.name}: {failed} trial(s) of wave {k + 1} failed: no further wave (their errors are "
              f"printed at the end; fix them and start afresh with --restart)", flush=True)
        return
    if following:
        launch.phases.append(wave_phase(k + 1, following))


def _close_sweep(launch: Launch) -> tuple[dict, list, Optional[BestTrial]]:
    """Every phase ended: the trials counted on the parent (ssdlab.counts, + ssdlab.error when trials failed),
    the best trial tagged and registered (a registry hiccup is printed, never fails the sweep), the parent
    finished. -> (counts, failures, the best trial)."""
    from experiments.tracking.store import patient

    tracker = launch.tracker
    counts, failures = patient(tracker.summarize)
    best = None
    try:
        best = patient(tracker.register_best, launch.spec.metric)  # ssdlab.best_* tags and the model registry
    except Exception as exc:  # the runs are logged: a registry hiccup must not fail the sweep
        print(f"sweep {launch.spec.name}: best trial not registered: {type(exc).__name__}: {exc}")
    patient(tracker.finish, Status.FINISHED)
    return counts, failures, best


def _close_search(spec: SweepSpec, tracker, storage, ph: Phase, url: Optional[str], name: str, best, grid) -> None:
    """A search phase has ended: its study's lost suggestions marked FAIL and labelled for the dashboard, and
    the best trial's overrides written as best_hyperparameters.yaml (the phase folder; the parent's artifacts)."""
    from experiments.sweep import storage as st
    from experiments.sweep import study as S
    from experiments.tracking.store import patient

    S.close_study(url, name)
    S.label_study(url, name, {"sweep": spec.name, "phase": ph.dirname, "mlflow_parent_run": tracker.parent_id,
                              "metric": spec.metric, "direction": OPTUNA_DIRECTION[MAXIMISED]})
    if best is None:
        return
    params, trial = best
    score = next((r.metrics.get(M.SCORE) for r in grid if r.metrics and str(r.metrics.get("trial_id")) == trial),
                 None)
    text = S.best_hyperparameters(params, sweep=spec.name, phase=ph.dirname, trial=trial,
                                  score=None if score is None else float(score), metric=spec.metric)
    st.write_text(st.join(storage, ph.dirname, S.BEST_HYPERPARAMETERS), text)
    where = S.BEST_HYPERPARAMETERS if ph.dirname == PhaseKind.SEARCH else f"{ph.dirname}/{S.BEST_HYPERPARAMETERS}"
    patient(tracker.parent.client.log_text, tracker.parent_id, text, where)


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


def _end_quietly(tracker, status: Status) -> None:
    """The parent's counts and its end (killed: resumable, or failed) on the way out of a stopped or broken
    sweep, never hiding why it stopped."""
    from experiments.tracking.store import patient

    if tracker is None:  # it stopped before the parent run was opened
        return
    try:
        tracker.summarize()
    except Exception:
        pass
    patient(tracker.finish, status, wait_s=60)
