"""MLflow conventions: one writer per process, idempotent run identity, batched logging.

Names (docs/interfaces.md, "MLflow conventions"): metrics such as `train/loss`, `val/mAP50`,
step = epoch; tags under `ssdlab.*`; child runs carry `mlflow.parentRunId`.

Three pieces:

* `ensure_store(uri)` creates a fresh sqlite store's schema ONCE, under a file lock, before any
  parallel writer opens it (many processes migrating one new sqlite file at once fails).
* `MLflowCallback` is the fit-callback (ssd_core.train.fit) used by `ssdlab train`: one run,
  flattened config as params, metrics per epoch, config + best.pt as artifacts.
* `SweepTracker` is the driver-side single writer of a sweep: one parent run per sweep, one child
  run per trial. Runs are found again by their tags (sweep name + storage path for the parent,
  sweep name + trial id for a child), and a metric step is never logged twice, so a restored
  sweep keeps exactly one run per trial with one continuous history.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

PARAM_MAX_CHARS = 500
_BATCH_METRICS, _BATCH_PARAMS, _BATCH_TAGS = 1000, 100, 100
_READY: set[str] = set()

STATUS_RUNNING, STATUS_FINISHED = "running", "finished"
STATUS_EARLY_STOPPED, STATUS_FAILED = "early_stopped", "failed"
_MLFLOW_STATUS = {
    STATUS_FINISHED: "FINISHED",
    STATUS_EARLY_STOPPED: "FINISHED",  # a legitimate end; `ssdlab.status` tells the difference
    STATUS_FAILED: "FAILED",
    "killed": "KILLED",
}


# --------------------------------------------------------------------------- store


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store live next to the database (`<dir>/mlartifacts`), not in CWD."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / "mlartifacts").as_uri()


def ensure_store(uri: str) -> str:
    """Create the MLflow schema of `uri` once, under a file lock, and return `uri`.

    A fresh sqlite store that many processes open at once fails its alembic migration; calling
    this first (in the one driver, or in every process: the lock serialises them) avoids it.
    Non-sqlite URIs (a tracking server, a directory) need nothing and are returned unchanged.
    """
    if uri in _READY:
        return uri
    db = sqlite_path(uri)
    if db is not None:
        from filelock import FileLock

        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock", timeout=300):
            # Constructing the store runs the migrations when the tables do not exist yet.
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _READY.add(uri)
    return uri


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=ensure_store(uri))


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """Get or create the experiment `name` (race-safe: another writer may create it first)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(uri))
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# --------------------------------------------------------------------------- logging helpers


def _now_ms() -> int:
    return int(time.time() * 1000)


def params_of(flat: Mapping[str, Any]) -> list[Param]:
    """Flattened config -> MLflow params (values as text, at most PARAM_MAX_CHARS characters)."""
    out = []
    for key, value in flat.items():
        text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        out.append(Param(key, text[:PARAM_MAX_CHARS]))
    return out


def metrics_of(metrics: Mapping[str, Any], step: int, timestamp: int | None = None) -> list[Metric]:
    """Numeric entries of `metrics` -> MLflow metrics at `step` (non-numbers are skipped)."""
    ts = timestamp or _now_ms()
    out = []
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy / 0-d tensors
            except (TypeError, ValueError):
                continue
        out.append(Metric(key, float(value), ts, int(step)))
    return out


def log_batch(client: MlflowClient, run_id: str, metrics: Iterable[Metric] = (),
              params: Iterable[Param] = (), tags: Mapping[str, Any] | Iterable[RunTag] = ()) -> None:
    """`MlflowClient.log_batch` in chunks that respect MLflow's per-call limits."""
    metrics, params = list(metrics), list(params)
    if isinstance(tags, Mapping):
        tags = [RunTag(k, str(v)) for k, v in tags.items()]
    tags = list(tags)
    while metrics or params or tags:
        client.log_batch(run_id, metrics=metrics[:_BATCH_METRICS], params=params[:_BATCH_PARAMS],
                         tags=tags[:_BATCH_TAGS])
        metrics, params, tags = metrics[_BATCH_METRICS:], params[_BATCH_PARAMS:], tags[_BATCH_TAGS:]


def _quote(value: str) -> str:
    if "'" in value:
        raise ValueError(f"cannot search MLflow for a tag value with a quote: {value!r}")
    return f"'{value}'"


