"""Everything a training run is built from, by its config: the device, the dataset of each split, the
model, the optimizer. `fit` (train.py), the evaluation (inference.py) and the CLI use these.

    split_sets(cfg, split)       'train' | 'val' | 'test' | an image set -> (image sets, holdout side)
    build_dataset(cfg, split)    that split's dataset (None when the config has no such split)
    build_splits(cfg)            train, val and test, their images' headers checked (data.skip_bad): what
                                 fit trains on, and what a sweep or `ssdlab train` checks before launching
    build_model(cfg, classes)    ssd_core.model.build_ssd from cfg.model
    build_optimizer(cfg, model)  SGD (the paper's) or AdamW, optionally no decay on norms and biases
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from ssd_core.config import ExperimentConfig, config_hash, resolve_data_root
from ssd_core.errors import ConfigError, DataError


def cap_gpu_memory(fraction: float) -> None:
    """Trials packed on one GPU (fractional-GPU sweep trials, benchmarks/gpu_ablation.py): cap this process's
    CUDA memory to its share, so one trial's growth fails that trial, not its neighbours."""
    if 0 < fraction < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(fraction)


def resolve_device(cfg: ExperimentConfig) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.source}: train.device: 'cuda' requested but no CUDA device is available")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def default_run_dir(cfg: ExperimentConfig) -> Path:
    """runs/<name>-<config hash>: the same config resumes into the same folder."""
    return Path(cfg.output.dir) / f"{cfg.name}-{config_hash(cfg)}"


def split_sets(cfg: ExperimentConfig, split: str) -> tuple[list[str], Optional[str]]:
    """(image sets, side of the pool) of a split: 'train' -> data.train_sets, less the holdout and
    test_holdout slices; 'val' -> data.val_sets, or the holdout slice of data.train_sets ([] when neither);
    'test' -> data.test_sets, or the test_holdout slice of data.train_sets; anything else is an image set
    name ('BCCD/test', 'val2017'). The side ("train" | "val" | "test", data.pool_sides) is None when no
    slice is taken."""
    d = cfg.data
    sliced = d.holdout is not None or d.test_holdout is not None
    if split == "train":
        return list(d.train_sets), ("train" if sliced else None)
    if split == "val":
        if d.val_sets:
            return list(d.val_sets), None
        return (list(d.train_sets), "val") if d.holdout is not None else ([], None)
    if split == "test":
        if d.test_sets:
            return list(d.test_sets), None
        return (list(d.train_sets), "test") if d.test_holdout is not None else ([], None)
    return [split], None


def build_dataset(cfg: ExperimentConfig, split: str, train: bool, class_names: Optional[Sequence[str]] = None,
                  transform: bool = True):
    """The dataset for `split` (see split_sets) with the training augmentation (train=True) or a plain
    resize (transform=False: none, the raw images); None when the config has no such split (no
    val_sets/holdout, or no test_sets/test_holdout). `class_names` (default data.class_names) fixes the
    label order, e.g. the training set's classes."""
    from ssd_core import data as D
    from ssd_core.augment import build_transform

    sets, side = split_sets(cfg, split)
    if not sets:
        return None
    root = resolve_data_root(cfg)
    if cfg.data.synthetic is not None:  # idempotent: regenerates only a missing, partial or different set
        from ssd_core.synth import ensure_synthetic
        ensure_synthetic(root, **cfg.data.synthetic.generator_args())
    if not root.exists():
        raise ConfigError(f"{cfg.source}: data.root: {root} does not exist")
    names = cfg.data.class_names if class_names is None else list(class_names)
    d = cfg.data
    try:
        ds = D.open_sets(d.format, root, sets, build_transform(cfg.augment, cfg.model.image_size, train=train)
                         if transform else None, class_names=names, keep_difficult=d.keep_difficult,
                         skip_bad=d.skip_bad, cache_images=d.cache_images)
        if side is not None:
            D.take_side(ds, side, d.holdout, d.test_holdout, d.holdout_seed)
    except DataError as exc:
        if names is not None and "class" in str(exc) and "class id" not in str(exc):
            raise ConfigError(f"{cfg.source}: data.class_names {names} do not match the data: {exc}") from None
        if "holdout" in str(exc):
            raise ConfigError(f"{cfg.source}: data.holdout: {exc}") from None
        raise
    return ds


def build_splits(cfg: ExperimentConfig, transform: bool = True) -> tuple[dict, dict[str, list[str]]]:
    """({"train", "val", "test"} -> dataset or None, split -> the unreadable images left out). Every image's
    header is read first: one that cannot be read stops here in one line naming the files (DataError), or,
    with data.skip_bad, leaves its split and is listed. The val and test classes follow train's."""
    from ssd_core.data import drop_unreadable

    out: dict = {"train": build_dataset(cfg, "train", train=True, transform=transform)}
    names = list(out["train"].class_names)
    for split in ("val", "test"):
        out[split] = build_dataset(cfg, split, train=False, class_names=names, transform=transform)
    skipped = drop_unreadable(out, f"{cfg.source}: data", cfg.data.skip_bad)
    if len(out["train"]) == 0:
        raise DataError(f"{cfg.source}: data.train_sets: no readable training image left")
    return out, skipped


def build_model(cfg: ExperimentConfig, num_classes: int) -> nn.Module:
    """The SSD of cfg.model with `num_classes` classes (background included)."""
    from ssd_core.model import build_ssd
    return build_ssd(cfg.model, num_classes)


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """All parameters decay, or (no_decay_norm_bias) biases and 1-d norm scales do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def build_optimizer(cfg: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    groups = param_groups(model, t.weight_decay, t.no_decay_norm_bias)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.momentum, 0.999))
