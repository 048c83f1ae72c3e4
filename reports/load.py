"""MLflow -> pandas: everything a report says is read back from the tracking store.

``load_sweep(name)`` finds the sweep's parent run (``ssdlab.kind=sweep``) and its trial runs with one
``mlflow.search_runs`` call, then reads the metric histories it needs in bulk (one query per metric
key on a SQL store; ``MlflowClient.get_metric_history`` per run elsewhere), so a 1,000-run sweep
loads in a second or two. ``load_runs()`` does the same for every trial/train run in the store.

A run's score is its **best** value of the sweep metric over epochs (``ssdlab.mode`` max|min; the
epoch ``best.pt`` is kept for), read from the metric history; ``final`` is the last epoch's value.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from ssd_core.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_METRIC = "val/mAP50"
STATUSES = ("finished", "early_stopped", "failed", "running")
_MLFLOW_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "failed",
                  "RUNNING": "running", "SCHEDULED": "running"}
_BULK_CHUNK = 500
BULK_HISTORY = True  # False: one get_metric_history call per run (the reference the benchmark beats)
CLASS_AP_PREFIX = "val/AP50/"


@dataclass
class SweepData:
    """One sweep read back from MLflow. ``runs`` has one row per trial (see ``_trial_frame``)."""

    sweep: str
    tracking_uri: str
    parent_id: str | None
    arms: list[str]  # sweep-file order, then arms only seen on children
    baseline: str | None
    search_space: dict[str, Any]
    metric: str
    mode: str  # "max" | "min"
    runs: pd.DataFrame
    history: pd.DataFrame  # run_id, key, step, value (sorted)
    parent_tags: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "finished"]

    @property
    def searched(self) -> list[str]:
        """Searched parameter keys: the search space's, else the union of the trials' tags."""
        if self.search_space:
            return sorted(self.search_space)
        keys = set()
        for s in self.runs["searched"]:
            keys.update(s)
        return sorted(keys)


def resolve_tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _search(uri: str, filter_string: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    try:
        df = mlflow.search_runs(filter_string=filter_string, search_all_experiments=True,
                                output_format="pandas")
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(f"cannot read the MLflow store {uri}: {exc}") from exc
    return df


def list_sweeps(tracking_uri: str | None = None) -> list[str]:
    """Names of the sweeps (parent runs with ``ssdlab.kind=sweep``) in the store, sorted."""
    df = _search(resolve_tracking_uri(tracking_uri), "tags.`ssdlab.kind` = 'sweep'")
    col = "tags.ssdlab.sweep"
    return sorted(set(df[col].dropna())) if col in df else []


def load_sweep(sweep: str, tracking_uri: str | None = None, *, curves: bool = True) -> SweepData:
    """Read one sweep. Raises UserError naming the sweep, the store and the sweeps found."""
    uri = resolve_tracking_uri(tracking_uri)
    quoted = sweep.replace("'", "\\'")
    df = _search(uri, f"tags.`ssdlab.sweep` = '{quoted}'")
    kind = _col(df, "tags.ssdlab.kind")
    parents = df[kind == "sweep"]
    if parents.empty and not (kind == "trial").any():
        found = list_sweeps(uri)
        raise UserError(f"sweep {sweep!r} not found in the MLflow store {uri}; sweeps found: "
                        f"{', '.join(found) if found else '(none)'}")
    parent = parents.sort_values(["start_time", "run_id"]).iloc[-1] if len(parents) else None
    ptags = _tags(parent) if parent is not None else {}
    children = df[kind != "sweep"]
    if parent is not None:  # a sweep launched again under a new storage path: report the latest
        children = children[_col(children, "tags.mlflow.parentRunId") == parent["run_id"]]
    metric = ptags.get("ssdlab.metric") or DEFAULT_METRIC
    mode = (ptags.get("ssdlab.mode") or "max").lower()
    if mode not in ("max", "min"):
        raise UserError(f"sweep {sweep!r} in {uri}: tag ssdlab.mode={mode!r} is not max|min")
    keys = [metric] + (["train/loss"] if curves and metric != "train/loss" else [])
    client = MlflowClient(tracking_uri=uri)
    history = metric_histories(client, list(children["run_id"]), keys)
    runs = _trial_frame(children, history, metric, mode)
    arms = _arm_order(_json(ptags.get("ssdlab.arms"), [], "ssdlab.arms", sweep, uri), runs)
    order = {a: i for i, a in enumerate(arms)}
    runs = runs.assign(_o=runs["arm"].map(order)).sort_values(
        ["_o", "seed", "trial_id", "run_id"], na_position="last").drop(columns="_o")
    class_keys = sorted(c[len("metrics."):] for c in runs.columns
                        if c.startswith("metrics." + CLASS_AP_PREFIX))
    fin = runs[runs["status"] == "finished"]
    best_ids = sorted(best_run(g, mode)["run_id"] for _, g in fin.groupby("arm")) if len(fin) else []
    if class_keys and best_ids:
        history = pd.concat([history, metric_histories(client, best_ids, class_keys)],
                            ignore_index=True).sort_values(["run_id", "key", "step"]).reset_index(drop=True)
    return SweepData(
        sweep=sweep, tracking_uri=uri,
        parent_id=None if parent is None else parent["run_id"],
        arms=arms, baseline=ptags.get("ssdlab.baseline_arm") or (arms[0] if arms else None),
        search_space=_json(ptags.get("ssdlab.search_space"), {}, "ssdlab.search_space", sweep, uri),
        metric=metric, mode=mode, runs=runs.reset_index(drop=True), history=history,
        parent_tags=ptags)


def load_runs(tracking_uri: str | None = None, sweep: str | None = None,
              metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """Every trial/train run in the store (or one sweep's), one row each, best ``metric`` included."""
    uri = resolve_tracking_uri(tracking_uri)
    if sweep is not None:
        return load_sweep(sweep, uri, curves=False).runs
    df = _search(uri, "")
    df = df[_col(df, "tags.ssdlab.kind") != "sweep"]
    history = metric_histories(MlflowClient(tracking_uri=uri), list(df["run_id"]), [metric])
    return _trial_frame(df, history, metric, "max").sort_values(
        ["sweep", "arm", "seed", "trial_id", "run_id"], na_position="last").reset_index(drop=True)


def best_run(runs: pd.DataFrame, mode: str) -> pd.Series:
    """The best run by score (``mode`` max|min); ties go to the lowest seed, then trial id."""
    key = runs["score"] if mode == "min" else -runs["score"]
    order = runs.assign(_k=key).sort_values(["_k", "seed", "trial_id"], na_position="last")
    return order.iloc[0].drop("_k")


def metric_histories(client: MlflowClient, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """Histories of ``keys`` for ``run_ids`` as (run_id, key, step, value), sorted; a step logged
    twice (a resumed trial) keeps its latest value."""
    rows: list[tuple[str, str, int, int, float]] = []
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk = getattr(store, "get_metric_history_bulk", None) if BULK_HISTORY else None
    for key in keys:
        if bulk is not None:
            for i in range(0, len(run_ids), _BULK_CHUNK):
                chunk = run_ids[i:i + _BULK_CHUNK]
                for m in bulk(chunk, key, max_results=10_000_000):
                    rows.append((m.run_id, key, int(m.step), int(m.timestamp), float(m.value)))
        else:
            for rid in run_ids:
                for mm in client.get_metric_history(rid, key):
                    rows.append((rid, key, int(mm.step), int(mm.timestamp), float(mm.value)))
    h = pd.DataFrame(rows, columns=["run_id", "key", "step", "timestamp", "value"])
    h = h.sort_values(["run_id", "key", "step", "timestamp", "value"], kind="mergesort")
    h = h.drop_duplicates(["run_id", "key", "step"], keep="last").drop(columns="timestamp")
    return h.reset_index(drop=True)


def _trial_frame(df: pd.DataFrame, history: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """One row per trial: identity tags, status, score (best over epochs), final, timing, params.*,
    metrics.* (latest values). Duplicated trial ids (a restored sweep) keep the newest run."""
    df = df.reset_index(drop=True)
    out = pd.DataFrame({
        "run_id": df["run_id"].astype(str),
        "sweep": _col(df, "tags.ssdlab.sweep"),
        "arm": _col(df, "tags.ssdlab.arm").fillna("(none)"),
        "seed": pd.to_numeric(_col(df, "tags.ssdlab.seed").fillna(_col(df, "params.train.seed")),
                              errors="coerce"),
        "trial_id": _col(df, "tags.ssdlab.trial_id").fillna(df["run_id"]),
        "note": _col(df, "tags.ssdlab.note").fillna(""),
        "phase": _col(df, "tags.ssdlab.phase").fillna(""),  # grid | search | confirm ("" = grid)
        "config_hash": _col(df, "tags.ssdlab.config_hash").fillna(""),
        "error": _col(df, "tags.ssdlab.error").fillna(""),
        "status": _col(df, "tags.ssdlab.status").fillna(df["status"].map(_MLFLOW_STATUS)),
        "searched": [tuple(_json(s, [], "ssdlab.searched", "", "")) if isinstance(s, str) else ()
                     for s in _col(df, "tags.ssdlab.searched")],
        "start_ms": _ms(df.get("start_time")),
        "end_ms": _ms(df.get("end_time")),
    })
    out["status"] = out["status"].fillna("running").str.lower()
    out["duration_s"] = (out["end_ms"] - out["start_ms"]) / 1000.0
    out.loc[out["status"] == "running", "duration_s"] = math.nan
    extra = [c for c in df.columns if c.startswith(("params.", "metrics."))]
    out = pd.concat([out, df[extra]], axis=1)
    h = history[history["key"] == metric]
    latest = out.get("metrics." + metric, pd.Series(math.nan, index=out.index))
    if len(h):
        g = h.groupby("run_id")
        best_idx = g["value"].idxmax() if mode == "max" else g["value"].idxmin()
        best = h.loc[best_idx].set_index("run_id")
        last = h.loc[g["step"].idxmax()].set_index("run_id")
        out["score"] = out["run_id"].map(best["value"])
        out["best_step"] = out["run_id"].map(best["step"])
        out["final"] = out["run_id"].map(last["value"])
        out["last_step"] = out["run_id"].map(last["step"])
    else:
        out["score"] = out["final"] = out["best_step"] = out["last_step"] = math.nan
    out["score"] = out["score"].fillna(latest)
    out["final"] = out["final"].fillna(latest)
    out = out.sort_values(["trial_id", "start_ms", "run_id"], kind="mergesort")
    return out.drop_duplicates("trial_id", keep="last").reset_index(drop=True)


def _arm_order(listed: list[str], runs: pd.DataFrame) -> list[str]:
    seen = runs.sort_values(["start_ms", "run_id"])["arm"].tolist()
    arms = [str(a) for a in listed]
    for a in seen:
        if a not in arms:
            arms.append(a)
    return arms


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    if name in df:
        return df[name].astype(object).where(df[name].notna(), None)
    return pd.Series([None] * len(df), index=df.index, dtype=object)


def _ms(s: pd.Series | None) -> pd.Series:
    if s is None:
        return pd.Series(dtype=float)
    t = pd.to_datetime(s, utc=True)
    ms = (t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    return ms.astype(float).reset_index(drop=True)


def _tags(row: pd.Series) -> dict[str, str]:
    return {k[5:]: v for k, v in row.items() if k.startswith("tags.") and isinstance(v, str)}


def _json(text: str | None, default: Any, key: str, sweep: str, uri: str) -> Any:
    if text is None or text == "":
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"sweep {sweep!r} in {uri}: tag {key} is not valid JSON: {exc}") from exc


def finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating)) and math.isfinite(x)
