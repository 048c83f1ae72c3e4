"""Typed experiment config: one schema for YAML files, `-o key=value` overrides, sweeps and MLflow params.

A config is a YAML file with the sections `model`, `data`, `augment`, `train`, `eval`, `distill`, `deploy`,
`tracking`, `output` (plus a `name`). Every key is a dotted path (`train.lr`, `augment.zoom_out.p`), the same
path the CLI (`-o train.lr=0.01`), sweep search spaces and MLflow params use.

    cfg = load_config("experiments/configs/demo_shapes.yaml", ["train.lr=0.01"])
    flatten(cfg)      # {"train.lr": 0.01, ...}: the MLflow params
    config_hash(cfg)  # 12 hex chars identifying the result-relevant settings

Bad input (unknown key, wrong type, impossible value) raises `ConfigError` naming the file, the
dotted key and what was expected. `num_classes` is not a key: it is derived from the class list
(`data.class_names`, or the dataset's classes when that is null) plus the background class.

`config_hash` excludes the keys in `HASH_EXCLUDED`: names, output and tracking locations, where the
data lives, logging cadence, image caching and the deployment measurements. None of them changes the
trained weights.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_serializer,
                      model_validator)

from ssd_core.errors import ConfigError

@dataclass(frozen=True)
class Backbone:
    """What the model section may set for a base network (ssd_core/backbones.py builds them)."""

    width: bool = False              # model.width_mult applies
    strides: tuple = (8,)            # model.output_stride choices (8: the paper's 38x38 first map at 300 px)
    pretrained: bool = True          # ImageNet weights exist (model.pretrained)


# The base networks, defined once: the schema, build_ssd and the CLI read this table.
BACKBONES = {
    "vgg16": Backbone(),
    "resnet50": Backbone(),
    "mobilenet_v2": Backbone(width=True, strides=(8, 16)),
    "efficientnet_v2_s": Backbone(strides=(8, 16)),
    "tiny": Backbone(width=True, pretrained=False),  # a demo/test base, not one of the paper's
}
# Smallest input: every base's stride-8 tap must be at least 4 x 4 (ssd_core.model measures the maps of any
# larger size and stacks extra layers down to 1 x 1).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024
DATA_ROOT_ENV = "SSDLAB_DATA_ROOT"


FLOAT32_MAX = 3.4028234663852886e38  # training runs in float32 (or narrower): a larger number overflows there


class _Section(BaseModel):
    # allow_inf_nan=False: `.inf` (or nan) is never a sensible learning rate, decay or zoom factor.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _float32(self) -> "_Section":
        """Every number must fit a float32: `lr: 1e308` would validate as a float64 and overflow in training."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            values = value if isinstance(value, list) else [value]
            for v in (x for item in values for x in (item if isinstance(item, list) else [item])):
                if isinstance(v, float) and abs(v) > FLOAT32_MAX:
                    raise ValueError(f"{name} {v:g}: larger than a float32 holds ({FLOAT32_MAX:.4g}); the training "
                                     f"would overflow")
        return self


