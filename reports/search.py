"""Report tables of an Optuna search (reports/tables.py has the arm tables): the top trials, the best
configuration as an override block, parameter importances. Pure functions over a SweepData."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from experiments.schema import MAXIMISED, OPTUNA_DIRECTION, Param, SpaceError, Status, Tag, parse_space
from reports.fmt import DASH, Table, fnum, fparam, metric_label, param_value
from reports.load import SweepData
from reports.run_tables import early_stopped_above_best
from reports.selection import best_run, search_runs


def search_table(data: SweepData, top_k: int = 10) -> Table:
    """Top-k finished trials by score (the selection metric) with their searched parameters and, beside
    it, their reported test value (never used for the ranking). A multi-objective search (search.objectives)
    lists its Pareto front first, with each objective's value and a Front column."""
    from reports.deploy import front_flags, objectives

    keys = data.searched
    objs = objectives(data)
    runs = search_runs(data)
    f = runs[runs["status"] == Status.FINISHED.value]
    key = -f["score"]
    f = f.assign(_k=key, _off_front=[not x for x in front_flags(data, f)] if objs else False)
    top = f.sort_values(["_off_front", "_k", "seed", "trial_id"], na_position="last")
    front_n = int((~top["_off_front"]).sum()) if objs else 0
    top = top.head(max(top_k, front_n))
    label = metric_label(data.metric)
    test = [metric_label(data.reported_metric)] if data.has_test else []
    rows, raw, t_runs = [], [], {}
    for i, (_, r) in enumerate(top.iterrows()):
        vals = [param_value(r.get("params." + k)) for k in keys]
        costs = [float(pd.to_numeric(r.get("metrics." + o), errors="coerce")) for o in objs]
        seed = DASH if not math.isfinite(r["seed"]) else str(int(r["seed"]))
        t_runs[(len(rows), 1)] = r["run_id"]
        rows.append([str(i + 1), str(r["trial_id"]), r["arm"], seed]
                    + [fparam(v) for v in vals] + [fnum(r["score"])] + ([fnum(r["reported"])] if test else [])
                    + [fnum(c, 3) for c in costs] + (["" if r["_off_front"] else "yes"] if objs else []))
        raw.append([i + 1, r["trial_id"], r["run_id"], r["arm"], r["seed"]] + vals + [r["score"], r["reported"]]
                   + costs + ([not r["_off_front"]] if objs else []))
    counts = runs["status"].value_counts()
    n = len(keys) + 4
    extra = len(test) + len(objs)
    t = Table("search", f"Search: top {len(rows)} of {len(f)} finished trials: {data.sweep}",
              ["Rank", "Trial", "Arm", "Seed"] + keys + [label] + test + objs + (["Front"] if objs else []), rows, raw,
              bold={(0, n)} if rows and not objs else {(i, n) for i in range(front_n)},
              numeric={0, 3, n} | set(range(n + 1, n + 1 + extra)))
    if len(data.arms) == 1:  # a search without arms: the Arm column says nothing
        t.columns.pop(2)
        t.rows = [r[:2] + r[3:] for r in t.rows]
        t.bold = {(i, j - 1) for i, j in t.bold}
        t.numeric = {j - 1 if j > 2 else j for j in t.numeric}
    t.raw_columns = (["rank", "trial_id", "run_id", "arm", "seed"] + keys + ["score", "reported"] + objs
                     + (["pareto"] if objs else []))
    t.runs = t_runs  # the trial column (it stays column 1 when the Arm column goes)
    t.notes = [f"Trials: {int(counts.get(Status.FINISHED.value, 0))} finished, "
               f"{int(counts.get(Status.EARLY_STOPPED.value, 0))} stopped early by ASHA, "
               f"{int(counts.get(Status.FAILED.value, 0))} failed, {int(counts.get(Status.RUNNING.value, 0))} "
               f"running; only finished trials are ranked, by `{data.metric}` (best over epochs)"
               + (f"; `{data.reported_metric}` is shown, not used." if test else ".")]
    if objs:
        t.notes.append(f"Multi-objective search: `{data.metric}` (max) and "
                       f"{', '.join(f'`{o}` (min)' for o in objs)}, measured at each trial's final epoch. The "
                       f"{front_n} trial(s) of the Pareto front (no other finished trial as good in every objective "
                       f"and better in one) come first, in bold, then the rest by `{data.metric}`.")
    above = early_stopped_above_best(data)
    if above:
        t.notes.append(f"Early-stopped trial(s) {', '.join(above)} scored above rank 1 before ASHA stopped them "
                       f"(see the runs not averaged).")
    return t


def best_override(data: SweepData) -> str:
    """The best finished trial's searched parameters as a YAML override block (nested config)."""
    runs = search_runs(data)
    f = runs[runs["status"] == Status.FINISHED.value]
    if f.empty:
        return ""
    best = best_run(f)
    nested: dict[str, Any] = {}
    flat = []
    for k in data.searched:
        v = param_value(best.get("params." + k))
        if v is None:
            continue
        node = nested
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
        flat.append(f"-o {k}={v}")
    head = (f"# best trial {best['trial_id']} (arm {best['arm']}): {data.metric} = "
            f"{fnum(best['score'], 4)}\n# CLI: ssdlab train CONFIG {' '.join(flat)}\n")
    return head + yaml.safe_dump(nested, sort_keys=True, default_flow_style=False)


