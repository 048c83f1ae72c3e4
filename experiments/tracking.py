"""MLflow conventions: one writer per process, idempotent run identity, batched logging.

Names live in experiments/schema.py (tags, statuses) and ssd_core/metrics.py (metric names): step =
epoch; tags under `ssdlab.*`; child runs carry `mlflow.parentRunId`.

Pieces, top-down:

* `ensure_store(uri)` creates a fresh sqlite store's schema ONCE, under a file lock, before any
  parallel writer opens it (many processes migrating one new sqlite file at once fails).
* `RunWriter` is THE run writer: a run found again by its identity tags or created, params logged
  once, a metric step never logged twice (so a resumed run keeps one continuous history), the
  artifacts of a finished run (config.yaml, a weights-only best.pt, the test detections), its end.
* `MLflowCallback` is the fit callback of `ssdlab train`: one RunWriter for one training run.
* `SweepTracker` is the driver-side single writer of a sweep: a RunWriter for the parent run and
  one per trial (child) run, picklable because Ray Tune pickles its callbacks.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from experiments.schema import MLFLOW_STATUS, Artifact, Kind, M, Status, Tag
from experiments.store import mlflow_client, sqlite_file
from ssd_core import rundir as RD

PARAM_MAX_CHARS = 500
_BATCH_METRICS, _BATCH_PARAMS, _BATCH_TAGS = 1000, 100, 100
_READY: set[str] = set()


# --------------------------------------------------------------------------- store


def artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store live next to the database (`<dir>/mlartifacts`), not in CWD."""
    db = sqlite_file(uri)
    if db is None:
        return None
    return (db.resolve().parent / "mlartifacts").as_uri()


def ensure_store(uri: str) -> str:
    """Create the MLflow schema of `uri` once, under a file lock, and return `uri`.

    A fresh sqlite store that many processes open at once fails its alembic migration; calling
    this first (in the one driver, or in every process: the lock serialises them) avoids it. A new
    database is migrated under a temporary name beside it and moved into place whole, so no other
    process (a reader, one that locks the file) ever meets a half-built schema; opening it then waits
    while another process holds it locked (store.patient). Non-sqlite URIs need nothing.
    """
    if uri in _READY:
        return uri
    db = sqlite_file(uri)
    if db is not None:
        from filelock import FileLock

        from experiments.store import patient

        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock", timeout=300):
            if not db.exists() or db.stat().st_size == 0:
                _create_schema_aside(db)
            patient(lambda: mlflow_client(uri).search_experiments(max_results=1))
    _READY.add(uri)
    return uri


def _create_schema_aside(db: Path) -> None:
    """MLflow's tables in `.<name>.creating-<pid>` beside `db` (constructing the store runs the migrations),
    then renamed to `db` in one step."""
    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        mlflow_client(f"sqlite:///{tmp}").search_experiments(max_results=1)
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def client_for(uri: str) -> MlflowClient:
    return mlflow_client(ensure_store(uri))


# MLflow 3's UI opens an experiment by its kind: without this tag it lands on the GenAI overview (traces,
# issue detection), with it on the model-training runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """Get or create the experiment `name` (race-safe: another writer may create it first), tagged as a
    model-training experiment for MLflow's UI."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, artifact_location=artifact_root(uri), tags=EXPERIMENT_KIND)
            return exp_id
        except Exception:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    for k, v in EXPERIMENT_KIND.items():
        if exp.tags.get(k) != v:
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


# --------------------------------------------------------------------------- logging helpers


# A buffered write (experiments.callback.Outbox) is stamped with the time its event happened, so a
# metric written late keeps its real time and a write tried twice is the same point twice.
STAMP_MS: ContextVar[Optional[int]] = ContextVar("ssdlab_stamp_ms", default=None)


def _now_ms() -> int:
    return STAMP_MS.get() or int(time.time() * 1000)