def find_run(client: MlflowClient, exp_id: str, tags: Mapping[str, str]):
    """The most recent run of `exp_id` whose tags equal `tags`, or None (idempotent identity)."""
    flt = " and ".join(f"tags.`{k}` = {_quote(str(v))}" for k, v in tags.items())
    runs = client.search_runs([exp_id], filter_string=flt, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def last_step(client: MlflowClient, run) -> int:
    """The largest step logged to any metric of `run` (-1 for none)."""
    steps = [-1]
    for key in run.data.metrics:
        steps.extend(m.step for m in client.get_metric_history(run.info.run_id, key))
    return max(steps)


def _log_text_artifact(client: MlflowClient, run_id: str, text: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        client.log_artifact(run_id, str(path))


def config_text(cfg) -> str:
    from ssd_core.config import to_yaml

    return to_yaml(cfg)


def _config_params_and_hash(cfg) -> tuple[list[Param], str]:
    from ssd_core.config import config_hash, flatten

    return params_of(flatten(cfg)), config_hash(cfg)


def _error_text(exc: BaseException | str | None) -> str:
    if exc is None:
        return ""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text.strip()[-4000:]


# --------------------------------------------------------------------------- ssdlab train


class MLflowCallback:
    """Fit callback (ssd_core.train.fit protocol) that logs one training run to MLflow.

    `on_fit_start` starts the run (params = flattened config, tags `ssdlab.kind=train`,
    `ssdlab.config_hash`, `ssdlab.run_dir`), `on_epoch_end` logs the epoch's metrics at
    step=epoch, `on_fit_end` logs `config.yaml` and `best.pt` (if `log_checkpoint`) and ends the run.
    With `resume=True` the run previously logged for the same run dir is continued: steps that are
    already logged are skipped, so the history stays continuous. `on_fit_error(exc)` marks the run
    failed with `ssdlab.error` (call it when fit raises).
    """

    def __init__(self, uri: str, experiment: str, run_name: str | None = None,
                 tags: Mapping[str, Any] | None = None, log_checkpoint: bool = True, resume: bool = False):
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.tags = dict(tags or {})
        self.log_checkpoint, self.resume = log_checkpoint, resume
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.cfg = None
        self._last_step = -1

    def on_fit_start(self, cfg, run_dir) -> None:
        self.cfg = cfg
        self.client = client_for(self.uri)
        exp_id = experiment_id(self.client, self.experiment, self.uri)
        run_dir_tag = str(Path(run_dir).resolve()) if run_dir is not None else ""
        params, chash = _config_params_and_hash(cfg)
        run = None
        if self.resume and run_dir_tag and "'" not in run_dir_tag:
            run = find_run(self.client, exp_id, {"ssdlab.kind": "train", "ssdlab.run_dir": run_dir_tag})
        if run is not None:
            self.run_id = run.info.run_id
            self._last_step = last_step(self.client, run)
            self.client.update_run(self.run_id, status="RUNNING")
            params = []  # params are immutable in MLflow and already logged
        else:
            name = self.run_name or getattr(cfg, "name", None)
            self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
        tags = {"ssdlab.kind": "train", "ssdlab.config_hash": chash, "ssdlab.run_dir": run_dir_tag,
                "ssdlab.status": STATUS_RUNNING, **{k: str(v) for k, v in self.tags.items()}}
        log_batch(self.client, self.run_id, params=params, tags=tags)

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any], run_dir=None) -> None:
        if self.run_id is None or epoch <= self._last_step:
            return
        log_batch(self.client, self.run_id, metrics=metrics_of(metrics, epoch))
        self._last_step = epoch

    def on_fit_end(self, result) -> None:
        if self.run_id is None:
            return
        if self.cfg is not None:
            _log_text_artifact(self.client, self.run_id, config_text(self.cfg), "config.yaml")
        run_dir = getattr(result, "run_dir", None)
        best = Path(run_dir) / "best.pt" if run_dir is not None else None
        if self.log_checkpoint and best is not None and best.is_file():
            self.client.log_artifact(self.run_id, str(best), artifact_path="checkpoints")
        self.client.set_tag(self.run_id, "ssdlab.status", STATUS_FINISHED)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.run_id = None

    def on_fit_error(self, exc: BaseException) -> None:
        if self.run_id is None:
            return
        log_batch(self.client, self.run_id, tags={"ssdlab.status": STATUS_FAILED, "ssdlab.error": _error_text(exc)})
        self.client.set_terminated(self.run_id, "FAILED")
        self.run_id = None


# --------------------------------------------------------------------------- sweeps


