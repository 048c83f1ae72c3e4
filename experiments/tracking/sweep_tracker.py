"""The driver-side single writer of a sweep: a RunWriter for the parent run and one
per trial (child) run, picklable because Ray Tune pickles its callbacks."""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from typing import Any, Iterable, Mapping, Optional

from experiments.schema import MLFLOW_STATUS, BestTrial, Kind, M, Status, Tag, best_index
from experiments.tracking.writer import RunWriter, _error_text, _quote, log_batch, metrics_of, provenance


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

    def best_trial(self, metric: str) -> Optional[BestTrial]:
        """The sweep's best trial (experiments.schema.best_index: finished, best score) among every child of
        the parent, earlier launches included, by fit's `score` as each logged it (read, never recomputed);
        None when no finished trial has one. `metric`: the selection metric, whose test counterpart it reports."""
        flt = f"tags.`{Tag.PARENT}` = '{self.start()}'"
        runs = self.parent.client.search_runs([self.parent.exp_id], filter_string=flt, max_results=10_000)
        i = best_index([r.data.metrics.get(M.SCORE, math.nan) for r in runs],
                       [r.data.tags.get(Tag.STATUS, "") for r in runs],
                       [float(r.data.tags.get(Tag.SEED, "nan")) for r in runs],
                       [r.data.tags.get(Tag.TRIAL_ID, r.info.run_id) for r in runs])
        if i is None:
            return None
        best, seed = runs[i], runs[i].data.tags.get(Tag.SEED)
        return BestTrial(best.data.tags.get(Tag.TRIAL_ID, best.info.run_id), best.info.run_id,
                         best.data.metrics[M.SCORE], arm=best.data.tags.get(Tag.ARM),
                         seed=None if seed in (None, "") else int(float(seed)),
                         reported=best.data.metrics.get(M.reported_of(metric)))

    def register_best(self, metric: str, model_name: str | None = None) -> Optional[BestTrial]:
        """The sweep's best trial (best_trial): tag the parent with it (trial, run, score), log its score (and
        reported value) on the parent, and register its checkpoint as an MLflow pyfunc model
        (experiments/tracking/registry.py) under `model_name` (default `model_name()`) with the alias `best`,
        so "the best model of sweep X" is `models:/X@best`. Returns it, with `model` "<name>/<version>"."""
        best = self.best_trial(metric)
        if best is None:
            return None
        client = self.parent.client
        tags = {Tag.BEST_TRIAL: best.trial_id, Tag.BEST_RUN: best.run_id, Tag.BEST_SCORE: f"{best.score:.6g}"}
        # the best trial's score and reported value on the parent too, so its row sorts with the trials'
        summary = {M.SCORE: best.score, **({M.reported_of(metric): best.reported} if best.reported is not None else {})}
        log_batch(client, self.start(), metrics=metrics_of(summary, 0))
        from experiments.tracking.registry import register

        image_size = int(float(client.get_run(best.run_id).data.params.get("model.image_size", 300)))
        tid = best.trial_id
        registered = register(client, self.parent.exp_id, best.run_id, model_name or self.model_name(),
                              image_size, description=f"The best trial of sweep {self.sweep} by {metric}: trial {tid}, "
                                                      f"{metric} {best.score:.4f}. Input: uint8 images [N, {image_size}, "
                                                      f"{image_size}, 3]; output: one row per detection.",
                              tags={Tag.TRIAL_ID: tid, Tag.SWEEP: self.sweep, "metric": metric,
                                    M.SCORE: f"{best.score:.6g}"})
        if registered:
            tags[Tag.REGISTERED_MODEL] = registered
        self.parent.set_tags(tags)
        return replace(best, model=registered or None)

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