class ModelConfig(_Section):
    """The network (paper section 2.1): backbone, input size, heads and default-box scales."""

    backbone: str = "vgg16"  # a key of BACKBONES
    image_size: int = 300
    pretrained: bool = False
    width_mult: float = Field(1.0, gt=0, le=2.0)
    lite_heads: bool = False
    # Default-box scales: the paper's VOC or COCO values (the Caffe rule, ssd_core/priors.py), or `auto`: fitted
    # to the training boxes (ssd_core/prior_fit.py) and written into prior_sizes of the resolved config.
    prior_scales: Literal["voc", "coco", "auto"] = "voc"
    # The Caffe rule's ratios in percent of the image side: first_ratio is the first map's box,
    # min_ratio..max_ratio spread over the others; null takes prior_scales' values.
    prior_first_ratio: Optional[float] = Field(None, gt=0, lt=100)
    prior_min_ratio: Optional[float] = Field(None, gt=0, lt=100)
    prior_max_ratio: Optional[float] = Field(None, gt=0, le=100)
    # Explicit sizes s_1 < ... < s_m+1 (fractions of the side; map k: s_k and sqrt(s_k s_k+1)): what `auto` fits.
    prior_sizes: Optional[list[float]] = None
    # Aspect ratios per map: the paper's ({2} on the first and last two maps, {2, 3} between), or `auto`
    # (fitted with the sizes, at most prior_max_boxes boxes per cell), written into prior_aspect_ratios.
    prior_aspect: Literal["paper", "auto"] = "paper"
    prior_aspect_ratios: Optional[list[list[float]]] = None
    prior_max_boxes: int = Field(6, ge=2, le=12)
    # Stride of the first feature map: 8 is the paper's layout (38x38 at 300 px); 16 keeps MobileNetV2's
    # and EfficientNetV2's native strides (SSDLite's 19x19), about 3x cheaper on a CPU.
    output_stride: Literal[8, 16] = 8
    # vgg16 with pretrained: "reduced_fc" = ImageNet VGG16 with fc6/fc7 subsampled into the atrous fc6 and
    # fc7 (the paper's; ssd_core/backbones.py), "features" = conv layers only, fc6/fc7 from scratch.
    vgg_weights: Literal["reduced_fc", "features"] = "reduced_fc"

    @model_validator(mode="after")
    def _fits_backbone(self) -> "ModelConfig":
        info = BACKBONES.get(self.backbone)
        if info is None:
            raise ValueError(f"backbone {self.backbone!r} is not one of {', '.join(map(repr, BACKBONES))}")
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(
                f"image_size {self.image_size} cannot be taken by backbone {self.backbone!r}: "
                f"expected {MIN_IMAGE_SIZE} <= image_size <= {MAX_IMAGE_SIZE}")
        widths = [b for b, i in BACKBONES.items() if i.width]
        if self.width_mult != 1.0 and not info.width:
            raise ValueError(f"width_mult applies to {' and '.join(widths)} only, not {self.backbone!r}")
        if self.output_stride not in info.strides:
            strided = [b for b, i in BACKBONES.items() if 16 in i.strides]
            raise ValueError(f"output_stride {self.output_stride}: 16 applies to {' and '.join(strided)} only, "
                             f"not {self.backbone!r}")
        if self.pretrained and not info.pretrained:
            raise ValueError(f"pretrained: backbone {self.backbone!r} has no pretrained weights: set it false")
        if self.pretrained and self.width_mult != 1.0:
            raise ValueError(f"width_mult {self.width_mult}: torchvision has ImageNet weights for "
                             f"{self.backbone} only at width_mult=1.0; use pretrained false or width_mult 1.0")
        lo, hi, first = self.prior_min_ratio, self.prior_max_ratio, self.prior_first_ratio
        ratios = [n for n, v in (("prior_first_ratio", first), ("prior_min_ratio", lo), ("prior_max_ratio", hi))
                  if v is not None]
        if ratios and (self.prior_scales == "auto" or self.prior_sizes is not None):
            what = "prior_scales auto fits the sizes" if self.prior_scales == "auto" else "prior_sizes sets them"
            raise ValueError(f"{ratios[0]} {getattr(self, ratios[0])}: {what}; remove {', '.join(ratios)}")
        sizes = self.prior_sizes
        if sizes is not None and (any(not 0 < v <= 1.5 for v in sizes) or any(b <= a for a, b in zip(sizes, sizes[1:]))):
            raise ValueError(f"prior_sizes {sizes}: fractions of the image side in (0, 1.5], strictly increasing")
        if self.prior_aspect_ratios is not None and any(r < 1 for rs in self.prior_aspect_ratios for r in rs):
            raise ValueError(f"prior_aspect_ratios {self.prior_aspect_ratios}: ratios >= 1 (each adds r and 1/r)")
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"prior_max_ratio {hi} must be greater than prior_min_ratio {lo}")
        if lo is not None and first is not None and not first < lo:
            raise ValueError(f"prior_first_ratio {first} must be smaller than prior_min_ratio {lo}")
        return self


