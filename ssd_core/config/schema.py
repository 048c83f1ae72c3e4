"""The config schema: one pydantic section per part of the SSD recipe, each field with its default and range.

    BACKBONES                     the base networks and what the model section may set for each
    ModelConfig                   the network (paper sec. 2.1): base, input size, heads, and the default-box
                                  scales s_k (eq. 4; ssd_core/priors.py lays them out, ssd_core/prior_fit/ fits them)
    DataConfig, SyntheticConfig   the images, the classes and the train / selection / test splits
    AugmentConfig                 the training augmentation (sec. 2.2: sample patch, flip, photometric
                                  distortion) and zoom out (sec. 3.6); ssd_core/augment.py reads it
    TrainConfig, ScheduleConfig   the optimisation recipe (sec. 3: SGD 1e-3, momentum 0.9, wd 5e-4, batch 32)
    EvalConfig                    inference and the metric (sec. 3: NMS 0.45, conf 0.01, 200 per image)

Every section refuses unknown keys, inf and nan, and numbers a float32 cannot hold (_Section). The sections
the lab adds (distill, deploy, tracking, output) and the whole ExperimentConfig are in experiment.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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
    # to the training boxes (ssd_core/prior_fit/) and written into prior_sizes of the resolved config.
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
    test_holdout  instead of test_sets (a dataset that has no test split): this fraction of the training
                images, a hashed slice like `holdout`'s, taken first; the holdout comes from the rest
    Neither val_sets nor holdout: no selection split; the last epoch is the selected checkpoint.

    What a set names depends on the format (ssd_core/data/): voc, an image set "<subdir>/<split>" or a
    LabelImg folder; coco, a set name (val2017), a Roboflow split folder or an instances JSON by path; yolo,
    a data.yaml split (train / val / test) or a folder / list file, with `root` the data.yaml.
    """

    format: Literal["voc", "coco", "yolo"] = "voc"
    root: Optional[str] = None          # null -> $SSDLAB_DATA_ROOT -> default_root
    default_root: Optional[str] = None  # per-config fallback, e.g. ../shared/data/bccd
    train_sets: list[str] = Field(default_factory=lambda: ["VOC2007/trainval", "VOC2012/trainval"])
    val_sets: list[str] = Field(default_factory=list)
    holdout: Optional[float] = Field(None, gt=0, lt=1)
    holdout_seed: int = 0
    test_sets: list[str] = Field(default_factory=list)
    test_holdout: Optional[float] = Field(None, gt=0, lt=1)
    # An image that cannot be read: false refuses to start (naming the files, checked before training);
    # true trains past it, and the run records how many it skipped and which (rundir.DATA_RECORD).
    skip_bad: bool = False
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
        if self.test_sets and self.test_holdout is not None:
            raise ValueError(f"test_holdout {self.test_holdout} and test_sets {self.test_sets} are two test splits: "
                             f"set one of them")
        if self.test_holdout is not None and (self.holdout or 0) + self.test_holdout >= 1:
            raise ValueError(f"test_holdout {self.test_holdout} + holdout {self.holdout} leave no training images")
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
