"""A phase of a sweep as a Ray Tune Tuner: the Optuna sampler (TPE, random, grid;
define-by-run spaces), ASHA, resources and failure handling, the trainable."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from experiments.schema import MAXIMISED, MINIMISED, M, Param, PhaseKind, best_index, parse_space
from experiments.sweep.guards import DiskFullStop
from experiments.sweep.job import META, OBJECTIVE, TrialJob, searched_params
from experiments.sweep.plan import Phase
from experiments.sweep.spec import GRID_SAMPLER, SAMPLERS, SweepSpec
from experiments.sweep.status import result_status
from experiments.sweep.worker import run_trial
from ssd_core.config import flatten


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
    """The Optuna sampler search.sampler names (experiments.sweep.spec.SAMPLERS), seeded with search.seed."""
    import optuna

    sampler = getattr(optuna.samplers, SAMPLERS[search.sampler])
    if search.sampler != GRID_SAMPLER:
        return sampler(seed=search.seed)
    params = parse_space(search.space)
    axes = {p.key: sorted(set(p.grid()), key=repr) for p in params}
    return sampler(axes, seed=search.seed)


def trainable(job: TrialJob):
    from ray import tune

    res = {"cpu": job.spec.file.resources.cpu, "gpu": job.spec.file.resources.gpu}
    return tune.with_resources(tune.with_parameters(run_trial, job=job), res)


def new_tuner(spec: SweepSpec, job: TrialJob, phase: Phase, storage: Path, callback, best_params=None,
               study: tuple[Optional[str], str] = (None, "optuna")):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    f = spec.file
    search_alg = scheduler = None
    asha = spec.asha
    if phase.kind == PhaseKind.SEARCH:
        meta = dict(phase.trials[0])
        param_space = {META: meta}
        base_flat = flatten(spec.trial_config(phase.arm, meta["seed"]))
        # with search.objectives, Optuna gets [the score, each cost (minimised)] at a trial's end
        metric, mode = ([OBJECTIVE, *f.search.objectives], [MAXIMISED] + [MINIMISED] * len(f.search.objectives)) \
            if f.search.objectives else (OBJECTIVE, MAXIMISED)
        url, name = study
        import optuna

        from experiments.sweep.study import open_storage
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
    if asha is not None and phase.kind != PhaseKind.CONFIRM:
        scheduler = ASHAScheduler(time_attr=M.EPOCH, max_t=spec.max_t(phase.arm),
                                  grace_period=asha.grace_period, reduction_factor=asha.reduction_factor)
    tune_config = tune.TuneConfig(metric=OBJECTIVE, mode=MAXIMISED, search_alg=search_alg, scheduler=scheduler,
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
    return tune.Tuner(trainable(job), param_space=param_space, tune_config=tune_config, run_config=run_config)


def best_params(results) -> Optional[tuple[dict[str, Any], str]]:
    """(searched params, trial id) of the phase's best trial (experiments.schema.best_index: finished
    trials only, best score: fit's `score` in its last result); None when no finished trial has one."""
    rows = [r for r in results if r.metrics]
    scores = [float(r.metrics.get(M.SCORE, float("nan"))) for r in rows]
    statuses = [result_status(r).value for r in rows]
    seeds = [r.config.get(META, {}).get("seed") for r in rows]
    ids = [str(r.metrics.get("trial_id", i)) for i, r in enumerate(rows)]
    i = best_index(scores, statuses, seeds, ids)
    return None if i is None else (searched_params(rows[i].config), ids[i])
