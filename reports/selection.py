"""What a report counts and how it summarises it: the best run, the runs that make each arm's result, and
the per-arm statistics over them. Pure functions of a ``SweepData`` (reports/load.py): no MLflow access.

Only *finished* runs enter the arm means; early-stopped (ASHA), failed, lost and running runs are
counted in their own columns (reports/run_tables.py lists them). Selection and reporting use different
splits: a run's checkpoint and the best trial are chosen by its ``score`` (best ``val/...`` over
epochs); arm means, deltas and per-class AP report ``test/...`` at that checkpoint (``data.value``).
``value_label`` and ``score_note`` say so in every table.
"""
from __future__ import annotations

import math

import pandas as pd

from experiments.schema import COUNTED, BestTrial, M, PhaseKind, Status, Tag, best_index
from reports import budget, stats
from reports.fmt import col_or_nan, metric_label, num
from reports.load import SweepData


def value_label(data: SweepData) -> str:
    """The label of what the arm tables report."""
    return metric_label(data.reported_metric if data.has_test else data.metric)


def score_note(data: SweepData) -> str:
    """The footnote every result table carries: which split selects, which split is reported."""
    sel = (f"Selection: each run's checkpoint is its best `{data.metric}` epoch (the validation split; "
           f"best.pt) and the best trial is the finished trial with the best such score.")
    if data.has_test:
        rep = (f" Reported: `{data.reported_metric}`, the test split scored once at that checkpoint and "
               f"never used to choose anything.")
    else:
        rep = (" No run has a test split (`data.test_sets`), so the values are the selection scores "
               "themselves: optimistic, chosen on the split they are reported on.")
    return sel + rep + " Arm values: mean ± sample std (ddof=1) over the finished seeds."


def best_run(runs: pd.DataFrame) -> pd.Series:
    """The best run of ``runs`` by experiments.schema.best_index (finished, best score, lowest seed,
    lowest trial id); when none qualifies (no finished run), the best score among all of them."""
    statuses = runs["status"].tolist()
    i = best_index(runs["score"].tolist(), statuses, runs["seed"].tolist(), runs["trial_id"].tolist())
    if i is None:
        i = best_index(runs["score"].tolist(), [Status.FINISHED.value] * len(runs), runs["seed"].tolist(),
                       runs["trial_id"].tolist())
    return runs.iloc[0 if i is None else i]


def best_trial(data: SweepData, runs: pd.DataFrame) -> BestTrial:
    """best_run of ``runs`` as the BestTrial a sweep's end hands on (experiments.schema)."""
    r = best_run(runs)
    reported = r["reported"] if data.has_test and math.isfinite(r["reported"]) else None
    return BestTrial(str(r["trial_id"]), str(r["run_id"]), float(r["score"]), arm=r["arm"],
                     seed=int(r["seed"]) if math.isfinite(r["seed"]) else None, reported=reported)


def search_runs(data: SweepData) -> pd.DataFrame:
    """The trials of the Optuna search phases (all trials when the store has no phase tags)."""
    runs = data.runs
    search = runs[runs["phase"] == PhaseKind.SEARCH]
    return search if len(search) or not data.searched else runs[runs["phase"] != PhaseKind.CONFIRM]


def arm_members(data: SweepData) -> pd.DataFrame:
    """The runs that make an arm's result (column ``selected`` marks a search trial used as a seed).

    Grid and confirm runs are members. In a search sweep an arm's configuration is its best search
    trial, retrained with the other seeds by the confirm phase, whose runs name that trial
    (``ssdlab.source_trial``): it is the first seed. An arm with search trials only is its best search
    trial (experiments.schema.best_index).
    """
    runs = data.runs.assign(selected=False)
    if not (runs["phase"] == PhaseKind.SEARCH).any():
        return runs
    members = [runs[runs["phase"] != PhaseKind.SEARCH]]
    for arm in data.arms:
        search = runs[(runs["arm"] == arm) & (runs["phase"] == PhaseKind.SEARCH) & (runs["status"] == Status.FINISHED.value)]
        if search.empty:
            continue
        sources = runs[(runs["arm"] == arm) & (runs["phase"] == PhaseKind.CONFIRM)]["source_trial"]
        sources = sorted({s for s in sources if s})
        picked = search[search["trial_id"].isin(sources)]
        pick = picked.iloc[0] if len(picked) else best_run(search)
        members.append(pick.to_frame().T.assign(selected=True))
    out = pd.concat(members)
    out["seed"] = pd.to_numeric(out["seed"], errors="coerce")
    for c in ("score", "final", "reported", "reported_last", "best_step", "last_step", "duration_s",
              "start_ms", "end_ms"):
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out.sort_index()



