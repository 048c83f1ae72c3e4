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


def shrunken_demo_sweep(tmp_path: Path, uri: str, name: str, epochs: int, log_checkpoints: bool,
                        **overrides) -> Path:
    """The demo's recipe at toy size as a sweep file: 2 arms x (2 TPE search trials + 1 confirm run) on 24
    synthetic images at 64 px, `epochs` epochs, logging to `uri`; `overrides` join the sweep's overrides."""
    repo = Path(__file__).resolve().parents[2]
    sweep = {
        "name": name,
        "experiment": str(repo / "experiments" / "configs" / "demo_shapes.yaml"),
        "overrides": {"train.epochs": epochs, "train.batch_size": 4, "model.image_size": 64, "train.log_every": 1000,
                      "data.root": str(tmp_path / "shapes"), "data.synthetic.images": 24, **overrides},
        "search": {"sampler": "tpe", "num_samples": 2, "metric": "val/mAP50", "mode": "max", "seed": 0,
                   "space": {"train.lr": {"loguniform": [1.0e-3, 1.0e-2]},
                             "train.weight_decay": {"loguniform": [1.0e-5, 1.0e-3]}}},
        "arms": {"initial": {"note": "no sample patch", "overrides": {"augment.sample_patch.enabled": False}},
                 "+sample_patch": {"note": "sample patch (paper sec. 2.2)",
                                   "overrides": {"augment.sample_patch.enabled": True}}},
        "seeds": [0, 1],
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": 2,
        "tracking": {"uri": uri, "experiment": name, "log_checkpoints": log_checkpoints},
    }
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path
