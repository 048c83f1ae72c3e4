"""MLflow -> pandas: everything a report says is read back from the tracking store.

``read_sweep(name)`` finds the sweep's parent run (``ssdlab.kind=sweep``) and its trial runs, as the
frame ``mlflow.search_runs`` returns (run_id, status, start_time, end_time, metrics.*, params.*,
tags.*), then reads the metric histories it needs. ``load_runs()`` does the same for every
trial/train run in the store.

Two read paths give the same frames (tests/integration/test_reports.py checks they are equal):

* the MLflow API: ``mlflow.search_runs`` + ``get_metric_history_bulk`` (one query per metric key)
  or ``MlflowClient.get_metric_history`` per run where the store has no bulk call (a server);
* a fast path for SQL stores (sqlite, postgres, ...): the same rows read with a handful of SELECTs
  through the store's own SQLAlchemy engine, skipping the ORM objects ``search_runs`` builds (for
  1,000 runs x 62 params that is most of a report's time). Any error falls back to the API.

A run's ``score`` is fit's: its best value of the sweep's selection metric (``val/...``) over epochs (the
epoch kept as best.pt; experiments/schema.py), read as the run's latest ``score`` metric, never recomputed;
``best_step`` is the first epoch the selection metric reached it; ``final`` is the last epoch's value. What a table reports is ``reported``: the run's ``test/...`` value, scored
once at that selected checkpoint (``reported_last``: at the final weights). Runs without a test split
report their score, and the tables say so.

A run's artifacts (the test detections read_sweep also loads) come through reports/artifacts.py.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from experiments.schema import FROM_MLFLOW, Artifact, Kind, M, Status, Tag
from experiments.tracking.store import mlflow_client, using_tracking_uri
from reports.artifacts import load_detections
from reports.fmt import col_or_nan, col_or_none, num
from ssd_core.config import DEFAULT_TRACKING_URI
from ssd_core.errors import UserError

DEFAULT_METRIC = M.map50(M.VAL)
_MLFLOW_STATUS = {k: v.value for k, v in FROM_MLFLOW.items()}
_BULK_CHUNK = 500
BULK_HISTORY = True  # False: one get_metric_history call per run (the reference the benchmark beats)
FAST_SQL = True  # False: mlflow.search_runs and the MLflow client only (any store)


@dataclass
class SweepData:
    """One sweep read back from MLflow. ``runs`` has one row per trial (see ``_trial_frame``)."""

    sweep: str
    tracking_uri: str
    parent_id: str | None
    arms: list[str]  # sweep-file order, then arms only seen on children
    baseline: str | None
    search_space: dict[str, Any]
    metric: str  # the selection metric, maximised
    runs: pd.DataFrame
    history: pd.DataFrame  # run_id, key, step, value (sorted)
    parent_tags: dict[str, str] = field(default_factory=dict)
    # run_id -> VOCMatches of its test detections (the logged test_detections.npz), for the intervals
    detections: dict[str, Any] = field(default_factory=dict)
    # (run_id, budget fraction) -> VOCMatches of its test detections at that budget point (eval.test_at)
    budget_detections: dict[tuple[str, float], Any] = field(default_factory=dict)
    # (run_id, artifact path, why) for each logged detections file that could not be read
    unreadable_detections: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == Status.FINISHED.value]

    @property
    def reported_metric(self) -> str:
        """The metric the tables report: the test split's counterpart of the selection metric."""
        return M.reported_of(self.metric)

    @property
    def has_test(self) -> bool:
        """Whether any finished run reports the test split (else the tables fall back to the score)."""
        return bool(self.finished["reported"].notna().any()) if len(self.runs) else False

    @property
    def value(self) -> str:
        """The column arm statistics are computed over: ``reported`` (test), or ``score`` without a test split."""
        return "reported" if self.has_test else "score"

    def unreadable_note(self, budget_points: bool = False) -> str:
        """A table note naming each run whose logged test detections could not be read, and why: at the selected
        checkpoint (the ablation table), or at the budget points (`budget_points`, the budget table). Those runs
        drop out of the seeds + test images intervals; "" when every file was read."""
        where = self.runs.set_index("run_id") if "run_id" in self.runs else pd.DataFrame()
        items = []
        for rid, path, why in self.unreadable_detections:
            if path.startswith(Artifact.BUDGET + "/") != budget_points:
                continue
            who = f"run {rid}"
            if rid in where.index:
                seed = where.at[rid, "seed"]
                who = f"{where.at[rid, 'arm']} seed {int(seed) if pd.notna(seed) else '?'} (run {rid})"
            items.append(f"{who}: `{path}`: {why}")
        if not items:
            return ""
        return ("Unreadable test detections, left out of the seeds + test images intervals (those deltas rest on "
                "the other seeds' detections, or on the paired t alone): " + "; ".join(items) + ".")

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


