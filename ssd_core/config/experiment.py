"""The whole experiment config: the SSD sections of schema.py plus the lab's own (distillation, deployment
measurements, tracking, output), and which keys `config_hash` leaves out (HASH_EXCLUDED).

The `distill` and `deploy` sections, the fitted-default-box keys of `model` and the later keys of `data`
(OPTIONAL_KEYS), are omitted from dumps
while at their defaults (ExperimentConfig._omit_default_sections): config.yaml, the MLflow params,
checkpoints and config_hash stay those of a config from before they existed.
"""
from __future__ import annotations

from typing import Optional

from pydantic import Field, PrivateAttr, model_serializer, model_validator

from ssd_core.config.schema import AugmentConfig, DataConfig, EvalConfig, ModelConfig, TrainConfig, _Section


class DistillConfig(_Section):
    """Knowledge distillation (off while `teacher` is null): a trained checkpoint whose class scores (and,
    with box_weight > 0, box offsets) the model learns from, on top of the MultiBox loss
    (ssd_core.loss.DistillationLoss, ssd_core/distill.py). The teacher must have the same classes and
    the same default boxes (image size and layout); fit checks it before training. Left at its defaults,
    the section is omitted from dumps (ExperimentConfig._omit_default_sections)."""

    teacher: Optional[str] = None  # a checkpoint (best.pt) path: relative to the cwd, then the repository
    temperature: float = Field(2.0, gt=0)
    weight: float = Field(1.0, ge=0)       # on the KL term of the class scores (x T^2)
    box_weight: float = Field(0.0, ge=0)   # on Smooth L1 between student and teacher offsets (positives)


class DeployConfig(_Section):
    """Deployment measurements at the end of training (off while `bench` is false): `ssdlab deploy bench` on
    the selected checkpoint (ssd_core.deploy.bench: CPU latency at batch 1 with pre- and post-processing
    apart, parameters, GFLOPs, size; with `onnx` / `int8` the exported ONNX model (NMS in the graph) and
    its INT8 twin, each scored on `split`), logged with the final epoch as `deploy/*` metrics
    (ssd_core/metrics.py): what the report's accuracy-vs-speed table and a multi-objective search read.
    `threads`: the threads "all threads" means (null: the machine's; a sweep trial uses its CPU share).
    Changes no trained weight: left out of config_hash, and omitted from dumps while at its defaults."""

    bench: bool = False
    onnx: bool = True
    int8: bool = True
    split: str = "test"
    threads: Optional[int] = Field(None, gt=0)
    images: int = Field(16, gt=0)           # images cycled for the latency
    warmup: int = Field(5, ge=0)
    repeats: int = Field(30, gt=0)          # timed runs; the median is reported
    calib_images: int = Field(64, gt=0)     # INT8 calibration images (training split)
    max_images: Optional[int] = Field(None, gt=0)  # score on the split's first N images only


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # the embedded store: a database in the working directory


class TrackingConfig(_Section):
    uri: str = DEFAULT_TRACKING_URI
    experiment: str = "ssdlab"
    run_name: Optional[str] = None


class OutputConfig(_Section):
    dir: str = "runs"  # run directories are created under here


class ExperimentConfig(_Section):
    """One experiment. `ExperimentConfig.model_validate(dict)` checks a plain dict."""

    name: str = "experiment"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    _source: Optional[str] = PrivateAttr(default=None)

    @property
    def source(self) -> str:
        """The file this config came from (for error messages)."""
        return self._source or "<config>"

    @property
    def num_classes(self) -> Optional[int]:
        """Classes including background, when the class list is known from the config."""
        return None if self.data.class_names is None else len(self.data.class_names) + 1

    @model_validator(mode="after")
    def _cross_checks(self) -> "ExperimentConfig":
        if self.eval.metric == "coco" and self.data.format != "coco":
            raise ValueError(f"eval.metric 'coco' needs data.format 'coco', got {self.data.format!r}")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_sections(self, handler):
        # An untouched `distill` (distillation off) or `deploy` (no bench) section is left out of dumps:
        # config.yaml, the MLflow params, checkpoints and config_hash stay exactly those of a config from
        # before the section existed.
        data = handler(self)
        if isinstance(data, dict):
            for name, default in OPTIONAL_SECTIONS.items():
                if getattr(self, name) == default():
                    data.pop(name, None)
            for section, (schema, keys) in OPTIONAL_KEYS.items():  # keys added later, likewise, while unused
                node = data.get(section)
                for key in keys if isinstance(node, dict) else ():
                    if key in node and node[key] == schema.model_fields[key].default:
                        node.pop(key)
        return data


OPTIONAL_SECTIONS = {"distill": DistillConfig, "deploy": DeployConfig}
OPTIONAL_KEYS = {
    "model": (ModelConfig, ("prior_sizes", "prior_aspect", "prior_aspect_ratios", "prior_max_boxes")),  # fitted boxes
    "data": (DataConfig, ("test_holdout", "skip_bad")),  # a hashed test slice; training past unreadable images
}


# Keys that do not change the trained weights or the metrics: left out of config_hash.
HASH_EXCLUDED = frozenset({
    "name", "tracking", "output", "data.root", "data.default_root", "data.cache_images",
    "train.log_every", "deploy", "eval.test_at", "data.skip_bad",
})