class SyntheticConfig(_Section):
    """Generate the synthetic shapes set at `data.root` when it is absent (ssd_core.synth): 1..max_objects
    shapes per image, sides log-uniform in [min_side, max_side] of the short side, unlabelled clutter."""

    images: int = Field(200, gt=0)
    seed: int = 0
    image_size: int = Field(160, ge=32)
    min_side: float = Field(0.08, gt=0, le=1)
    max_side: float = Field(0.55, gt=0, le=1)
    max_objects: int = Field(4, ge=1)
    clutter: bool = True

    @model_validator(mode="after")
    def _sides_ordered(self) -> "SyntheticConfig":
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} must not exceed max_side {self.max_side}")
        return self

    def generator_args(self) -> dict:
        """The keyword arguments of ssd_core.synth.ensure_synthetic."""
        return self.model_dump()


class DataConfig(_Section):
    """Where the images and annotations are, which classes they hold, and the three splits:

    train_sets  what the model trains on (minus the holdout slice when `holdout` is set)
    val_sets    the SELECTION split: best.pt, ASHA and the Optuna objective look at it (`val/...`)
    holdout     instead of val_sets: this fraction of the training images, a deterministic slice
                (by a hash of each image's id and holdout_seed, the same for every seed and arm)
    test_sets   the REPORTED split, scored once at the selected checkpoint (`test/...`); never used
                to choose anything
    Neither val_sets nor holdout: no selection split; the last epoch is the selected checkpoint.
    """

    format: Literal["voc", "coco"] = "voc"
    root: Optional[str] = None          # null -> $SSDLAB_DATA_ROOT -> default_root
    default_root: Optional[str] = None  # per-config fallback, e.g. ../shared/data/bccd
    train_sets: list[str] = Field(default_factory=lambda: ["VOC2007/trainval", "VOC2012/trainval"])
    val_sets: list[str] = Field(default_factory=list)
    holdout: Optional[float] = Field(None, gt=0, lt=1)
    holdout_seed: int = 0
    test_sets: list[str] = Field(default_factory=list)
    class_names: Optional[list[str]] = None  # null -> VOC classes or inferred from the annotations
    # Objects marked difficult are left out of training (and ignored by the VOC metric). The original
    # SSD (Caffe) trains on them; set true to do the same.
    keep_difficult: bool = False
    num_workers: int = Field(0, ge=0)
    cache_images: bool = False
    synthetic: Optional[SyntheticConfig] = None

    @model_validator(mode="after")
    def _check_lists(self) -> "DataConfig":
        if not self.train_sets:
            raise ValueError("train_sets is empty: expected at least one image set")
        if self.val_sets and self.holdout is not None:
            raise ValueError(f"holdout {self.holdout} and val_sets {self.val_sets} are two selection splits: "
                             f"set one of them")
        chosen_on = set(self.val_sets) & set(self.test_sets)
        if chosen_on:
            raise ValueError(f"test_sets {sorted(chosen_on)} also in val_sets: a model selected on the split it is "
                             f"reported on is optimistically biased; use another val set or data.holdout")
        trained_on = set(self.train_sets) & set(self.test_sets)
        if trained_on:
            raise ValueError(f"test_sets {sorted(trained_on)} also in train_sets")
        if self.class_names is not None:
            if not self.class_names:
                raise ValueError("class_names is empty: expected null or a list of names")
            dup = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
            if dup:
                raise ValueError(f"class_names repeats {dup}")
            if "background" in self.class_names or "__background__" in self.class_names:
                raise ValueError("class_names must not list the background class (it is class 0)")
        return self


