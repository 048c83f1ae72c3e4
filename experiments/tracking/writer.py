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

from experiments.schema import MLFLOW_STATUS, Artifact, Status, Tag
from experiments.tracking.store import client_for, experiment_id
from ssd_core import rundir as RD

PARAM_MAX_CHARS = 500
SKIPPED_IMAGES = "skipped_images.txt"  # data/: one line per image data.skip_bad left out


_BATCH_METRICS, _BATCH_PARAMS, _BATCH_TAGS = 1000, 100, 100


# A buffered write (experiments.sweep.callback.Outbox) is stamped with the time its event happened, so a
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
        _ = self.client  # opens the client, which resolves the experiment id
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
            self.client.update_run(run.info.run_id, status=MLFLOW_STATUS[Status.RUNNING])
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

    def log_dataset(self, records: list[dict]) -> None:
        """What the run trained and was scored on (ssd_core/data/record.py): each split as an MLflow dataset
        input with the split as its context (the runs table's Dataset column), `ssdlab.data.skipped` (how
        many unreadable images data.skip_bad left out), and data/data.json (+ data/skipped_images.txt)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        if self.run_id is None or not records or RD.DATA_RECORD in self._logged:
            return
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(
            Dataset(name=r["name"], digest=r["digest"], source_type="local", source=json.dumps({"uri": r["source"]}),
                    profile=json.dumps({k: r[k] for k in ("format", "images", "objects")} | {"skipped": len(r["skipped"])})),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, r["split"])]) for r in records])
        skipped = [line for r in records for line in r["skipped"]]
        self.set_tags({Tag.DATA_SKIPPED: len(skipped)})
        self.log_text(json.dumps(records, indent=1), RD.DATA_RECORD, artifact_path=Artifact.DATA)
        if skipped:
            self.log_text("".join(f"{line}\n" for line in skipped), SKIPPED_IMAGES, artifact_path=Artifact.DATA)
        self._logged.add(RD.DATA_RECORD)

    def log_outputs(self, config_yaml: str | None = None, checkpoint: str | os.PathLike | None = None,
                    detections: str | os.PathLike | None = None) -> None:
        """config.yaml; checkpoints/best.pt as weights + config only (the resumable checkpoint, with its
        optimizer state, stays in the run dir); the test detections (.npz) for re-scoring."""
        from ssd_core.checkpoint import export_weights
        from ssd_core.errors import CheckpointError

        if self.run_id is None:
            return
        if config_yaml is not None:
            self.log_text(config_yaml, RD.CONFIG)
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
        for source in (checkpoint, detections):  # the evidence PNGs sit beside them (experiments/evidence.py)
            for name in (RD.DETECTIONS_PNG, RD.PR_CURVES_PNG) if source is not None else ():
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