def distributions(search_space: dict[str, Any]) -> dict[str, Any]:
    """``ssdlab.search_space`` (the sweep file's space, experiments.schema.parse_space) -> Optuna
    distributions by key; an unreadable stored space gives none."""
    try:
        return {p.key: p.optuna() for p in parse_space(search_space)}
    except SpaceError:
        return {}


def parsed_space(data: SweepData) -> dict[str, Param]:
    """The sweep's recorded search space (``ssdlab.search_space``) as Params by key; an unreadable one gives none."""
    try:
        return {p.key: p for p in parse_space(data.search_space)}
    except SpaceError:
        return {}


MIN_IMPORTANCE_TRIALS = 8  # fewer trials at a common budget make importances noise


@dataclass
class Importances:
    values: dict[str, float]  # parameter -> importance (sums to 1); empty when omitted
    n: int                    # trials they were computed over
    epoch: int | None         # the common budget (epoch) every one of them reached
    reason: str = ""          # why they are omitted, when they are


def _importance_runs(data: SweepData) -> tuple[pd.DataFrame, int | None]:
    """The search trials importances are computed over, each with a comparable ``score``, and the
    common epoch.

    With ASHA most trials stop early, so finished trials alone are too few (a demo sweep finishes one of
    eight). Finished and early-stopped trials are used together, each scored by its best metric up to
    the last epoch that all of them reached (ASHA's first rung), so a long trial is not favoured
    merely for having trained longer. Without early-stopped trials this is the finished trials' score."""
    runs = search_runs(data)
    runs = runs[runs["status"].isin([Status.FINISHED.value, Status.EARLY_STOPPED.value])]
    h = data.history[(data.history["key"] == data.metric) & data.history["run_id"].isin(runs["run_id"])]
    if h.empty:
        return runs, None
    common = int(h.groupby("run_id")["step"].max().min())
    if not (runs["status"] == Status.EARLY_STOPPED.value).any():
        return runs, common
    h = h[h["step"] <= common].groupby("run_id")["value"]
    best = h.max()
    return runs.assign(score=runs["run_id"].map(best).astype(float).fillna(float("nan"))), common


def param_importances(data: SweepData, evaluator: str = "ped-anova",
                      min_trials: int = MIN_IMPORTANCE_TRIALS) -> Importances:
    """Optuna parameter importances over the search trials (see ``_importance_runs``), from an in-memory
    study rebuilt with ``optuna.trial.create_trial``. ``ped-anova`` (Optuna's default, deterministic) or
    ``fanova`` (seeded, needs scikit-learn). Omitted (empty values, with the reason) below `min_trials`
    usable trials or without distributions."""
    import optuna

    space = parsed_space(data)
    if not space:
        return Importances({}, 0, None, "no search space recorded")
    dists = {k: p.optuna() for k, p in space.items()}
    trials = []
    runs, common = _importance_runs(data)
    for _, r in runs.sort_values("trial_id").iterrows():
        if not math.isfinite(r["score"]):
            continue
        try:  # a conditional parameter (`when:`) missing from a trial is left out of that trial
            params = {k: space[k].cast(param_value(r.get("params." + k))) for k in dists
                      if param_value(r.get("params." + k)) is not None}
            trials.append(optuna.trial.create_trial(
                params=params, distributions={k: dists[k] for k in params}, value=float(r["score"])))
        except (ValueError, TypeError):
            continue  # a trial outside the recorded space (edited sweep) is left out
    if len(trials) < min_trials:
        return Importances({}, len(trials), common,
                           f"only {len(trials)} trial(s) share a common budget (epoch {common}); importances "
                           f"need at least {min_trials} to be more than noise")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=OPTUNA_DIRECTION[MAXIMISED])
    study.add_trials(trials)
    if evaluator == "fanova":
        ev = optuna.importance.FanovaImportanceEvaluator(seed=0)
    else:
        ev = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imp = optuna.importance.get_param_importances(study, evaluator=ev)
    return Importances({k: float(imp[k]) for k in sorted(imp, key=lambda k: (-imp[k], k))}, len(trials), common)


def importance_table(imp: Importances, evaluator: str = "ped-anova") -> Table:
    rows = [[k, f"{v:.3f}"] for k, v in imp.values.items()]
    t = Table("importance", f"Parameter importances ({imp.n} trials at epoch {imp.epoch})",
              ["Parameter", "Importance"], rows, [[k, v] for k, v in imp.values.items()], numeric={1})
    t.raw_columns = ["param", "importance"]
    t.notes = [f"`optuna.importance.get_param_importances` ({evaluator}) on an in-memory study "
               f"rebuilt from {imp.n} finished and early-stopped trials, each scored by its best value up to "
               f"epoch {imp.epoch}, the last epoch all of them reached; distributions from `{Tag.SEARCH_SPACE}`; "
               "normalised to sum to 1."]
    return t
