"""Report tables built from a ``SweepData`` (reports/load.py). Pure functions: no MLflow access.

Only *finished* runs enter the arm means; early-stopped (ASHA), failed, lost and running runs are
counted in their own columns and listed in ``other_runs_table``. Selection and reporting use different
splits: a run's checkpoint and the best trial are chosen by its ``score`` (best ``val/...`` over
epochs); arm means, deltas and per-class AP report ``test/...`` at that checkpoint (``data.value``).
Every table says which split it reports in its footnote.

A ``Table`` (reports/fmt.py) keeps display text (``rows``) and machine values (``raw``, written to CSV) side
by side; reports/render.py turns it into Markdown, CSV, LaTeX or HTML.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from experiments.schema import M, Status, best_index
from reports import budget, stats
from reports.fmt import DASH, Table, col, fduration, fmean, fnum, fp, fparam, metric_label, num, param_value
from reports.load import SweepData, best_run

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


# --------------------------------------------------------------------------- per-arm statistics


def search_runs(data: SweepData) -> pd.DataFrame:
    """The trials of the Optuna search phases (all trials when the store has no phase tags)."""
    runs = data.runs
    search = runs[runs["phase"] == "search"]
    return search if len(search) or not data.searched else runs[runs["phase"] != "confirm"]


def arm_members(data: SweepData) -> pd.DataFrame:
    """The runs that make an arm's result (column ``selected`` marks a search trial used as a seed).

    Grid and confirm runs are members. In a search sweep an arm's configuration is its best search
    trial, retrained with the other seeds by the confirm phase, whose runs name that trial
    (``ssdlab.source_trial``): it is the first seed. An arm with search trials only is its best search
    trial (experiments.schema.best_index).
    """
    runs = data.runs.assign(selected=False)
    if not (runs["phase"] == "search").any():
        return runs
    members = [runs[runs["phase"] != "search"]]
    for arm in data.arms:
        search = runs[(runs["arm"] == arm) & (runs["phase"] == "search") & (runs["status"] == Status.FINISHED.value)]
        if search.empty:
            continue
        sources = runs[(runs["arm"] == arm) & (runs["phase"] == "confirm")]["source_trial"]
        sources = sorted({s for s in sources if s})
        picked = search[search["trial_id"].isin(sources)]
        pick = picked.iloc[0] if len(picked) else best_run(search, data.mode)
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
    fin = runs[runs["status"] == "finished"]
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
        notes = [n for n in r["note"] if n] or ([data.parent_tags.get("ssdlab.note", "")]
                                                 if len(data.arms) == 1 else [])
        iv = _interval(data, f, base) if arm != data.baseline else None
        epochs = num(col(f, "params.train.epochs")).dropna()
        rows.append({
            "arm": arm, "note": notes[0] if notes else "",
            "seeds": sorted(int(s) for s in f["seed"].dropna()),
            "n": ms.n, "mean": ms.mean, "std": ms.std,
            **{s: int((r["status"] == s).sum()) for s in ("finished", "early_stopped", "failed", "running")},
            "no_value": int(f[v].isna().sum()),  # finished, but the reported value is NaN: not averaged
            "delta": delta.delta, "low": delta.low, "high": delta.high, "p": delta.p,
            "pairs": delta.n, "method": delta.method,
            "iv_low": iv.low if iv else math.nan, "iv_high": iv.high if iv else math.nan,
            "iv_p": iv.p if iv else math.nan, "interval": iv,
            "epochs_min": epochs.min() if len(epochs) else math.nan,
            "epochs_max": epochs.max() if len(epochs) else math.nan,
            "selected": int(f["selected"].sum()),
            "device_hours": num(col(r, "metrics.cost/device_hours")).sum(min_count=1),
            "img_s": stats.mean_std(num(col(f, "metrics.perf/train_img_s")).tolist()).mean,
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


def _best_arm_rows(a: pd.DataFrame, mode: str) -> set[int]:
    vals = a["mean"].where(a["n"] > 0)
    if vals.notna().sum() == 0:
        return set()
    best = vals.max() if mode == "max" else vals.min()
    return {i for i, v in enumerate(vals) if v == best}


def _selected_note(a: pd.DataFrame) -> list[str]:
    if not a["selected"].sum():
        return []
    return ["Searched arms: the first seed is the best search trial (picked on the validation "
            "metric, so optimistic); the other seeds retrain that configuration (confirm phase)."]


def _other_counts(row) -> str:
    parts = [f"{row[s]} {s.replace('_', '-')}" for s in ("early_stopped", "failed", "running") if row[s]]
    if row.get("no_value"):
        parts.append(f"{row['no_value']} finished without a value")
    return ", ".join(parts) if parts else DASH


# --------------------------------------------------------------------------- tables


def summary_table(data: SweepData, a: pd.DataFrame | None = None) -> Table:
    """The experiment summary table as the original reproduction kept it: No | mAP | Note."""
    a = arm_stats(data) if a is None else a
    label = value_label(data)
    rows, raw = [], []
    for i, r in a.iterrows():
        ms = stats.MeanStd(r["mean"], r["std"], r["n"])
        note = r["note"] or r["arm"]
        shown = note + (f" ({r['rising']})" if r["rising"] else "")
        rows.append([str(i + 1), r["arm"], fmean(ms), shown])
        raw.append([i + 1, r["arm"], r["mean"], r["std"], r["n"], note, r["rising"]])
    best = _best_arm_rows(a, data.mode)
    t = Table("summary", f"Experiment summary: {data.sweep}", ["No", "Arm", label, "Note"], rows, raw,
              bold={(i, 2) for i in best}, numeric={0, 2})
    t.raw_columns = ["no", "arm", "mean", "std", "n_seeds", "note", "still_rising"]
    t.notes = [score_note(data) + " Best in bold; rows in sweep-file order."] + _selected_note(a)
    t.notes += [n for n in (budget.convergence_note({r["arm"]: r["slope"] for _, r in a.iterrows() if r["slope"]}),)
                if n]
    moved = budget.changes(budget.point_deltas(data, budget.budget_values(data, arm_members(data))))
    t.notes += [f"Δ along the budget: {arm}'s delta changes sign or significance ({text})." for arm, text in moved.items()]
    return t


def _delta_text(delta: float, low: float, high: float, mark: str = "") -> str:
    d = fnum(delta, sign=True)
    if math.isfinite(low):
        d += f" [{fnum(low, sign=True)}, {fnum(high, sign=True)}]"
    return d + mark


def ablation_table(data: SweepData, a: pd.DataFrame | None = None) -> Table:
    """Arm, seeds, mean ± std, the delta vs the baseline with its 95% interval over seeds + test images
    and p (reports.stats.ablation_interval), the paired t over seeds beside it, epochs, cost, speed."""
    a = arm_stats(data) if a is None else a
    label = value_label(data)
    ivs = [iv for iv in a["interval"] if iv is not None] if "interval" in a else []
    cols = ["Arm", "Seeds", label]
    if ivs:
        cols += [f"Δ vs {data.baseline} (95% CI, seeds + test images)", "p"]
    cols += ["Δ 95% CI (seeds, paired t)" if ivs else f"Δ vs {data.baseline} (95% CI, seeds)", "p (t)"]
    rising = bool(a["rising"].astype(bool).any()) if "rising" in a else False
    cols += ["Not averaged", "Epochs", "Device-h", "img/s"] + (["At the end"] if rising else [])
    rows, raw, methods = [], [], set()
    for _, r in a.iterrows():
        ms = stats.MeanStd(r["mean"], r["std"], r["n"])
        if r["method"] == "baseline":
            d, p = "baseline", DASH
        elif r["method"] == "none":
            d, p = DASH, DASH
        else:
            methods.add(r["method"])
            mark = {"welch": " (w)", "single": " (1)"}.get(r["method"], "")
            if ivs and r["method"] == "paired":  # the delta is the combined column's; the t adds its interval
                d = f"[{fnum(r['low'], sign=True)}, {fnum(r['high'], sign=True)}]"
            else:
                d = _delta_text(r["delta"], r["low"], r["high"], mark)
            p = fp(r["p"])
        combined = []
        if ivs:
            iv = r["interval"]
            combined = (["baseline", DASH] if r["method"] == "baseline" else [DASH, DASH] if iv is None else
                        [_delta_text(iv.delta, iv.low, iv.high), fp(iv.p)])
        ep = (DASH if not math.isfinite(r["epochs_min"]) else f"{r['epochs_min']:g}"
              if r["epochs_min"] == r["epochs_max"] else f"{r['epochs_min']:g}-{r['epochs_max']:g}")
        if ivs and r["method"] == "baseline":
            d = DASH  # the combined column says "baseline"
        rows.append([r["arm"], str(r["n"]), fmean(ms)] + combined + [d, p, _other_counts(r), ep,
                     fnum(r["device_hours"], 2), fnum(r["img_s"], 1)] + ([r["rising"] or DASH] if rising else []))
        slope = r["slope"]
        raw.append([r["arm"], r["n"], " ".join(map(str, r["seeds"])), r["mean"], r["std"],
                    r["delta"], r["iv_low"], r["iv_high"], r["iv_p"], r["low"], r["high"], r["p"], r["method"],
                    r["early_stopped"], r["failed"], r["running"], r["epochs_max"], r["device_hours"], r["img_s"],
                    slope.per10 if slope else math.nan, slope.low * budget.PER if slope else math.nan,
                    slope.high * budget.PER if slope else math.nan])
    k = 2 if ivs else 0
    t = Table("ablation", f"Ablation: {data.sweep}", cols, rows, raw,
              bold={(i, 2) for i in _best_arm_rows(a, data.mode)},
              numeric={1, 2, 4 + k, 6 + k, 7 + k, 8 + k} | ({4} if ivs else set()))
    t.raw_columns = ["arm", "n_seeds", "seeds", "mean", "std", "delta", "ci_low", "ci_high", "p",
                     "t_ci_low", "t_ci_high", "t_p", "t_method", "early_stopped", "failed", "running",
                     "epochs", "device_hours", "img_s", "end_slope_per10", "end_slope_low", "end_slope_high"]
    t.notes = [score_note(data)] + _selected_note(a)
    if ivs:
        t.notes.append(stats.interval_footnote(ivs[0]))
    t.notes += [stats.footnote(m) for m in ("paired", "welch", "single") if m in methods]
    if rising:
        t.notes.append(budget.convergence_note({r["arm"]: r["slope"] for _, r in a.iterrows() if r["slope"]}))
    t.notes.append("Seeds: finished runs. Not averaged: early-stopped (ASHA), failed and running "
                   "runs (listed below). Epochs: configured `train.epochs`. Device-h: total "
                   "`cost/device_hours` of all the arm's runs. img/s: mean `perf/train_img_s`.")
    return t


def per_class_table(data: SweepData) -> Table:
    """Per-class AP of the best finished run of each arm (chosen by its score), at its selected
    checkpoint, on the reported split (the selection split when there is no test split)."""
    split = M.TEST if data.has_test else M.VAL
    prefix = "metrics." + M.class_ap50_prefix(split)
    classes = sorted(c[len(prefix):] for c in data.runs.columns if c.startswith(prefix))
    rows, raw, bold, t_runs = [], [], set(), {}
    label = value_label(data)
    members = arm_members(data)
    fin = members[members["status"] == Status.FINISHED.value]
    for arm in data.arms:
        f = fin[fin["arm"] == arm]
        if f.empty:
            continue
        best = best_run(f, data.mode)
        aps = [float(pd.to_numeric(best.get(prefix + c, math.nan), errors="coerce")) for c in classes]
        seed = DASH if not math.isfinite(best["seed"]) else str(int(best["seed"]))
        value = float(best[data.value])
        t_runs[(len(rows), 0)] = best["run_id"]
        rows.append([arm, seed, fnum(value)] + [fnum(v) for v in aps])
        raw.append([arm, best["seed"], best["trial_id"], best["run_id"], best["best_step"], value] + aps)
    for j in range(len(classes) + 1):
        vals = [r[j + 5] for r in raw]
        finite = [v for v in vals if math.isfinite(v)]
        if finite:
            top = max(finite)
            bold |= {(i, j + 2) for i, v in enumerate(vals) if v == top}
    t = Table("per_class", f"Per-class AP@0.5 of the best run of each arm: {data.sweep}",
              ["Arm", "Seed", label] + classes, rows, raw, bold=bold,
              numeric=set(range(1, len(classes) + 3)))
    t.raw_columns = ["arm", "seed", "trial_id", "run_id", "best_epoch", "value"] + classes
    t.runs = t_runs
    t.notes = [f"Best run: the arm's finished run with the best `{data.metric}` score; per-class AP (VOC07 "
               f"11-point, `{M.class_ap50_prefix(split)}<class>`) at its selected checkpoint."]
    return t


def sequential_table(data: SweepData) -> Table | None:
    """Sequential seeding (experiments/sequential.py, the parent's Tag.SEQUENTIAL): per arm the seeds it got,
    why it stopped, and the interval it stopped with, at its look's level; None for a fixed seed list."""
    import json

    from experiments.schema import Tag
    from experiments.sequential import REASONS

    text = data.parent_tags.get(Tag.SEQUENTIAL)
    if not text:
        return None
    try:
        seq = json.loads(text)
    except json.JSONDecodeError:
        return None
    rows, raw = [], []
    for arm in [a for a in data.arms if a in seq.get("arms", {})] + list(seq.get("open", [])):
        d = seq["arms"].get(arm)
        if d is None:  # still open: the sweep was stopped between looks
            rows.append([arm, DASH, "open (the sweep stopped before this arm was decided)", DASH, DASH, DASH])
            raw.append([arm, None, "open", None, None, None, None, None])
            continue
        level = 1 - float(d["level"])
        rows.append([arm, str(d["seeds"]), REASONS.get(d["reason"], d["reason"]), f"{int(d['look']) + 1}",
                     f"{level:.2%}", f"{fnum(d['delta'], sign=True)} [{fnum(d['low'], sign=True)}, "
                                     f"{fnum(d['high'], sign=True)}]"])
        raw.append([arm, d["seeds"], d["reason"], int(d["look"]) + 1, level, d["delta"], d["low"], d["high"]])
    t = Table("sequential", f"Sequential seeding: {data.sweep}",
              ["Arm", "Seeds", "Stopped", "Look", "Level", "Δ at the stop (interval at that level)"], rows, raw,
              numeric={1, 3, 4})
    t.raw_columns = ["arm", "seeds", "reason", "look", "confidence", "delta", "low", "high"]
    fixed = seq["looks"][-1] * len(data.arms)
    used = sum(int(d["seeds"]) for d in seq["arms"].values()) + max(
        (int(d["seeds"]) for d in seq["arms"].values()), default=0)
    t.notes = [f"Seeds were added in waves until each arm's delta against `{data.baseline}` was decided (its "
               f"interval excludes 0){', or narrower than ' + format(seq['width'], 'g') if seq.get('width') else ''}"
               f", up to {seq['looks'][-1]} seeds{'' if not seq.get('max_device_hours') else ', within ' + format(seq['max_device_hours'], 'g') + ' device-hours'}"
               f". Looks at {seq['looks']} seeds; alpha {seq['alpha']:g} spent over them ({seq['spending']}-type), "
               f"so look k's interval is at confidence 1 - alpha_k ({', '.join(f'{1 - a:.2%}' for a in seq['levels'])}): "
               f"the chance of any false decision over all looks stays at most {seq['alpha']:g}. Trained: about "
               f"{used} trials where the fixed design trains {fixed}."]
    return t


OTHER = (Status.EARLY_STOPPED, Status.FAILED, Status.LOST, Status.RUNNING)


def trials_table(data: SweepData) -> Table:
    """Every finished trial averaged into the tables above, one row each (arm order, then seed), its trial
    linking to its MLflow run in the HTML report (`--ui-url`); the others are in other_runs_table."""
    fin = data.finished
    order = {a: i for i, a in enumerate(data.arms)}
    fin = fin.assign(_a=fin["arm"].map(order).fillna(len(order))).sort_values(["_a", "seed", "trial_id"])
    label, value = metric_label(data.metric), value_label(data)
    cost = pd.to_numeric(fin.get("metrics.cost/device_hours", pd.Series(math.nan, index=fin.index)), errors="coerce")
    rows, raw, t_runs = [], [], {}
    for (_, r), hours in zip(fin.iterrows(), cost):
        seed = DASH if not math.isfinite(r["seed"]) else str(int(r["seed"]))
        step = DASH if not math.isfinite(r["best_step"]) else f"{r['best_step']:g}"
        t_runs[(len(rows), 2)] = r["run_id"]
        rows.append([str(r["arm"]), seed, str(r["trial_id"]), fnum(r["score"]), fnum(r[data.value]), step,
                     DASH if not math.isfinite(hours) else f"{hours:.3f}"])
        raw.append([r["arm"], r["seed"], r["trial_id"], r["run_id"], r["score"], r[data.value], r["best_step"], hours])
    t = Table("trials", f"Trials: {data.sweep}", ["Arm", "Seed", "Trial", f"{label} (best)", value, "Best epoch",
                                                 "Device-hours"], rows, raw, numeric={1, 3, 4, 5, 6})
    t.raw_columns = ["arm", "seed", "trial_id", "run_id", "score", "value", "best_epoch", "device_hours"]
    t.runs = t_runs
    return t


def other_runs_table(data: SweepData) -> Table:
    """Runs not averaged into the arm means: early-stopped, failed, lost and running, and finished runs whose
    reported value is NaN (a metric that could not be computed)."""
    runs = data.runs
    unvalued = (runs["status"] == Status.FINISHED.value) & runs[data.value].isna()
    o = runs[(runs["status"] != Status.FINISHED.value) | unvalued].copy()
    o.loc[unvalued[unvalued].index, "error"] = f"finished, but its {data.reported_metric if data.has_test else data.metric} " \
                                               f"is NaN: not averaged"
    label = metric_label(data.metric)
    rows, raw, t_runs = [], [], {}
    for _, r in o.iterrows():
        err = str(r["error"]).strip().splitlines()
        seed = DASH if not math.isfinite(r["seed"]) else str(int(r["seed"]))
        last = DASH if not math.isfinite(r["last_step"]) else f"{r['last_step']:g}"
        t_runs[(len(rows), 2)] = r["run_id"]
        rows.append([r["arm"], seed, str(r["trial_id"]), r["status"], last, fnum(r["score"]),
                     err[-1][:80] if err else ""])
        raw.append([r["arm"], r["seed"], r["trial_id"], r["run_id"], r["status"], r["last_step"],
                    r["score"], err[-1] if err else ""])
    counts = data.runs["status"].value_counts()
    t = Table("other_runs", "Runs not averaged (early-stopped, failed, lost, running, finished without a value)",
              ["Arm", "Seed", "Trial", "Status", "Last epoch", f"best {label} so far", "Error"], rows, raw,
              numeric={1, 4, 5})
    t.raw_columns = ["arm", "seed", "trial_id", "run_id", "status", "last_epoch", "score", "error"]
    t.runs = t_runs
    t.notes = ["Runs: " + ", ".join(f"{int(counts.get(s.value, 0))} {s.value.replace('_', '-')}"
                                    for s in (Status.FINISHED,) + OTHER)
               + f" (total {len(data.runs)})."]
    above = early_stopped_above_best(data)
    if above:
        t.notes.append(f"{len(above)} early-stopped trial(s) ({', '.join(above)}) scored above the best finished "
                       f"trial before being stopped: the scheduler's decision, at a shorter budget, not a result.")
    return t


def early_stopped_above_best(data: SweepData) -> list[str]:
    """Trial ids of early-stopped trials whose best score beats the best finished trial's."""
    runs = data.runs
    fin = runs[runs["status"] == Status.FINISHED.value]
    stopped = runs[runs["status"] == Status.EARLY_STOPPED.value]
    if fin.empty or stopped.empty or not fin["score"].notna().any():
        return []
    top = best_run(fin, data.mode)["score"]
    beats = stopped["score"] > top if data.mode == "max" else stopped["score"] < top
    return sorted(str(t) for t in stopped.loc[beats.fillna(False), "trial_id"])


# --------------------------------------------------------------------------- browsing


RUN_SORTS = ("score", "test", "duration", "start")


def runs_table(runs: pd.DataFrame, sort: str = "score", key_params: list[str] | None = None,
               metric: str = M.map50(M.VAL)) -> Table:
    """A terminal table of runs: sweep, arm, seed, status, every searched param, the score (best `metric`
    over epochs), the reported test value, duration; `*` marks each sweep's best trial (the rule of
    experiments/schema.py, the one `ssdlab report` and the confirm phase use).

    sort: score (default) | test | duration | start | any metric name logged by the runs."""
    from ssd_core.errors import UserError

    if key_params is None:
        keys = set()
        for s in runs["searched"]:
            keys.update(s)
        key_params = sorted(keys)
    r = runs.copy()
    columns = {"score": "score", metric: "score", "test": "reported", M.reported_of(metric): "reported",
               "duration": "duration_s", "start": "start_ms"}
    if sort in columns:
        col = columns[sort]
    elif "metrics." + sort in r:
        col = "metrics." + sort
    else:
        logged = sorted(c[len("metrics."):] for c in r.columns if c.startswith("metrics."))
        raise UserError(f"--sort {sort!r}: not one of {', '.join(RUN_SORTS)} nor a logged metric "
                        f"({', '.join(logged[:12])}{', ...' if len(logged) > 12 else ''})")
    extra = [col] if col.startswith("metrics.") else []  # the metric it sorts by, as a column of its own
    asc = col == "start_ms" or sort.endswith("loss")
    r = r.assign(_k=pd.to_numeric(r[col], errors="coerce") * (1 if asc else -1)).sort_values(
        ["_k", "sweep", "arm", "seed", "trial_id"], na_position="last")
    best_ids = set()
    for _, g in r.groupby(r["sweep"].fillna(""), dropna=False):
        i = best_index(g["score"].tolist(), g["status"].tolist(), g["seed"].tolist(), g["trial_id"].tolist())
        if i is not None:
            best_ids.add(g.iloc[i]["run_id"])
    rows, raw = [], []
    for _, x in r.iterrows():
        seed = DASH if not math.isfinite(x["seed"]) else str(int(x["seed"]))
        dur = DASH if not math.isfinite(x["duration_s"]) else fduration(x["duration_s"])
        vals = [param_value(x.get("params." + k)) for k in key_params]
        best = x["run_id"] in best_ids
        sorted_by = [float(pd.to_numeric(x[c], errors="coerce")) for c in extra]
        rows.append(["*" if best else "", str(x["sweep"] or DASH), str(x["arm"]), seed, str(x["trial_id"]),
                     x["status"]] + [DASH if v is None else fparam(v) for v in vals]
                    + [fnum(x["score"]), fnum(x["reported"])] + [fnum(v, 4) for v in sorted_by]
                    + [dur, str(x["run_id"])[:8]])
        raw.append([best, x["sweep"], x["arm"], x["seed"], x["trial_id"], x["status"]] + vals
                   + [x["score"], x["reported"]] + sorted_by + [x["duration_s"], x["run_id"]])
    n = len(key_params) + 6
    shown = [c[len("metrics."):] + " (latest)" for c in extra]
    t = Table("runs", "Runs", ["Best", "Sweep", "Arm", "Seed", "Trial", "Status"] + key_params
              + [f"{metric_label(metric)} (best)", metric_label(M.reported_of(metric))] + shown + ["Duration", "Run"],
              rows, raw, numeric={3, n, n + 1, n + 2 + len(extra)} | set(range(n + 2, n + 2 + len(extra))))
    t.raw_columns = (["best", "sweep", "arm", "seed", "trial_id", "status"] + key_params
                     + ["score", "reported"] + [c[len("metrics."):] for c in extra] + ["duration_s", "run_id"])
    if sort != "score":
        t.notes = [f"sorted by {sort}"]
    return t


def curves(data: SweepData, key: str) -> pd.DataFrame:
    """Per arm and step: mean, std, n of ``key`` over the arm's finished runs (for plots)."""
    members = arm_members(data)
    fin = members.loc[members["status"] == "finished", ["run_id", "arm"]]
    h = data.history[data.history["key"] == key].merge(fin, on="run_id")
    if h.empty:
        return pd.DataFrame(columns=["arm", "step", "mean", "std", "n"])
    g = h.groupby(["arm", "step"])["value"]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "n": g.size()}).reset_index()
    return out.sort_values(["arm", "step"]).reset_index(drop=True)


__all__ = ["Table", "arm_stats", "summary_table", "ablation_table", "per_class_table",
           "other_runs_table", "runs_table", "curves", "best_run"]
