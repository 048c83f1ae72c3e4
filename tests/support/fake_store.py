"""Fabricated MLflow stores for report tests: a sweep's parent run and its trial runs, written with the
tags the sweep driver writes (experiments.schema), histories given step by step, so every number a table
prints can be checked by hand."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

T0 = 1_700_000_000_000  # ms; fixed so a store (and its report) is the same every time
_MLFLOW_END = {"finished": "FINISHED", "early_stopped": "FINISHED", "failed": "FAILED"}


@dataclass
class Run:
    arm: str
    seed: int
    history: dict[str, dict[int, float]]   # metric -> {step: value}
    status: str = "finished"
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)  # artifact folder ("" for the root) -> file
    tags: dict[str, str] = field(default_factory=dict)


def write_sweep(uri: str, sweep: str, arms: list[str], runs: list[Run], experiment: str = "ssdlab",
                metric: str = "val/mAP50", parent_tags: dict[str, str] | None = None) -> str:
    """Create the sweep's parent and trial runs in the store at `uri`; returns the parent run id. Each run
    logs its score beside `metric`, as fit does (report_store.with_score)."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from experiments.schema import Tag
    from experiments.tracking.store import ensure_store
    from tests.support.report_store import with_score
    from tests.support.stores import empty_store

    ensure_store(empty_store(uri))
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    parent = client.create_run(exp_id, start_time=T0, tags={
        Tag.KIND: "sweep", Tag.SWEEP: sweep, Tag.ARMS: json.dumps(arms), Tag.BASELINE_ARM: arms[0],
        Tag.SEARCH_SPACE: "{}", Tag.METRIC: metric, **(parent_tags or {})}).info.run_id
    for i, r in enumerate(runs):
        start = T0 + 1000 * (i + 1)
        tags = {Tag.PARENT: parent, Tag.KIND: "trial", Tag.SWEEP: sweep, Tag.ARM: r.arm, Tag.SEED: str(r.seed),
                Tag.TRIAL_ID: f"{sweep}_{i:03d}", Tag.STATUS: r.status, Tag.SEARCHED: "[]", **r.tags}
        run_id = client.create_run(exp_id, start_time=start, tags=tags).info.run_id
        metrics = with_score([Metric(k, float(v), start + 60_000 * (step + 1), int(step))
                              for k, steps in r.history.items() for step, v in steps.items()], metric)
        params = [mlflow.entities.Param(k, str(v)) for k, v in r.params.items()]
        client.log_batch(run_id, metrics=metrics, params=params)
        for folder, path in r.artifacts.items():
            client.log_artifact(run_id, str(path), artifact_path=folder or None)
        if r.status in _MLFLOW_END:
            last = max((s for steps in r.history.values() for s in steps), default=0)
            client.set_terminated(run_id, _MLFLOW_END[r.status], end_time=start + 60_000 * (last + 2))
    client.set_terminated(parent, "FINISHED", end_time=T0 + 10_000_000)
    return parent
