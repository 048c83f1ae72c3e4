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


def run_sweep(spec: SweepSpec, train_fn: Optional[Callable] = None, *, address: Optional[str] = None,
              resume: bool = False, storage: str | os.PathLike | None = None,
              num_cpus: Optional[int] = None, restart: bool = False, progress: bool = True) -> SweepResult:
    """Run (or with `resume`, continue) every phase of `spec`; MLflow gets one parent + one child per trial."""
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
        return _run_locked(spec, job, storage, train_fn, address, resume, num_cpus, restart, progress, start)
    finally:
        lock.release()


def _run_locked(spec: SweepSpec, job: TrialJob, storage: str, train_fn, address, resume: bool, num_cpus, restart: bool,
                progress: bool, start: float) -> SweepResult:
    """run_sweep once the sweep's driver lock is held."""
    from ray import tune

    from experiments.sweep import storage as st
    from experiments.sweep.callback import MLflowTuneCallback
    from experiments.sweep.progress import ProgressCallback
    from experiments.sweep.storage import join, local_path
    from experiments.tracking.store import ensure_store, patient
    from experiments.tracking.sweep_tracker import SweepTracker

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
    from experiments.sweep import study as S
    study_url = S.study_url(spec, storage)  # a search's Optuna study (ssdlab dashboard), never MLflow's database
    prepare_inputs(spec, job)
    f = spec.file
    ensure_store(f.tracking.uri)
    tracker = SweepTracker(f.tracking.uri, spec.experiment_name, spec.name, str(storage),
                           parent_tags=parent_tags(spec), parent_params=parent_params(spec),
                           log_checkpoints=f.tracking.log_checkpoints)
    parent = patient(tracker.start)
    patient(tracker.parent.client.log_artifact, parent, str(spec.path))  # the sweep file, as launched
    started_ray = init_ray(address, num_cpus)
    import ray

    tolerate_damaged_error_files()
    atomic_local_uploads()

    job.driver_node = ray.get_runtime_context().get_node_id()  # its trials keep their run dirs in a local storage
    grids, best_by_arm, trials = [], {}, 0
    waves, outcomes = spec.waves(), {}
    try:
        for ph in phases:  # sequential seeding appends each next wave as it goes
            callback = MLflowTuneCallback(spec, job, tracker, ph)
            best = best_by_arm.get(ph.arm) if ph.kind == PhaseKind.CONFIRM else None
            if ph.kind == PhaseKind.CONFIRM and best is None:
                print(f"sweep {spec.name}: no trial of {ph.dirname.replace(PhaseKind.CONFIRM, PhaseKind.SEARCH)} reported "
                      f"{spec.metric}; skipping {ph.dirname}")
                continue
            path = join(storage, ph.dirname)
            if resume and tune.Tuner.can_restore(path):
                check_restorable(path)
                # failed trials get another attempt from their newest checkpoint (one stopped by a full disk goes
                # on; one whose loss went non-finite fails again at once: its run dir holds the marker)
                tuner = tune.Tuner.restore(path, trainable(job), resume_unfinished=True, resume_errored=True)
            else:
                views = [ProgressCallback(ph.dirname, expected_trials(ph), spec.max_t(ph.arm),
                                          spec.file.max_concurrent or 1)] if progress else []
                tuner = new_tuner(spec, job, ph, storage, [callback, *views], best_params=best,
                                   study=(study_url, S.study_name(spec.name, ph.dirname, parent)))
            from experiments.sweep.callback import DISK_FULL

            DISK_FULL.clear()
            grid = tuner.fit()
            grids.append(grid)
            if DISK_FULL:
                raise SweepStopped(f"sweep {spec.name} stopped: {DISK_FULL[0]}")
            known = [str(r.metrics.get("trial_id")) for r in grid if r.metrics and r.metrics.get("trial_id")]
            patient(tracker.mark_lost, ph.dirname, known)
            trials += len(grid)
            states = phase_states(grid, expected_trials(ph), lambda config: job.config_of(config).train.epochs)
            if ended_count(states) < expected_trials(ph):
                raise SweepInterrupted(f"sweep {spec.name}: {ph.dirname} stopped with {ended_count(states)} of "
                                       f"{expected_trials(ph)} trials ended ({format_counts(states)}); "
                                       f"continue with --resume")
            if ph.kind == PhaseKind.SEARCH:
                best_by_arm[ph.arm] = best_params(grid)
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
        best = None
        try:
            best = patient(tracker.register_best, spec.metric)  # ssdlab.best_* tags and the model registry
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
            shutdown_ray()
    return SweepResult(spec.name, local_path(storage) or storage, parent, trials, time.perf_counter() - start, grids,
                       counts=counts, failures=failures, best=best, study=study_url,
                       stops={a: (d.seeds, d.reason) for a, d in waves.decisions.items()} if waves else {})


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


def _summarize_quietly(tracker) -> None:
    """The parent's counts on the way out of a stopped or broken sweep, never hiding why it stopped."""
    try:
        tracker.summarize()
    except Exception:
        pass
