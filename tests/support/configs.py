"""The tiny experiment configs the tests train: 64 px, MobileNetV2 x0.35 on the synthetic shapes (as an
ExperimentConfig for fit, as a YAML file for the `ssdlab` command)."""
from __future__ import annotations

from pathlib import Path

import yaml

from ssd_core.config import ExperimentConfig, validate_config

CLASSES = ["circle", "square", "triangle", "cross"]


def tiny_config(root: Path, out: Path, **train) -> ExperimentConfig:
    return validate_config({
        "name": "tiny",
        "model": {"backbone": "mobilenet_v2", "image_size": 64, "width_mult": 0.35, "lite_heads": True},
        "data": {"root": str(root), "train_sets": ["SHAPES/train"], "val_sets": ["SHAPES/val"], "test_sets": ["SHAPES/test"],
                 "class_names": CLASSES, "synthetic": {"images": 40, "seed": 0, "image_size": 96}},
        "augment": {"photometric": True, "zoom_out": {"p": 0.5, "max": 2.0}, "flip": True},
        "train": {"epochs": 3, "batch_size": 8, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4,
                  "warmup_iters": 2, "schedule": {"type": "cosine"}, "device": "cpu", "log_every": 100, **train},
        "eval": {"every_epochs": 1, "score_threshold": 0.05},
        "output": {"dir": str(out)},
    }, source="tiny.yaml")


def tiny_yaml(tmp_path: Path) -> Path:
    data = {
        "name": "cli_tiny",
        "model": {"backbone": "mobilenet_v2", "image_size": 64, "width_mult": 0.35, "lite_heads": True},
        "data": {"root": str(tmp_path / "shapes"), "train_sets": ["SHAPES/train"], "val_sets": ["SHAPES/val"], "test_sets": ["SHAPES/test"],
                 "class_names": ["circle", "square", "triangle", "cross"],
                 "synthetic": {"images": 30, "seed": 1, "image_size": 96}},
        "train": {"epochs": 2, "batch_size": 8, "optimizer": "adamw", "lr": 3e-3, "warmup_iters": 1,
                  "schedule": {"type": "constant"}, "device": "cpu"},
        "eval": {"score_threshold": 0.05},
        "tracking": {"experiment": "cli-test"},
        "output": {"dir": str(tmp_path / "runs")},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