def arm_stats(data: SweepData) -> pd.DataFrame:
    """One row per arm (sweep-file order): counts per status, mean/std over finished seeds, delta
    against the baseline arm (reports/stats.py), epochs, device-hours, images/s."""
    runs = arm_members(data)
    slopes = budget.convergence(data, runs)
    fin = runs[runs["status"] == Status.FINISHED.value]
    base = fin[fin["arm"] == data.baseline]
    v = data.value
    base_by_seed = dict(zip(base["seed"], base[v]))
    rows = []
    for arm in data.arms:
        r = runs[runs["arm"] == arm]
        f = fin[fin["arm"] == arm]
        ms = stats.mean_std(f[v].tolist())
        delta = (stats.paired_delta(dict(zip(f["seed"], f[v])), base_by_seed)
                 if arm != data.baseline else stats.Delta(*(math.nan,) * 4, 0, "baseline"))
        notes = [n for n in r["note"] if n] or ([data.parent_tags.get(Tag.NOTE, "")]
                                                 if len(data.arms) == 1 else [])
        iv = _interval(data, f, base) if arm != data.baseline else None
        epochs = num(col_or_nan(f, "params.train.epochs")).dropna()
        rows.append({
            "arm": arm, "note": notes[0] if notes else "",
            "seeds": sorted(int(s) for s in f["seed"].dropna()),
            "n": ms.n, "mean": ms.mean, "std": ms.std,
            **{s: int((r["status"] == s).sum()) for s in COUNTED},
            "no_value": int(f[v].isna().sum()),  # finished, but the reported value is NaN: not averaged
            "delta": delta.delta, "low": delta.low, "high": delta.high, "p": delta.p,
            "pairs": delta.n, "method": delta.method,
            "iv_low": iv.low if iv else math.nan, "iv_high": iv.high if iv else math.nan,
            "iv_p": iv.p if iv else math.nan, "interval": iv,
            "epochs_min": epochs.min() if len(epochs) else math.nan,
            "epochs_max": epochs.max() if len(epochs) else math.nan,
            "selected": int(f["selected"].sum()),
            "device_hours": num(col_or_nan(r, "metrics." + M.DEVICE_HOURS)).sum(min_count=1),
            "img_s": stats.mean_std(num(col_or_nan(f, "metrics." + M.TRAIN_IMG_S)).tolist()).mean,
            "slope": slopes.get(arm), "rising": slopes[arm].mark() if arm in slopes else "",
        })
    return pd.DataFrame(rows)


def _interval(data: SweepData, arm: pd.DataFrame, base: pd.DataFrame) -> stats.Interval | None:
    """The arm's delta against the baseline over seeds + test images (reports.stats.ablation_interval), from
    the runs' logged test detections; None when a run lacks them or the runs' test images differ."""
    if not data.has_test or not data.detections:
        return None
    a = {int(s): data.detections.get(r) for s, r in zip(arm["seed"], arm["run_id"]) if math.isfinite(s)}
    b = {int(s): data.detections.get(r) for s, r in zip(base["seed"], base["run_id"]) if math.isfinite(s)}
    shared = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
    if not shared:
        return None
    keys = [tuple(x[s].image_ids) for x in (a, b) for s in shared]
    if len(set(keys)) != 1:
        return None
    metric = data.reported_metric.split("/", 1)[1]
    if metric not in ("mAP50", "mAP50_area"):
        return None
    iv = stats.ablation_interval({s: a[s] for s in shared}, {s: b[s] for s in shared}, len(keys[0]), metric=metric)
    return iv if math.isfinite(iv.delta) else None


def curves(data: SweepData, key: str) -> pd.DataFrame:
    """Per arm and step: mean, std, n of ``key`` over the arm's finished runs (for plots)."""
    members = arm_members(data)
    fin = members.loc[members["status"] == Status.FINISHED.value, ["run_id", "arm"]]
    h = data.history[data.history["key"] == key].merge(fin, on="run_id")
    if h.empty:
        return pd.DataFrame(columns=["arm", "step", "mean", "std", "n"])
    g = h.groupby(["arm", "step"])["value"]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "n": g.size()}).reset_index()
    return out.sort_values(["arm", "step"]).reset_index(drop=True)