class ZoomOutConfig(_Section):
    """Zoom out ("expansion", paper section 3.6): place the image on a canvas up to `max` times larger."""

    p: float = Field(0.5, ge=0, le=1)
    max: float = Field(4.0, ge=1)


class SamplePatchConfig(_Section):
    """Sample patch (paper section 2.2, data augmentation): random crops with a minimum IoU.
    Field names are those ssd_core.augment.augment_settings reads."""

    enabled: bool = True
    # null = use the whole image; the paper's options 0.1, 0.3, 0.5, 0.7, 0.9.
    min_ious: list[Optional[float]] = Field(default_factory=lambda: [None, 0.1, 0.3, 0.5, 0.7, 0.9])
    any_patch: bool = True     # also the paper's "randomly sample a patch" (no IoU constraint)
    whole_image: bool = False  # add the whole image as an option when min_ious lacks a null
    min_scale: float = Field(0.3, gt=0, le=1)
    max_aspect: float = Field(2.0, ge=1)
    max_trials: int = Field(50, gt=0)

    @model_validator(mode="after")
    def _ious_in_range(self) -> "SamplePatchConfig":
        bad = [v for v in self.min_ious if v is not None and not 0 <= v <= 1]
        if bad:
            raise ValueError(f"min_ious {bad} outside [0, 1]")
        if self.enabled and not self.min_ious and not self.any_patch:
            raise ValueError("min_ious is empty and any_patch is false: sample patch has no options")
        return self


class AugmentConfig(_Section):
    """The paper's training augmentation (section 2.2) plus zoom out (section 3.6)."""

    photometric: bool = True
    channel_swap: bool = False  # the reference ports' "random lighting noise"; not in the paper
    zoom_out: ZoomOutConfig = Field(default_factory=ZoomOutConfig)
    sample_patch: SamplePatchConfig = Field(default_factory=SamplePatchConfig)
    flip: bool = True


class ScheduleConfig(_Section):
    """Learning-rate schedule after warmup. Milestones count `unit`s (iterations or epochs); with unit
    "time" the schedule runs on elapsed wall-clock time over train.time_budget_s (milestones are
    fractions of it), so a budgeted run anneals exactly when its budget ends on any machine."""

    type: Literal["multistep", "cosine", "constant"] = "multistep"
    unit: Literal["iter", "epoch", "time"] = "iter"
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0, le=1)

    @model_validator(mode="after")
    def _milestones_increase(self) -> "ScheduleConfig":
        m = self.milestones
        if any(v <= 0 for v in m) or any(b <= a for a, b in zip(m, m[1:])):
            raise ValueError(f"milestones {m} must be positive and strictly increasing")
        return self


class TrainConfig(_Section):
    """The optimisation recipe (paper section 3): SGD 1e-3, momentum 0.9, wd 5e-4, batch 32."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(32, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    no_decay_norm_bias: bool = False
    warmup_iters: int = Field(0, ge=0)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    max_iters: Optional[int] = Field(None, gt=0)  # an iteration budget; overrides epochs when set
    grad_clip: Optional[float] = Field(None, gt=0)
    # Mixed precision (ssd_core/precision.py): auto = bf16 autocast + channels_last on CUDA and on CPUs with
    # bf16 instructions (AMX-BF16, AVX512-BF16), fp32 where bf16 would be slower; bf16 as asked; fp16 on CUDA.
    # The loss and the evaluation stay fp32 on a CPU.
    amp: Literal["off", "auto", "bf16", "fp16"] = "off"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(20, gt=0)
    time_budget_s: Optional[float] = Field(None, gt=0)  # wall-clock stop (seconds, evaluation included)

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        """YAML 1.1 reads a bare `off` as false (`amp: off`, `-o train.amp=off`): that is the "off" it means."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _time_schedule_has_budget(self) -> "TrainConfig":
        s = self.schedule
        if s.unit == "time":
            if self.time_budget_s is None:
                raise ValueError("schedule.unit 'time' needs train.time_budget_s (the seconds the schedule spans)")
            if any(m >= 1 for m in s.milestones):
                raise ValueError(f"schedule.milestones {s.milestones}: with unit 'time' they are fractions "
                                 f"of train.time_budget_s, each in (0, 1)")
        return self


