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

Where each part lives (everything below is importable from `ssd_core.config`):

    schema.py      the sections of the SSD recipe: ModelConfig (sec. 2.1, default-box scales of eq. 4),
                   DataConfig, AugmentConfig (sec. 2.2, zoom out 3.6), TrainConfig (sec. 3), EvalConfig
                   (sec. 3: NMS 0.45, conf 0.01, 200 per image); BACKBONES
    experiment.py  ExperimentConfig, the whole config: those sections plus distill, deploy, tracking,
                   output; HASH_EXCLUDED, DEFAULT_TRACKING_URI
    validate.py    a plain dict -> a validated config or section, errors naming file and dotted key
    yaml_io.py     reading a YAML file safely (one-line errors, duplicate keys, alias bombs)
    overrides.py   load_config: the file, then the `-o key=value` grammar, then validation
    views.py       what a config is read as: its dotted keys, flat MLflow params, hash, YAML text,
                   the data root it names
"""
from __future__ import annotations

from ssd_core.config.experiment import (
                                        DEFAULT_TRACKING_URI,
                                        HASH_EXCLUDED,
                                        OPTIONAL_KEYS,
                                        OPTIONAL_SECTIONS,
                                        DeployConfig,
                                        DistillConfig,
                                        ExperimentConfig,
                                        OutputConfig,
                                        TrackingConfig,
)
from ssd_core.config.overrides import apply_overrides, load_config, parse_overrides
from ssd_core.config.schema import (
                                        BACKBONES,
                                        FLOAT32_MAX,
                                        MAX_IMAGE_SIZE,
                                        MIN_IMAGE_SIZE,
                                        AugmentConfig,
                                        Backbone,
                                        DataConfig,
                                        EvalConfig,
                                        ModelConfig,
                                        SamplePatchConfig,
                                        ScheduleConfig,
                                        SyntheticConfig,
                                        TrainConfig,
                                        ZoomOutConfig,
)
from ssd_core.config.validate import short, validate_config, validate_section
from ssd_core.config.views import DATA_ROOT_ENV, config_hash, config_keys, flatten, resolve_data_root, to_yaml
from ssd_core.config.yaml_io import (
                                        MAX_YAML_BYTES,
                                        MAX_YAML_VALUES,
                                        expanded_size,
                                        file_kind,
                                        read_yaml,
                                        yaml_error_line,
)

__all__ = [
    # schema.py
    "Backbone", "BACKBONES", "MIN_IMAGE_SIZE", "MAX_IMAGE_SIZE", "FLOAT32_MAX",
    "ModelConfig", "SyntheticConfig", "DataConfig", "ZoomOutConfig", "SamplePatchConfig", "AugmentConfig",
    "ScheduleConfig", "TrainConfig", "EvalConfig",
    # experiment.py
    "DistillConfig", "DeployConfig", "DEFAULT_TRACKING_URI", "TrackingConfig", "OutputConfig", "ExperimentConfig",
    "OPTIONAL_SECTIONS", "OPTIONAL_KEYS", "HASH_EXCLUDED",
    # validate.py
    "validate_config", "validate_section", "short",
    # yaml_io.py
    "read_yaml", "yaml_error_line", "expanded_size", "MAX_YAML_VALUES", "MAX_YAML_BYTES", "file_kind",
    # overrides.py
    "load_config", "parse_overrides", "apply_overrides",
    # views.py
    "config_keys", "flatten", "config_hash", "to_yaml", "resolve_data_root", "DATA_ROOT_ENV",
]