class SweepTracker:
    """The single MLflow writer of a sweep (lives in the Ray driver; workers never touch MLflow).

    Parent run identity: `ssdlab.kind=sweep` + `ssdlab.sweep` + `ssdlab.storage` (the Ray Tune
    experiment path). Child identity: parent run id + `ssdlab.trial_id`. Both are looked up before
    anything is created, so a restored driver finds its runs again. Steps at or below the last
    logged step of a child are skipped. Picklable (the MLflow client is rebuilt lazily), because
    Ray Tune pickles its callbacks into the experiment state.
    """

    def __init__(self, uri: str, experiment: str, sweep: str, storage: str,
                 parent_tags: Mapping[str, Any] | None = None, parent_params: Mapping[str, Any] | None = None,
                 log_checkpoints: bool = True):
        self.uri, self.experiment, self.sweep, self.storage = uri, experiment, sweep, str(storage)
        self.parent_tags = {k: str(v) for k, v in (parent_tags or {}).items()}
        self.parent_params = dict(parent_params or {})
        self.log_checkpoints = log_checkpoints
        self._client: MlflowClient | None = None
        self._exp_id: str | None = None
        self.parent_id: str | None = None
        self._children: dict[str, str] = {}
        self._last: dict[str, int] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_client=None, _exp_id=None, parent_id=None, _children={}, _last={})
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = client_for(self.uri)
            self._exp_id = experiment_id(self._client, self.experiment, self.uri)
        return self._client

    @property
    def exp_id(self) -> str:
        self.client
        return self._exp_id

    # ---- parent
    def start(self) -> str:
        """Find or create the parent run and mark it running; returns its run id."""
        if self.parent_id is not None:
            return self.parent_id
        ident = {"ssdlab.kind": "sweep", "ssdlab.sweep": self.sweep, "ssdlab.storage": self.storage}
        run = find_run(self.client, self.exp_id, ident)
        if run is None:
            run = self.client.create_run(self.exp_id, run_name=self.sweep)
            params = params_of(self.parent_params)
        else:
            params = [p for p in params_of(self.parent_params) if p.key not in run.data.params]
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.parent_id = run.info.run_id
        log_batch(self.client, self.parent_id, params=params,
                  tags={**ident, **self.parent_tags, "ssdlab.status": STATUS_RUNNING})
        return self.parent_id

    def finish(self, status: str = STATUS_FINISHED) -> None:
        """End the parent run: finished | failed, or "killed" (interrupted, resumable: the tag
        stays `running`, the MLflow status becomes KILLED)."""
        if self.parent_id is None:
            return
        if status != "killed":
            self.client.set_tag(self.parent_id, "ssdlab.status", status)
        self.client.set_terminated(self.parent_id, _MLFLOW_STATUS.get(status, "FINISHED"))

    # ---- children
    def child(self, trial_id: str, params: Mapping[str, Any] = (), tags: Mapping[str, Any] = (),
              run_name: str | None = None) -> str:
        """Find or create the child run of `trial_id`; log params (first time) and tags."""
        if trial_id in self._children:
            return self._children[trial_id]
        parent = self.start()
        ident = {"mlflow.parentRunId": parent, "ssdlab.trial_id": trial_id}
        run = find_run(self.client, self.exp_id, ident)
        if run is None:
            run = self.client.create_run(self.exp_id, run_name=run_name or trial_id)
            new_params = params_of(dict(params))
            self._last[trial_id] = -1
        else:
            new_params = [p for p in params_of(dict(params)) if p.key not in run.data.params]
            self._last[trial_id] = last_step(self.client, run)
            self.client.update_run(run.info.run_id, status="RUNNING")
        run_id = self._children[trial_id] = run.info.run_id
        log_batch(self.client, run_id, params=new_params,
                  tags={**ident, "ssdlab.sweep": self.sweep, "ssdlab.kind": "trial",
                        "ssdlab.status": STATUS_RUNNING, **{k: str(v) for k, v in dict(tags).items()}})
        return run_id

    def log_epoch(self, trial_id: str, step: int, metrics: Mapping[str, Any]) -> bool:
        """Log one epoch of a known child; False (and nothing written) when `step` is already logged."""
        run_id = self._children[trial_id]
        if step <= self._last.get(trial_id, -1):
            return False
        log_batch(self.client, run_id, metrics=metrics_of(metrics, step))
        self._last[trial_id] = step
        return True

    def end_child(self, trial_id: str, status: str, error: str | BaseException | None = None,
                  config_yaml: str | None = None, checkpoint: str | os.PathLike | None = None) -> None:
        """Set `ssdlab.status` (+ `ssdlab.error`), log config/best checkpoint artifacts, terminate."""
        run_id = self._children.get(trial_id)
        if run_id is None:
            return
        tags = {"ssdlab.status": status}
        if error is not None:
            tags["ssdlab.error"] = _error_text(error)
        log_batch(self.client, run_id, tags=tags)
        if config_yaml is not None:
            _log_text_artifact(self.client, run_id, config_yaml, "config.yaml")
        if self.log_checkpoints and checkpoint is not None and Path(checkpoint).is_file():
            self.client.log_artifact(run_id, str(checkpoint), artifact_path="checkpoints")
        self.client.set_terminated(run_id, _MLFLOW_STATUS.get(status, "FINISHED"))