class EvalConfig(_Section):
    """Inference and the metric (paper section 3: NMS 0.45, conf 0.01, 200 per image)."""

    every_epochs: int = Field(1, gt=0)
    score_threshold: float = Field(0.01, ge=0, lt=1)
    nms_threshold: float = Field(0.45, gt=0, le=1)
    top_k: int = Field(400, gt=0)
    max_detections: int = Field(200, gt=0)
    metric: Literal["voc07", "voc_area", "coco"] = "voc07"  # the selection metric, on the val split
    batch_size: Optional[int] = Field(None, gt=0)  # null -> train.batch_size
    # Budget points: also score the test split at these fractions of the training budget (its own unit:
    # iterations, epochs or train.time_budget_s), each at the checkpoint that is best on the selection split
    # so far: `test_at/...` metrics and detections at that epoch (ssd_core/metrics.py). A point falls on the
    # first evaluated epoch at or past its fraction, so it adds no evaluation of the selection split and
    # changes nothing else (not in config_hash). The report's "Δ along the budget" reads them.
    test_at: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _budget_points(self) -> "EvalConfig":
        t = self.test_at
        if any(not 0 < f <= 1 for f in t) or any(b <= a for a, b in zip(t, t[1:])):
            raise ValueError(f"test_at {t}: fractions of the budget in (0, 1], strictly increasing")
        return self


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
            model = data.get("model")
            if isinstance(model, dict):  # the fitted-default-box keys, likewise, while unused
                for key in OPTIONAL_MODEL_KEYS:
                    if key in model and model[key] == ModelConfig.model_fields[key].default:
                        model.pop(key)
        return data


OPTIONAL_SECTIONS = {"distill": DistillConfig, "deploy": DeployConfig}
OPTIONAL_MODEL_KEYS = ("prior_sizes", "prior_aspect", "prior_aspect_ratios", "prior_max_boxes")


# Keys that do not change the trained weights or the metrics: left out of config_hash.
HASH_EXCLUDED = frozenset({
    "name", "tracking", "output", "data.root", "data.default_root", "data.cache_images",
    "train.log_every", "deploy", "eval.test_at",
})


# ---------------------------------------------------------------- errors


def _format_errors(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            near = difflib.get_close_matches(key, sorted(config_keys()), n=1)
            msg = "unknown key" + (f" (did you mean {near[0]!r}?)" if near else "")
        elif err["type"] == "value_error" and isinstance(err.get("input"), dict):
            # a section check: its message starts with the field it is about ("image_size 32 ...")
            field = msg.split(" ", 1)[0].rstrip(":")
            if field.split(".", 1)[0] in err["input"]:
                key = f"{key}.{field}" if key != "<root>" else field
        elif "input" in err and err["type"] != "missing":
            msg = f"{msg} (got {short(err['input'])})"
        lines.append(f"{source}: {key}: {msg}")
    return ConfigError("invalid config: " + "; ".join(lines))


def validate_section(model: type[BaseModel], data: Mapping[str, Any], prefix: str, source: str = "<config>"):
    """One section (ModelConfig, AugmentConfig, ...) from a plain dict, or ConfigError naming the keys
    as `<prefix>.<key>`: what build_ssd and SSDAugmentation use when called without a whole config."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        err = _format_errors(exc, source)
        raise ConfigError(str(err).replace(f"{source}: ", f"{source}: {prefix}.")) from None


def validate_config(data: Mapping[str, Any], source: str = "<config>") -> ExperimentConfig:
    """A plain dict -> ExperimentConfig, or ConfigError naming `source` and the dotted keys."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        cfg = ExperimentConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise _format_errors(exc, source) from None
    cfg._source = source
    return cfg


# ---------------------------------------------------------------- loading and overrides


def load_config(path: Union[str, os.PathLike], overrides: Union[Iterable[str], Mapping[str, Any]] = ()
                ) -> ExperimentConfig:
    """Read a YAML config, apply `overrides` ("a.b=1" strings or a {dotted: value} dict), validate."""
    path = Path(path)
    data = read_yaml(path, "config") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    if "experiment" in data and {"arms", "search", "design", "seeds"} & set(data):
        raise ConfigError(f"{path}: this is a sweep file, not an experiment config: `ssdlab sweep {path} --dry-run` "
                          f"shows its plan")
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides, source=str(path))
    data = _set_paths(data, overrides, str(path))
    return validate_config(data, str(path))


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: 'line L, column C: problem (context)'."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}" + (f" ({context})" if context else "")