def list_sweeps(tracking_uri: str | None = None) -> list[str]:
    """Names of the sweeps (parent runs with ``ssdlab.kind=sweep``) in the store, sorted."""
    df = _search(resolve_tracking_uri(tracking_uri), (Tag.KIND, Kind.SWEEP))
    col = "tags." + Tag.SWEEP
    return sorted(set(df[col].dropna())) if col in df else []


def read_sweep(sweep: str, tracking_uri: str | None = None, *, curves: bool = True,
               detections: bool = True) -> SweepData:
    """Read one sweep. Raises UserError naming the sweep, the store and the sweeps found.
    `detections`: also read the finished runs' test detections when the sweep has arms to compare."""
    uri = resolve_tracking_uri(tracking_uri)
    df = _search(uri, (Tag.SWEEP, sweep))
    kind = col_or_none(df, "tags." + Tag.KIND)
    parents = df[kind == Kind.SWEEP]
    if parents.empty and not (kind == Kind.TRIAL).any():
        found = list_sweeps(uri)
        raise UserError(f"sweep {sweep!r} not found in the MLflow store {uri}; sweeps found: "
                        f"{', '.join(found) if found else '(none)'}")
    parent = parents.sort_values(["start_time", "run_id"]).iloc[-1] if len(parents) else None
    ptags = _tags(parent) if parent is not None else {}
    children = df[kind != Kind.SWEEP]
    if parent is not None:  # a sweep launched again under a new storage path: report the latest
        children = children[col_or_none(children, "tags." + Tag.PARENT) == parent["run_id"]]
    metric = ptags.get(Tag.METRIC) or DEFAULT_METRIC
    budget = M.TEST_AT + M.reported_of(metric)[len(M.TEST):]  # test_at/mAP50: the reported metric along the budget
    keys = [metric, budget, M.TEST_AT_FRACTION] + ([M.TRAIN_LOSS] if curves and metric != M.TRAIN_LOSS else [])
    client = mlflow_client(uri)
    history = metric_histories(client, list(children["run_id"]), keys)
    runs = _trial_frame(children, history, metric)
    arms = _arm_order(_json(ptags.get(Tag.ARMS), [], Tag.ARMS, sweep, uri), runs)
    order = {a: i for i, a in enumerate(arms)}
    runs = runs.assign(_o=runs["arm"].map(order)).sort_values(
        ["_o", "seed", "trial_id", "run_id"], na_position="last").drop(columns="_o")
    return SweepData(
        sweep=sweep, tracking_uri=uri,
        parent_id=None if parent is None else parent["run_id"],
        arms=arms, baseline=ptags.get(Tag.BASELINE_ARM) or (arms[0] if arms else None),
        search_space=_json(ptags.get(Tag.SEARCH_SPACE), {}, Tag.SEARCH_SPACE, sweep, uri),
        metric=metric, runs=runs.reset_index(drop=True), history=history,
        parent_tags=ptags, **(load_detections(client, runs[runs["status"] == Status.FINISHED.value]["run_id"].tolist(),
                                              budget=(history["key"] == M.TEST_AT_FRACTION).any())
                              if detections and len(arms) > 1 else {}))


