"""Accuracy against speed: the deployment arms of a sweep, from each trial's `deploy/*` metrics.

A trial trained with `deploy.bench: true` (ssd_core.config.DeployConfig) measured its selected checkpoint at
its final epoch (ssd_core.deploy.measure_run): the PyTorch FP32 model, the exported ONNX model with NMS in
its graph, and its INT8 twin, each scored on the same images and timed at batch 1 (ssd_core/metrics.py
names every metric). One row here is one (arm, model) pair over the arm's finished seeds:

* mAP: mean ± std over seeds with a 95% t-interval of the mean; for ONNX / INT8 the paired delta against the
  same runs' PyTorch FP32 mAP (reports/stats.py), so "INT8 costs x points" comes with its interval;
* latency per image (ms, median of the timed runs, pre- + post-processing included) at the trial's threads
  and at one thread, the model file's size, parameters and GFLOPs of the network;
* Pareto: no other row has both a higher mean mAP and a lower mean latency, on the values as shown
  (experiments.schema.pareto_front).

A multi-objective search (search.objectives) marks its trials on the front in the search table
(`front_flags`). Pure functions of a SweepData: no MLflow access.
"""
from __future__ import annotations

import json
import math

import pandas as pd

from experiments.schema import MAXIMISED, MINIMISED, M, Status, Tag, pareto_front
from reports import stats
from reports.fmt import DASH, Table, col_or_nan, fnum, metric_label, num
from reports.load import SweepData
from reports.selection import arm_members

MODELS = {"torch": "PyTorch FP32", "onnx": "ONNX FP32, NMS in the graph", "int8": "ONNX INT8"}


def _metric(runs: pd.DataFrame, name: str) -> pd.Series:
    """The latest value of metric `name` per run (NaN where a run has none)."""
    return num(col_or_nan(runs, "metrics." + name))


def has_deploy(data: SweepData) -> bool:
    """Any finished trial with a deploy/* latency."""
    fin = data.runs[data.runs["status"] == Status.FINISHED.value]
    return bool(_metric(fin, M.DEPLOY_LATENCY).notna().any())


