"""The arm tables of a report, built from a ``SweepData`` (reports/load.py) and its per-arm statistics
(reports/selection.py): the summary, the ablation, per-class AP of each arm's best run, and sequential
seeding. Pure functions: no MLflow access. The tables of single runs (trials, runs not averaged, the
``ssdlab runs`` listing) are in reports/run_tables.py.

Only *finished* runs enter the arm means; early-stopped (ASHA), failed, lost and running runs are
counted in their own columns and listed in ``run_tables.other_runs_table``. Selection and reporting use
different splits: a run's checkpoint and the best trial are chosen by its ``score`` (best ``val/...`` over
epochs); arm means, deltas and per-class AP report ``test/...`` at that checkpoint (``data.value``).
Every table says which split it reports in its footnote.

A ``Table`` (reports/fmt.py) keeps display text (``rows``) and machine values (``raw``, written to CSV) side
by side; reports/render.py turns it into Markdown, CSV, LaTeX or HTML.
"""
from __future__ import annotations

import math

import pandas as pd

from experiments.schema import COUNTED, M, Status
from reports import budget, stats
from reports.fmt import DASH, Table, fmean, fnum, fp
from reports.load import SweepData
from reports.selection import arm_members, arm_stats, best_run, score_note, value_label

NOT_AVERAGED = COUNTED[1:]  # early-stopped, failed, running: counted in their own columns, never averaged

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
    best = _best_arm_rows(a)
    t = Table("summary", f"Experiment summary: {data.sweep}", ["No", "Arm", label, "Note"], rows, raw,
              bold={(i, 2) for i in best}, numeric={0, 2})
    t.raw_columns = ["no", "arm", "mean", "std", "n_seeds", "note", "still_rising"]
    t.notes = [score_note(data) + " Best in bold; rows in sweep-file order."] + _selected_note(a)
    t.notes += [n for n in (budget.convergence_note({r["arm"]: r["slope"] for _, r in a.iterrows() if r["slope"]}),)
                if n]
    points = budget.point_deltas(data, budget.budget_values(data, arm_members(data)))
    moved = budget.changes(points)
    t.notes += [f"Δ along the budget: {arm}'s delta changes sign or significance ({text})." for arm, text in moved.items()]
    t.notes += [n for n in (budget.late_note(points),) if n]  # the deltas decided only at the last budget point
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
            if ivs and r["method"] == "paired" and r["interval"] is not None:  # the delta is in the combined
                # column; the t adds its interval (a row without a combined interval keeps its delta here)
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
                    *(r[s] for s in NOT_AVERAGED), r["epochs_max"], r["device_hours"], r["img_s"],
                    slope.per10 if slope else math.nan, slope.low * budget.PER if slope else math.nan,
                    slope.high * budget.PER if slope else math.nan])
    k = 2 if ivs else 0
    t = Table("ablation", f"Ablation: {data.sweep}", cols, rows, raw,
              bold={(i, 2) for i in _best_arm_rows(a)},
              numeric={1, 2, 4 + k, 6 + k, 7 + k, 8 + k} | ({4} if ivs else set()))
    t.raw_columns = ["arm", "n_seeds", "seeds", "mean", "std", "delta", "ci_low", "ci_high", "p",
                     "t_ci_low", "t_ci_high", "t_p", "t_method", *NOT_AVERAGED,
                     "epochs", "device_hours", "img_s", "end_slope_per10", "end_slope_low", "end_slope_high"]
    t.notes = [score_note(data)] + _selected_note(a)
    if ivs:
        t.notes.append(stats.interval_footnote(ivs[0]))
    t.notes += [stats.footnote(m) for m in ("paired", "welch", "single") if m in methods]
    if rising:
        t.notes.append(budget.convergence_note({r["arm"]: r["slope"] for _, r in a.iterrows() if r["slope"]}))
    t.notes.append("Seeds: finished runs. Not averaged: early-stopped (ASHA), failed and running "
                   "runs (listed below). Epochs: configured `train.epochs`. Device-h: total "
                   f"`{M.DEVICE_HOURS}` of all the arm's runs. img/s: mean `{M.TRAIN_IMG_S}`.")
    fewer = [f"{r['arm']} ({r['interval'].n} of {r['pairs']})" for _, r in a.iterrows()
             if r["interval"] is not None and r["interval"].n < r["pairs"]]
    if fewer:
        t.notes.append("Fewer seeds in the seeds + test images interval than in the paired t, where a run's test "
                       "detections are missing or unreadable: " + ", ".join(fewer) + ".")
    without = [r["arm"] for _, r in a.iterrows() if ivs and r["interval"] is None and r["method"] == "paired"]
    if without:
        t.notes.append("No seeds + test images interval for " + ", ".join(without) + ": no seed of the arm and the "
                       "baseline has readable test detections of both on the same test images.")
    if note := data.unreadable_note():
        t.notes.append(note)
    return t


def _best_arm_rows(a: pd.DataFrame) -> set[int]:
    vals = a["mean"].where(a["n"] > 0)
    if vals.notna().sum() == 0:
        return set()
    best = vals.max()
    return {i for i, v in enumerate(vals) if v == best}


def _selected_note(a: pd.DataFrame) -> list[str]:
    if not a["selected"].sum():
        return []
    return ["Searched arms: the first seed is the best search trial (picked on the validation "
            "metric, so optimistic); the other seeds retrain that configuration (confirm phase)."]


def _other_counts(row) -> str:
    parts = [f"{row[s]} {s.replace('_', '-')}" for s in NOT_AVERAGED if row[s]]
    if row.get("no_value"):
        parts.append(f"{row['no_value']} finished without a value")
    return ", ".join(parts) if parts else DASH


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
        best = best_run(f)
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
