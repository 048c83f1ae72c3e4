"""The MLflow run of `ssdlab train`: MLflowCallback, fit's callback around one RunWriter."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from experiments.schema import Kind, M, Status, Tag
from experiments.tracking.writer import RunWriter, provenance
from ssd_core import rundir as RD


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
        record = Path(run_dir) / RD.DATA_RECORD if run_dir is not None else None
        if record is not None and record.is_file():  # fit wrote it before calling us
            self.writer.log_dataset(json.loads(record.read_text()))

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