# YAML aliases let a small file stand for an enormous value (a "billion laughs": a list of 9 aliases of a list of
# 9 aliases of ...): configs and sweeps are refused when their values, with every alias expanded, pass this size.
MAX_YAML_VALUES = 100_000
MAX_YAML_BYTES = 10_000_000


class _Loader(yaml.SafeLoader):
    """safe_load's loader, refusing duplicate keys (naming the key and both lines)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class says so
                    break
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {short(key, 60)} (first on line {first + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def expanded_size(value: Any, limit: int = MAX_YAML_VALUES) -> tuple[int, int]:
    """(expanded, written): the number of scalars and containers `value` holds with shared (aliased) parts
    counted as often as they appear, computed without expanding them (stops counting past `limit`), and the
    number of distinct ones the file wrote."""
    memo: dict[int, int] = {}
    written = [0]

    def size(v: Any, depth: int = 0) -> int:
        if depth > 200:
            return limit + 1
        if isinstance(v, dict):
            items = list(v.keys()) + list(v.values())
        elif isinstance(v, list):
            items = v
        else:
            return 1
        key = id(v)
        if key not in memo:
            memo[key] = limit + 1  # a cycle counts as too large
            written[0] += 1 + sum(not isinstance(x, (dict, list)) for x in items)
            total = 1
            for x in items:
                total += size(x, depth + 1)
                if total > limit:
                    break
            memo[key] = total
        return memo[key]

    return size(value), written[0]


def short(value: Any, limit: int = 120) -> str:
    """`value` as text for an error message, cut to `limit` characters (a value can be huge)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = limit, limit, 8, 8, 3
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _kind(path: Path) -> str:
    """What a path that is not a regular file is."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return "not readable"
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_yaml(path: Union[str, os.PathLike], what: str = "config") -> Any:
    """`yaml.safe_load` of a file, or ConfigError in one line naming the file (and line and column):
    missing, not a regular file (a folder, a device, a FIFO: said which), unreadable, larger than
    MAX_YAML_BYTES, not UTF-8 text, not valid YAML, a key given twice, values that expand (YAML aliases) past
    MAX_YAML_VALUES."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: {what} file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file but {_kind(path)} (a {what} file is a YAML file)")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes: larger than a {what} file can be "
                              f"({MAX_YAML_BYTES // 1_000_000} MB)")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
                          ) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error_line(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    expanded, written = expanded_size(data)
    if expanded > MAX_YAML_VALUES and expanded > 10 * written:  # aliases, not a long literal list
        raise ConfigError(f"{path}: its values expand (YAML aliases) to more than {MAX_YAML_VALUES:,} items: "
                          f"refused (a {what} file is small)")
    return data


# YAML 1.1 reads "1e-3" (no dot) as a string; overrides read it as the number a user means.
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_overrides(items: Iterable[str], source: str = "<overrides>") -> dict[str, Any]:
    """["train.lr=0.01", "data.class_names=[a, b]"] -> {"train.lr": 0.01, ...}; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if str(item).startswith("@"):  # -o @best_hyperparameters.yaml
            out.update(_override_file(str(item)[1:], source))
            continue
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{source}: override {item!r}: expected key=value, e.g. train.lr=0.01")
        try:
            value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
            out[key] = float(value) if isinstance(value, str) and _FLOAT.fullmatch(value) else value
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: override {key}: value {raw!r} is not valid YAML: "
                              f"{yaml_error_line(exc)}") from None
    return out


def _override_file(path: str, source: str) -> dict[str, Any]:
    """`-o @FILE`: a YAML mapping of dotted keys (a search's best_hyperparameters.yaml) or of nested sections."""
    p = Path(path).expanduser()
    try:
        data = yaml.load(p.read_text(), Loader=_Loader)
    except OSError as exc:
        raise ConfigError(f"{source}: override file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: override file {path}: not valid YAML: {yaml_error_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys (train.lr: 0.01), got {type(data).__name__}")
    out: dict[str, Any] = {}
    keys = config_keys()

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and f"{prefix}{k}" not in keys:
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
    walk(data, "")
    return out


def apply_overrides(cfg: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """A new, validated config with the {dotted.key: value} overrides applied."""
    source = cfg.source
    data = _set_paths(cfg.model_dump(mode="json"), overrides, source)
    return validate_config(data, source)


def _set_paths(data: dict, overrides: Mapping[str, Any], source: str) -> dict:
    data = copy.deepcopy(data)
    valid = config_keys()
    for key, value in overrides.items():
        if key not in valid:
            near = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{source}: override {key}: unknown key{hint}")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # e.g. data.synthetic.images while data.synthetic is null
            node = node[part]
        node[parts[-1]] = value
    return data


# ---------------------------------------------------------------- views of a config


def _sections(model: type[BaseModel]) -> dict[str, Any]:
    """field name -> the nested section class (or None for a leaf)."""
    out = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        args = get_args(ann) if get_origin(ann) is Union else (ann,)
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        out[name] = nested[0] if nested else None
    return out


def config_keys(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> set[str]:
    """Every valid dotted path: the leaves, plus optional sections themselves (`data.synthetic`)."""
    keys: set[str] = set()
    for name, nested in _sections(model).items():
        path = prefix + name
        if nested is None:
            keys.add(path)
        else:
            if not model.model_fields[name].is_required() and model.model_fields[name].default is None:
                keys.add(path)
            keys |= config_keys(nested, path + ".")
    return keys


def flatten(cfg: ExperimentConfig) -> dict[str, Any]:
    """Dotted keys -> scalars (lists as JSON strings): the MLflow params."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, list):
            out[prefix[:-1]] = json.dumps(node)
        else:
            out[prefix[:-1]] = node

    walk(cfg.model_dump(mode="json"), "")
    return out


def config_hash(cfg: ExperimentConfig) -> str:
    """12 hex chars: sha256 of the sorted-key JSON of the resolved config minus HASH_EXCLUDED keys."""
    data = cfg.model_dump(mode="json")
    for key in HASH_EXCLUDED:
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.get(part) or {}
        node.pop(last, None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (loadable again with load_config)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None)


def resolve_data_root(cfg: ExperimentConfig) -> Path:
    """`data.root`, else $SSDLAB_DATA_ROOT, else `data.default_root`; relative paths from the cwd,
    then from the repository root. ConfigError when none is set."""
    raw = cfg.data.root or os.environ.get(DATA_ROOT_ENV) or cfg.data.default_root
    if not raw:
        raise ConfigError(f"{cfg.source}: data.root: not set; expected a path in the config, "
                          f"-o data.root=PATH or ${DATA_ROOT_ENV}")
    path = Path(raw).expanduser()
    if not path.is_absolute() and not path.exists():
        repo = Path(__file__).resolve().parent.parent
        if (repo / path).exists():
            path = repo / path
    return path