def load_runs(tracking_uri: str | None = None, sweep: str | None = None,
              metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """Every trial/train run in the store (or one sweep's), one row each, best ``metric`` included."""
    uri = resolve_tracking_uri(tracking_uri)
    if sweep is not None:  # a listing needs no detections: nothing is downloaded
        return read_sweep(sweep, uri, curves=False, detections=False).runs
    df = _search(uri)
    df = df[col_or_none(df, "tags." + Tag.KIND) != Kind.SWEEP]
    history = metric_histories(mlflow_client(uri), list(df["run_id"]), [metric])
    return _trial_frame(df, history, metric).sort_values(
        ["sweep", "arm", "seed", "trial_id", "run_id"], na_position="last").reset_index(drop=True)


def _search(uri: str, tag: tuple[str, str] | None = None) -> pd.DataFrame:
    """Active runs of active experiments (those with tag ``tag[0] == tag[1]`` when given), as the
    ``mlflow.search_runs`` pandas frame."""
    if FAST_SQL:
        engine = _sql_engine(uri)
        if engine is not None:
            try:
                return _search_sql(engine, tag)
            except Exception:  # an unexpected schema: the API path below is always right
                pass
    flt = ""
    if tag is not None:
        value = tag[1].replace("'", "\\'")
        flt = f"tags.`{tag[0]}` = '{value}'"
    try:
        with using_tracking_uri(uri):
            return mlflow.search_runs(filter_string=flt, search_all_experiments=True,
                                      output_format="pandas")
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(f"cannot read the MLflow store {uri}: {exc}") from exc


def _sql_engine(uri: str):
    store = getattr(mlflow_client(uri)._tracking_client, "store", None)
    return getattr(store, "engine", None) if type(store).__name__ == "SqlAlchemyStore" else None


def _search_sql(engine, tag: tuple[str, str] | None) -> pd.DataFrame:
    """The fast path of ``_search``: MLflow's runs/tags/params/latest_metrics tables -> one frame."""
    import sqlalchemy as sa

    where = ("r.lifecycle_stage = 'active' AND r.experiment_id IN "
             "(SELECT experiment_id FROM experiments WHERE lifecycle_stage = 'active')")
    args: dict[str, str] = {}
    if tag is not None:
        where += (" AND r.run_uuid IN (SELECT run_uuid FROM tags WHERE key = :tag_key "
                  "AND value = :tag_value)")
        args = {"tag_key": tag[0], "tag_value": tag[1]}
    ids = f"SELECT r.run_uuid FROM runs r WHERE {where}"
    with engine.connect() as con:
        def q(sql: str) -> pd.DataFrame:
            return pd.read_sql(sa.text(sql), con, params=args)

        runs = q(f"SELECT r.run_uuid AS run_id, r.experiment_id, r.status, r.artifact_uri, "
                 f"r.start_time, r.end_time FROM runs r WHERE {where}")
        parts = [
            ("metrics.", q(f"SELECT run_uuid, key, value, is_nan FROM latest_metrics "
                           f"WHERE run_uuid IN ({ids})")),
            ("params.", q(f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({ids})")),
            ("tags.", q(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({ids})")),
        ]
    runs["experiment_id"] = runs["experiment_id"].astype(str)
    for c in ("start_time", "end_time"):
        runs[c] = pd.to_datetime(runs[c], unit="ms", utc=True)
    frames = [runs.set_index("run_id")]
    for prefix, long in parts:
        if "is_nan" in long:
            long["value"] = long["value"].astype(float).where(~long.pop("is_nan").astype(bool))
        wide = long.pivot(index="run_uuid", columns="key", values="value").add_prefix(prefix)
        frames.append(wide.reindex(sorted(wide.columns), axis=1))
    df = pd.concat(frames, axis=1).rename_axis("run_id").reset_index()
    return df.sort_values(["start_time", "run_id"], ascending=[False, True]).reset_index(drop=True)


def metric_histories(client: MlflowClient, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """Histories of ``keys`` for ``run_ids`` as (run_id, key, step, value), sorted; a step logged
    twice (a resumed trial) keeps its latest value."""
    cols = ["run_id", "key", "step", "timestamp", "value"]
    rows: list[tuple[str, str, int, int, float]] = []
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    h = None
    if FAST_SQL and type(store).__name__ == "SqlAlchemyStore" and run_ids and keys:
        try:
            h = _histories_sql(store.engine, run_ids, keys)
        except Exception:  # an unexpected schema: use the MLflow client below
            h = None
    bulk = getattr(store, "get_metric_history_bulk", None) if BULK_HISTORY else None
    for key in keys if h is None else ():
        if bulk is not None:
            for i in range(0, len(run_ids), _BULK_CHUNK):
                chunk = run_ids[i:i + _BULK_CHUNK]
                for m in bulk(chunk, key, max_results=10_000_000):
                    rows.append((m.run_id, key, int(m.step), int(m.timestamp), float(m.value)))
        else:
            for rid in run_ids:
                for mm in client.get_metric_history(rid, key):
                    rows.append((rid, key, int(mm.step), int(mm.timestamp), float(mm.value)))
    h = pd.DataFrame(rows, columns=cols) if h is None else h[cols]
    h = h.sort_values(["run_id", "key", "step", "timestamp", "value"], kind="mergesort")
    h = h.drop_duplicates(["run_id", "key", "step"], keep="last").drop(columns="timestamp")
    return h.reset_index(drop=True)


def _histories_sql(engine, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """The fast path of ``metric_histories``: MLflow's metrics table, a chunk of runs per SELECT."""
    import sqlalchemy as sa

    parts = []
    stmt = sa.text("SELECT run_uuid AS run_id, key, step, timestamp, value, is_nan FROM metrics "
                   "WHERE key IN :keys AND run_uuid IN :ids").bindparams(
        sa.bindparam("keys", expanding=True), sa.bindparam("ids", expanding=True))
    with engine.connect() as con:
        for i in range(0, len(run_ids), _BULK_CHUNK):
            parts.append(pd.read_sql(stmt, con, params={"keys": list(keys),
                                                        "ids": list(run_ids[i:i + _BULK_CHUNK])}))
    h = pd.concat(parts, ignore_index=True)
    h["value"] = h["value"].astype(float).where(~h.pop("is_nan").astype(bool))
    h["step"] = h["step"].astype(int)
    h["timestamp"] = h["timestamp"].astype(int)
    return h


def _trial_frame(df: pd.DataFrame, history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per trial: identity tags, status, score (fit's, as logged), final, reported (the test value
    at the selected checkpoint), timing, params.*, metrics.* (latest values).
    Duplicated trial ids (a restored sweep) keep the newest run."""
    df = df.reset_index(drop=True)
    t = lambda name: col_or_none(df, "tags." + name)  # noqa: E731
    out = pd.DataFrame({
        "run_id": df["run_id"].astype(str),
        "experiment_id": df["experiment_id"].astype(str) if "experiment_id" in df else "0",
        "sweep": t(Tag.SWEEP),
        "arm": t(Tag.ARM).fillna("(none)"),
        "seed": pd.to_numeric(t(Tag.SEED).fillna(col_or_none(df, "params.train.seed")), errors="coerce"),
        "trial_id": t(Tag.TRIAL_ID).fillna(df["run_id"]),
        "note": t(Tag.NOTE).fillna(""),
        "phase": t(Tag.PHASE).fillna(""),  # grid | search | confirm ("" = grid)
        "source_trial": t(Tag.SOURCE_TRIAL).fillna(""),  # confirm runs: the search trial they retrain
        "config_hash": t(Tag.CONFIG_HASH).fillna(""),
        "error": t(Tag.ERROR).fillna(""),
        "status": t(Tag.STATUS).fillna(df["status"].map(_MLFLOW_STATUS)),
        "searched": [tuple(_json(s, [], Tag.SEARCHED, "", "")) if isinstance(s, str) else ()
                     for s in t(Tag.SEARCHED)],
        "start_ms": _ms(df.get("start_time")),
        "end_ms": _ms(df.get("end_time")),
    })
    out["status"] = out["status"].fillna(Status.RUNNING.value).str.lower()
    out["duration_s"] = (out["end_ms"] - out["start_ms"]) / 1000.0
    out.loc[out["status"] == Status.RUNNING.value, "duration_s"] = math.nan
    extra = sorted(c for c in df.columns if c.startswith(("params.", "metrics.")))
    out = pd.concat([out, df[extra]], axis=1)
    latest = lambda name: num(col_or_nan(out, "metrics." + name))  # noqa: E731
    out["score"] = latest(M.SCORE)
    h = history[history["key"] == metric]
    if len(h):
        g = h.groupby("run_id")
        best_step = h[h["value"] == h["run_id"].map(out.set_index("run_id")["score"])].groupby("run_id")["step"].min()
        last = h.loc[g["step"].idxmax()].set_index("run_id")
        out["best_step"] = out["run_id"].map(best_step)
        out["final"] = out["run_id"].map(last["value"])
        out["last_step"] = out["run_id"].map(last["step"])
    else:
        out["final"] = out["best_step"] = out["last_step"] = math.nan
    out["final"] = out["final"].fillna(latest(metric))
    reported = M.reported_of(metric)
    out["reported"] = latest(reported) if reported != metric else math.nan
    out["reported_last"] = latest(M.last_of(reported)) if reported != metric else math.nan
    out["selected_epoch"] = latest(M.TEST_SELECTED)
    out = out.sort_values(["trial_id", "start_ms", "run_id"], kind="mergesort")
    return out.drop_duplicates("trial_id", keep="last").reset_index(drop=True)


def _arm_order(listed: list[str], runs: pd.DataFrame) -> list[str]:
    seen = runs.sort_values(["start_ms", "run_id"])["arm"].tolist()
    arms = [str(a) for a in listed]
    for a in seen:
        if a not in arms:
            arms.append(a)
    return arms


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


