"""Report tables of single runs, built from a ``SweepData`` (reports/load.py): every finished trial the arm
tables average (``trials_table``), the runs they leave out (``other_runs_table``), and the terminal table of
``ssdlab runs`` (``runs_table``). Pure functions: no MLflow access.
"""
from __future__ import annotations

import math

import pandas as pd

from experiments.schema import M, Status, best_index
from reports.fmt import DASH, Table, col_or_nan, fduration, fnum, fparam, metric_label, param_value
from reports.load import SweepData
from reports.selection import best_run, value_label

OTHER = (Status.EARLY_STOPPED, Status.FAILED, Status.LOST, Status.RUNNING)


def trials_table(data: SweepData) -> Table:
    """Every finished trial averaged into the tables above, one row each (arm order, then seed), its trial
    linking to its MLflow run in the HTML report (`--ui-url`); the others are in other_runs_table."""
    fin = data.finished
    order = {a: i for i, a in enumerate(data.arms)}
    fin = fin.assign(_a=fin["arm"].map(order).fillna(len(order))).sort_values(["_a", "seed", "trial_id"])
    label, value = metric_label(data.metric), value_label(data)
    cost = pd.to_numeric(col_or_nan(fin, "metrics." + M.DEVICE_HOURS), errors="coerce")
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
    top = best_run(fin)["score"]
    beats = stopped["score"] > top
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