def objectives(data: SweepData) -> list[str]:
    """The search's further objectives (Tag.OBJECTIVES on the parent run), [] for a single-objective sweep."""
    try:
        value = json.loads(data.parent_tags.get(Tag.OBJECTIVES) or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def deploy_rows(data: SweepData) -> pd.DataFrame:
    """One row per (arm, model) with deploy metrics: the statistics the table and the plot show."""
    members = arm_members(data)
    fin = members[members["status"] == Status.FINISHED.value]
    rows = []
    for arm in data.arms:
        runs = fin[fin["arm"] == arm]
        if runs.empty or not _metric(runs, M.DEPLOY_LATENCY).notna().any():
            continue
        seeds = runs["seed"].tolist()
        fp32 = dict(zip(seeds, _metric(runs, M.deploy("mAP50"))))
        for backend in M.DEPLOY_BACKENDS:
            latency = _metric(runs, M.deploy("latency_ms", backend))
            if not latency.notna().any():
                continue
            maps = _metric(runs, M.deploy("mAP50", backend))
            ms = stats.mean_std(maps.tolist())
            low, high = stats.mean_ci(maps.tolist())
            delta = (stats.paired_delta(dict(zip(seeds, maps)), fp32) if backend != "torch"
                     else stats.Delta(*(math.nan,) * 4, 0, "baseline"))
            size = _metric(runs, M.DEPLOY_CHECKPOINT_MB if backend == "torch" else M.deploy("model_mb", backend))
            rows.append({
                "arm": arm, "backend": backend, "model": MODELS[backend], "n": ms.n,
                "map": ms.mean, "map_std": ms.std, "map_low": low, "map_high": high,
                "delta": delta.delta, "delta_low": delta.low, "delta_high": delta.high, "delta_p": delta.p,
                "latency_ms": latency.mean(), "latency_std": latency.std(ddof=1) if latency.count() > 1 else math.nan,
                "latency_1thread_ms": _metric(runs, M.deploy("latency_ms", backend, one_thread=True)).mean(),
                "threads": _metric(runs, M.DEPLOY_THREADS).max(),
                "size_mb": size.mean(), "params": _metric(runs, M.DEPLOY_PARAMS).mean(),
                "gflops": _metric(runs, M.DEPLOY_GFLOPS).mean(),
            })
    out = pd.DataFrame(rows)
    if len(out):
        # on the values as the table shows them: an ONNX model's mAP equals its PyTorch twin's up to a detection
        # at a threshold's rounding edge (1e-6), which must not decide the front
        out["pareto"] = pareto_front(list(zip(out["map"].round(3), out["latency_ms"].round(2))), [MAXIMISED, MINIMISED])
    return out


def accuracy_speed_table(data: SweepData, rows: pd.DataFrame | None = None) -> Table | None:
    """Arm | model | seeds | mAP (95% CI) | Δ vs FP32 | latency | 1 thread | size | params | GFLOPs | Pareto."""
    d = deploy_rows(data) if rows is None else rows
    if d.empty:
        return None
    label = metric_label(M.map50(M.TEST))
    threads = d["threads"].dropna()
    many = len(threads) and threads.max() > 1  # else "all threads" was one: a single latency column
    cols = (["Arm", "Model", "Seeds", f"{label} (95% CI)", "Δ vs FP32 (95% CI)"]
            + ([f"Latency ms ({int(threads.max())} threads)"] if many else []) + ["Latency ms (1 thread)",
               "Size MB", "Params M", "GFLOPs", "Pareto"])
    rows, raw = [], []
    for _, r in d.iterrows():
        m = fnum(r["map"]) + (f" ± {fnum(r['map_std'])}" if math.isfinite(r["map_std"]) else "")
        if math.isfinite(r["map_low"]):
            m += f" [{fnum(r['map_low'])}, {fnum(r['map_high'])}]"
        if r["backend"] == "torch":
            delta = "reference"
        elif math.isfinite(r["delta"]):
            delta = fnum(r["delta"], sign=True) + (f" [{fnum(r['delta_low'], sign=True)}, "
                                                    f"{fnum(r['delta_high'], sign=True)}]"
                                                    if math.isfinite(r["delta_low"]) else "")
        else:
            delta = DASH
        # with one thread "all threads" is one too: show the latency the front is drawn from
        one = r["latency_1thread_ms"] if many and math.isfinite(r["latency_1thread_ms"]) else r["latency_ms"]
        rows.append([r["arm"], r["model"], str(r["n"]), m, delta] + ([fnum(r["latency_ms"], 2)] if many else [])
                    + [fnum(one, 2), fnum(r["size_mb"], 2), fnum(r["params"] / 1e6, 2), fnum(r["gflops"], 2),
                       "yes" if r["pareto"] else ""])
        raw.append([r[k] for k in ("arm", "backend", "n", "map", "map_std", "map_low", "map_high", "delta",
                                   "delta_low", "delta_high", "delta_p", "latency_ms", "latency_1thread_ms",
                                   "threads", "size_mb", "params", "gflops", "pareto")])
    last = len(cols) - 1
    t = Table("accuracy_speed", f"Accuracy against speed: {data.sweep}", cols, rows, raw,
              bold={(i, last) for i, p in enumerate(d["pareto"]) if p}, numeric={2} | set(range(5, last)))
    t.raw_columns = ["arm", "model", "n_seeds", "map", "map_std", "map_ci_low", "map_ci_high", "delta_vs_fp32",
                     "delta_ci_low", "delta_ci_high", "delta_p", "latency_ms", "latency_1thread_ms", "threads",
                     "size_mb", "params", "gflops", "pareto"]
    t.notes = [f"Each model is the run's selected checkpoint, measured at the trial's end (`deploy.bench`): mAP "
               f"on the same images for all three (`{M.deploy('mAP50')}`, `{M.deploy('mAP50', 'onnx')}`, "
               f"`{M.deploy('mAP50', 'int8')}`), mean ± std over finished seeds with a 95% t-interval of the "
               f"mean; Δ vs FP32: paired over seeds against the same runs' PyTorch model. Latency: median per "
               f"image at batch 1 (JPEG decode, resize, network, post-processing), mean over seeds; measured "
               f"in the trial's worker (other trials may have been running: compare within a sweep). Size: "
               f"weights-only checkpoint (PyTorch) or ONNX file. Pareto: no other row has both a higher mean "
               f"mAP and a lower mean latency (as shown: mAP to 3 decimals, latency to 0.01 ms)."]
    return t


def front_flags(data: SweepData, runs: pd.DataFrame) -> list[bool]:
    """For a multi-objective search: which of `runs` (finished trials) are on the Pareto front of their score
    and each objective (experiments.schema.pareto_front); [] when the sweep has one objective."""
    objs = objectives(data)
    if not objs:
        return []
    columns = [pd.to_numeric(runs["score"], errors="coerce")] + [_metric(runs, o) for o in objs]
    return pareto_front(list(zip(*(c.tolist() for c in columns))), [MAXIMISED] + [MINIMISED] * len(objs))