def param_text(value: Any) -> str:
    """A param value as MLflow shows it: floats as the shortest text that reads back as the same float (a
    searched lr is reproducible from its run's params), lists as JSON."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool) or value is None:
        text = str(value)
    elif isinstance(value, float):
        text = repr(float(value))  # numpy floats too
    elif isinstance(value, (list, dict)):
        text = json.dumps(value)
    else:
        text = str(value)
    return text[:PARAM_MAX_CHARS]


def params_of(flat: Mapping[str, Any]) -> list[Param]:
    """Flattened config -> MLflow params (values as text, at most PARAM_MAX_CHARS characters)."""
    return [Param(key, param_text(value)) for key, value in flat.items()]


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


def _error_text(exc: BaseException | str | None) -> str:
    if exc is None:
        return ""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text.strip()[-4000:]


def provenance() -> dict[str, str]:
    """Tags saying what made a run: the git commit and whether the tree was dirty (when the code runs
    from a git checkout), the command line, and the versions of the packages that shape the numbers."""
    import subprocess
    import sys
    from importlib.metadata import PackageNotFoundError, version

    tags = {Tag.COMMAND: " ".join(sys.argv)[:5000]}
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                   capture_output=True, text=True, timeout=10)
            tags[Tag.GIT_COMMIT] = commit.stdout.strip()
            tags[Tag.GIT_DIRTY] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for pkg in ("ssdlab", "torch", "torchvision", "ray", "mlflow", "optuna", "numpy"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    tags[Tag.VERSIONS] = json.dumps(versions, sort_keys=True)
    return tags


# --------------------------------------------------------------------------- the run writer


class RunWriter:
    """One MLflow run, written idempotently (see the module docstring). Picklable: the client is
    rebuilt lazily and the run is found again by its identity tags in a new process."""

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        self.run_id: str | None = None
        self.last_step = -1
        self._logged: set[str] = set()
        self._client: MlflowClient | None = None
        self._exp_id: str | None = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_exp_id": None, "run_id": None, "last_step": -1}

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

    def open(self, ident: Mapping[str, str], params: Mapping[str, Any] = (), tags: Mapping[str, Any] = (),
             run_name: str | None = None, resume: bool = True) -> str:
        """Find the run whose tags equal `ident` (when `resume`) or create one; log the params it does
        not have yet and `ident` + `tags`; mark it running. Returns the run id."""
        run = find_run(self.client, self.exp_id, ident) if resume else None
        new_params = params_of(dict(params))
        if run is None:
            # the identity tags with the run, in one call: a retried open (a server that did not answer)
            # finds this run instead of creating a second one
            run = self.client.create_run(self.exp_id, run_name=run_name, tags={k: str(v) for k, v in ident.items()})
            self.last_step = -1
        else:
            new_params = [p for p in new_params if p.key not in run.data.params]  # params are immutable
            self.last_step = last_step(self.client, run)
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        log_batch(self.client, self.run_id, params=new_params,
                  tags={**ident, Tag.STATUS: Status.RUNNING, **{k: str(v) for k, v in dict(tags).items()}})
        return self.run_id

    def log_epoch(self, step: int, metrics: Mapping[str, Any]) -> bool:
        """Log one epoch; False (and nothing written) when `step` is already logged."""
        if self.run_id is None or step <= self.last_step:
            return False
        log_batch(self.client, self.run_id, metrics=metrics_of(metrics, step))
        self.last_step = step
        return True

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id is not None:
            log_batch(self.client, self.run_id, tags={k: str(v) for k, v in tags.items()})

    def log_text(self, text: str, name: str, artifact_path: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_outputs(self, config_yaml: str | None = None, checkpoint: str | os.PathLike | None = None,
                    detections: str | os.PathLike | None = None) -> None:
        """config.yaml; checkpoints/best.pt as weights + config only (the resumable checkpoint, with its
        optimizer state, stays in the run dir); the test detections (.npz) for re-scoring."""
        from ssd_core.checkpoint import export_weights
        from ssd_core.errors import CheckpointError

        if self.run_id is None:
            return
        if config_yaml is not None:
            self.log_text(config_yaml, "config.yaml")
        if checkpoint is not None and Path(checkpoint).is_file():
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    slim = export_weights(checkpoint, Path(tmp) / Path(checkpoint).name)
                except CheckpointError as exc:  # never lose the run over its artifact
                    self.set_tags({Tag.ERROR: f"checkpoint not logged: {exc}"})
                else:
                    self.client.log_artifact(self.run_id, str(slim), artifact_path=Artifact.CHECKPOINTS)
        if detections is not None and Path(detections).is_file():
            self.client.log_artifact(self.run_id, str(detections))
            for path in RD.detections_at_points(Path(detections).parent):  # eval.test_at: beside them
                self.client.log_artifact(self.run_id, str(path), artifact_path=Artifact.BUDGET)
        from experiments.evidence import DETECTIONS_PNG, PR_CURVES_PNG
        for source in (checkpoint, detections):  # the evidence PNGs sit beside them (experiments/evidence.py)
            for name in (DETECTIONS_PNG, PR_CURVES_PNG) if source is not None else ():
                png = Path(source).parent / name
                if png.is_file() and name not in self._logged:
                    self.client.log_artifact(self.run_id, str(png), artifact_path=Artifact.EVIDENCE)
                    self._logged.add(name)

    def end(self, status: Status | str, error: BaseException | str | None = None) -> None:
        """Set `ssdlab.status` (+ `ssdlab.error`) and terminate with the matching MLflow status.
        KILLED (an interrupted, resumable run) keeps the tag `running`."""
        if self.run_id is None:
            return
        status = Status(status)
        tags = {} if status is Status.KILLED else {Tag.STATUS: status}
        if error is not None:
            tags[Tag.ERROR] = _error_text(error)
        if tags:
            log_batch(self.client, self.run_id, tags=tags)
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])


# --------------------------------------------------------------------------- ssdlab train


class MLflowCallback:
    """Fit callback (ssd_core.train.fit protocol) that logs one training run to MLflow.

    `on_fit_start` opens the run (params = flattened config, tags `ssdlab.kind=train`,
    `ssdlab.config_hash`, `ssdlab.run_dir`), `on_epoch_end` logs the epoch's metrics at step=epoch,
    `on_fit_end` logs the outputs (RunWriter.log_outputs) and ends the run. With `resume=True` the run
    previously logged for the same run dir is continued (steps already logged are skipped).
    `on_fit_error(exc)` marks the run failed with `ssdlab.error` (call it when fit raises).
    """

    def __init__(self, uri: str, experiment: str, run_name: str | None = None,
                 tags: Mapping[str, Any] | None = None, log_checkpoint: bool = True, resume: bool = False):
        self.writer = RunWriter(uri, experiment)
        self.run_name, self.tags = run_name, dict(tags or {})
        self.log_checkpoint, self.resume = log_checkpoint, resume
        self.cfg = None

    @property
    def run_id(self) -> str | None:
        return self.writer.run_id

    def on_fit_start(self, cfg, run_dir) -> None:
        from ssd_core.config import config_hash, flatten

        self.cfg = cfg
        run_dir_tag = str(Path(run_dir).resolve()) if run_dir is not None else ""
        ident = {Tag.KIND: Kind.TRAIN, Tag.RUN_DIR: run_dir_tag}
        resume = self.resume and bool(run_dir_tag) and "'" not in run_dir_tag
        description = (f"`ssdlab train` of {cfg.source}: {cfg.model.backbone} at {cfg.model.image_size} px, "
                       f"selected on {cfg.data.val_sets or 'a holdout' if cfg.data.holdout else 'the last epoch'}, "
                       f"reported on {cfg.data.test_sets or 'nothing'}")
        from ssd_core.build import resolve_device
        from ssd_core.precision import resolve

        self.writer.open(ident, params=flatten(cfg), tags={Tag.CONFIG_HASH: config_hash(cfg), **provenance(),
                                                           Tag.PRECISION: resolve(cfg.train, resolve_device(cfg)).describe(),
                                                           Tag.DESCRIPTION: description, **self.tags},
                         run_name=self.run_name or getattr(cfg, "name", None), resume=resume)

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any], run_dir=None) -> None:
        if metrics.get(M.FINAL) and self.writer.run_id is not None and epoch > self.writer.last_step:
            from ssd_core.deploy import measure_run
            metrics = {**metrics, **measure_run(self.cfg, run_dir)}  # deploy/* with deploy.bench on
        self.writer.log_epoch(epoch, metrics)

    def on_fit_end(self, result) -> None:
        from ssd_core.config import to_yaml

        if self.writer.run_id is None:
            return
        run_dir = getattr(result, "run_dir", None)
        if run_dir is not None:
            from experiments.evidence import write_evidence
            write_evidence(Path(run_dir))
        self.writer.log_outputs(
            config_yaml=to_yaml(self.cfg) if self.cfg is not None else None,
            checkpoint=Path(run_dir) / RD.BEST if self.log_checkpoint and run_dir is not None else None,
            detections=Path(run_dir) / RD.TEST_DETECTIONS if run_dir is not None else None)
        self.writer.end(Status.FINISHED)
        self.writer.run_id = None

    def on_fit_error(self, exc: BaseException) -> None:
        self.writer.end(Status.FAILED, error=exc)
        self.writer.run_id = None


# --------------------------------------------------------------------------- sweeps


class SweepTracker:
    """The single MLflow writer of a sweep (lives in the Ray driver; workers never touch MLflow).

    Parent run identity: `ssdlab.kind=sweep` + `ssdlab.sweep` + `ssdlab.storage` (the Ray Tune
    experiment path). Child identity: parent run id + `ssdlab.trial_id`. Both are looked up before
    anything is created, so a restored driver finds its runs again.
    """

    def __init__(self, uri: str, experiment: str, sweep: str, storage: str,
                 parent_tags: Mapping[str, Any] | None = None, parent_params: Mapping[str, Any] | None = None,
                 log_checkpoints: bool = True):
        self.uri, self.experiment, self.sweep, self.storage = uri, experiment, sweep, str(storage)
        self.parent_tags = {k: str(v) for k, v in (parent_tags or {}).items()}
        self.parent_params = dict(parent_params or {})
        self.log_checkpoints = log_checkpoints
        self.parent = RunWriter(uri, experiment)
        self.children: dict[str, RunWriter] = {}

    def __getstate__(self):
        return {**self.__dict__, "children": {}}

    @property
    def parent_id(self) -> str | None:
        return self.parent.run_id

    def run_id(self, trial_id: str) -> Optional[str]:
        """The child run of `trial_id` this driver has opened (None before `child`)."""
        w = self.children.get(trial_id)
        return None if w is None else w.run_id

    # ---- parent
    def start(self) -> str:
        """Find or create the parent run and mark it running; returns its run id."""
        if self.parent.run_id is None:
            ident = {Tag.KIND: Kind.SWEEP, Tag.SWEEP: self.sweep, Tag.STORAGE: self.storage}
            tags = {**self.parent_tags, **provenance()}
            tags[Tag.DESCRIPTION] = self.parent_tags.get(Tag.NOTE) or f"ssdlab sweep {self.sweep}"
            self.parent.open(ident, params=self.parent_params, tags=tags, run_name=self.sweep)
        return self.parent.run_id

    def finish(self, status: Status | str = Status.FINISHED) -> None:
        """End the parent run: finished | failed, or killed (interrupted, resumable)."""
        self.parent.end(status)

    def summarize(self) -> tuple[dict[str, int], list[tuple[str, str, str]]]:
        """Count the sweep's trials by `ssdlab.status` (every child of the parent, earlier launches of a
        resumed sweep included) and tag the parent with the counts (`ssdlab.counts`, JSON) and, when
        trials failed, a one-line `ssdlab.error`. Returns (counts, [(trial id, run name, error)] of the
        failed trials)."""
        flt = f"tags.`{Tag.PARENT}` = '{self.start()}'"
        runs = self.parent.client.search_runs([self.parent.exp_id], filter_string=flt, max_results=10_000,
                                              order_by=["attributes.start_time ASC"])
        counts: dict[str, int] = {}
        failures = []
        for run in runs:
            status = run.data.tags.get(Tag.STATUS, Status.RUNNING.value)
            counts[status] = counts.get(status, 0) + 1
            if status == Status.FAILED.value:
                error = " ".join(run.data.tags.get(Tag.ERROR, "failed (no error recorded)").split())
                failures.append((run.data.tags.get(Tag.TRIAL_ID, run.info.run_id), run.info.run_name or "", error))
        tags = {Tag.COUNTS: json.dumps(dict(sorted(counts.items())))}
        if failures:
            first = "; ".join(f"{tid}: {err}" for tid, _, err in failures[:3])
            tags[Tag.ERROR] = _error_text(f"{len(failures)} of {len(runs)} trials failed: {first}")
        self.parent.set_tags(tags)
        return counts, failures

    def model_name(self) -> str:
        """The registered model's name: the sweep's, prefixed by the experiment when that is another name."""
        return self.sweep if self.experiment == self.sweep else f"{self.experiment}.{self.sweep}"

    def register_best(self, metric: str, mode: str = "max", model_name: str | None = None) -> Optional[str]:
        """Find the sweep's best trial (experiments.schema.best_index: finished, best `metric` over
        epochs), tag the parent with it (trial, run, score), log its score on the parent, and register the
        trial's checkpoint as an MLflow pyfunc model (experiments/registry.py) under `model_name` (default
        `model_name()`) with the alias `best`, so "the best model of sweep X" is `models:/X@best`. Returns
        "<name>/<version>"."""
        from experiments.schema import best_index, score_of

        client = self.parent.client
        flt = f"tags.`{Tag.PARENT}` = '{self.start()}'"
        runs = client.search_runs([self.parent.exp_id], filter_string=flt, max_results=10_000)
        if not runs:
            return None
        scores = [score_of([m.value for m in client.get_metric_history(r.info.run_id, metric)], mode) for r in runs]
        i = best_index(scores, [r.data.tags.get(Tag.STATUS, "") for r in runs],
                       [float(r.data.tags.get(Tag.SEED, "nan")) for r in runs],
                       [r.data.tags.get(Tag.TRIAL_ID, r.info.run_id) for r in runs], mode)
        if i is None:
            return None
        best = runs[i]
        tid = best.data.tags.get(Tag.TRIAL_ID, best.info.run_id)
        tags = {Tag.BEST_TRIAL: tid, Tag.BEST_RUN: best.info.run_id, Tag.BEST_SCORE: f"{scores[i]:.6g}"}
        # the best trial's score and reported value on the parent too, so its row sorts with the trials'
        reported = M.reported_of(metric)
        summary = {M.SCORE: scores[i], **({reported: best.data.metrics[reported]} if reported in best.data.metrics else {})}
        log_batch(client, self.start(), metrics=metrics_of(summary, 0))
        from experiments.registry import register

        image_size = int(float(best.data.params.get("model.image_size", 300)))
        registered = register(client, self.parent.exp_id, best.info.run_id, model_name or self.model_name(),
                              image_size, description=f"The best trial of sweep {self.sweep} by {metric}: trial {tid}, "
                                                      f"{metric} {scores[i]:.4f}. Input: uint8 images [N, {image_size}, "
                                                      f"{image_size}, 3]; output: one row per detection.",
                              tags={Tag.TRIAL_ID: tid, Tag.SWEEP: self.sweep, "metric": metric,
                                    "score": f"{scores[i]:.6g}"})
        if registered:
            tags[Tag.REGISTERED_MODEL] = registered
        self.parent.set_tags(tags)
        return tags.get(Tag.REGISTERED_MODEL)

    # ---- children
    def child(self, trial_id: str, params: Mapping[str, Any] = (), tags: Mapping[str, Any] = (),
              run_name: str | None = None) -> str:
        """Find or create the child run of `trial_id`; log params (first time) and tags."""
        if trial_id in self.children and self.children[trial_id].run_id is not None:
            return self.children[trial_id].run_id
        parent = self.start()
        writer = self.children[trial_id] = RunWriter(self.uri, self.experiment)
        writer._client, writer._exp_id = self.parent.client, self.parent.exp_id
        ident = {Tag.PARENT: parent, Tag.TRIAL_ID: trial_id}
        if getattr(self, "_provenance", None) is None:  # git + versions once per driver, on every trial run
            self._provenance = provenance()
        return writer.open(ident, params=params, tags={Tag.SWEEP: self.sweep, Tag.KIND: Kind.TRIAL, **self._provenance,
                                                       **dict(tags)},
                           run_name=run_name or trial_id)

    def log_epoch(self, trial_id: str, step: int, metrics: Mapping[str, Any]) -> bool:
        """Log one epoch of a known child; False (and nothing written) when `step` is already logged."""
        return self.children[trial_id].log_epoch(step, metrics)

    def mark_lost(self, phase: str, known_trial_ids: Iterable[str]) -> list[str]:
        """End as LOST every child of phase `phase` still marked running whose trial Ray Tune no longer
        knows (a driver killed after the trial reported but before Tune's state recorded it: Tune runs
        the search on without it). Its history stays, visibly not a result. Returns their trial ids."""
        known = set(known_trial_ids)
        flt = (f"tags.`{Tag.PARENT}` = '{self.start()}' and tags.`{Tag.EXPERIMENT}` = {_quote(phase)} "
               f"and tags.`{Tag.STATUS}` = '{Status.RUNNING.value}'")
        lost = []
        for run in self.parent.client.search_runs([self.parent.exp_id], filter_string=flt, max_results=10_000):
            tid = run.data.tags.get(Tag.TRIAL_ID)
            if tid and tid not in known:
                log_batch(self.parent.client, run.info.run_id, tags={
                    Tag.STATUS: Status.LOST, Tag.ERROR: "lost: the sweep driver died before Ray Tune recorded this "
                                                        "trial; the resumed sweep ran without it"})
                self.parent.client.set_terminated(run.info.run_id, MLFLOW_STATUS[Status.LOST])
                lost.append(tid)
        return lost

    def end_child(self, trial_id: str, status: Status | str, error: str | BaseException | None = None,
                  config_yaml: str | None = None, checkpoint: str | os.PathLike | None = None,
                  detections: str | os.PathLike | None = None) -> None:
        """Set `ssdlab.status` (+ `ssdlab.error`), log the outputs (RunWriter.log_outputs), terminate."""
        writer = self.children.get(trial_id)
        if writer is None or writer.run_id is None:
            return
        writer.log_outputs(config_yaml, checkpoint if self.log_checkpoints else None, detections)
        status = Status(status)
        if status is not Status.FINISHED:  # visible in the runs list without adding a column
            run = writer.client.get_run(writer.run_id)
            name = run.info.run_name or trial_id
            mark = f" [{status.value.replace('_', '-')}]"
            if not name.endswith(mark):
                writer.set_tags({Tag.RUN_NAME: name + mark})
        writer.end(status, error)
