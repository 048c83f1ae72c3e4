"""The config side of fitted default boxes: `model.prior_scales: auto` (and `model.prior_aspect: auto`)
resolved into model.prior_sizes (and model.prior_aspect_ratios) fitted to data.train_sets, once per process
and training split; and the default-box layout any model section asks for.

    training_boxes(cfg)              the training split's boxes as the fit and the coverage see them
    resolve_priors(cfg)              the config with the fitted keys written in (unchanged when nothing to fit)
    spec_of(cfg)                     the PriorSpec the config's model lays out, without building the model
                                     (a model section -> its PriorSpec: ssd_core.priors.model_prior_spec)
"""
from __future__ import annotations

import numpy as np

from ssd_core.errors import ConfigError
from ssd_core.prior_fit.fit import fit_sizes


def training_boxes(cfg, dataset=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(boxes [N, 4] normalised xyxy, labels [N], class names) of the training split as fit trains on it
    (difficult objects only with data.keep_difficult); `dataset`: that split already built."""
    from ssd_core.build import build_dataset

    ds = dataset if dataset is not None else build_dataset(cfg, "train", train=False)
    parts, labs = [], []
    for i in range(len(ds)):
        t = ds.annotation(i)
        w, h = ds.image_size(i)
        b = np.asarray(t.boxes, np.float64).reshape(-1, 4) / np.array([w, h, w, h], np.float64)
        keep = np.ones(len(b), bool) if cfg.data.keep_difficult else ~np.asarray(t.difficult, bool).reshape(-1)
        parts.append(np.clip(b[keep], 0, 1))
        labs.append(np.asarray(t.labels, np.int64).reshape(-1)[keep])
    boxes = np.concatenate(parts) if parts else np.zeros((0, 4))
    labels = np.concatenate(labs) if labs else np.zeros(0, np.int64)
    return boxes, labels, list(ds.class_names)


def layout(model_cfg) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(feature map sizes, steps) the model section's network lays its default boxes on; measured once per
    network (the model section without its prior_* keys, which do not change the maps)."""
    from ssd_core.model import feature_map_sizes
    from ssd_core.priors import default_steps

    network = tuple(sorted((k, repr(v)) for k, v in model_cfg.model_dump().items() if not k.startswith("prior_")))
    if network not in _LAYOUTS:
        maps = tuple(feature_map_sizes(model_cfg))
        _LAYOUTS[network] = maps, default_steps(model_cfg.image_size, maps)
    return _LAYOUTS[network]


_LAYOUTS: dict = {}  # the network's model keys -> (feature map sizes, steps)


def resolve_priors(cfg):
    """`cfg` with model.prior_scales: auto resolved: model.prior_sizes (and, with model.prior_aspect: auto,
    model.prior_aspect_ratios) fitted to the training split. Unchanged when nothing is to fit."""
    model = cfg.model
    if model.prior_scales != "auto" or (model.prior_sizes is not None and
                                        (model.prior_aspect != "auto" or model.prior_aspect_ratios is not None)):
        return cfg
    from ssd_core.config import apply_overrides, config_hash

    key = (config_hash(cfg), str(cfg.data.root), cfg.source, _data_stamp(cfg))
    fitted = _fitted(key, cfg)
    out = apply_overrides(cfg, fitted)
    out._source = cfg.source
    return out


_FITS: dict = {}  # (config hash, data root, source, data stamp) -> the fitted keys: one fit per process


def _data_stamp(cfg) -> tuple:
    """(path, size, mtime) of the training split's list or annotation files: a changed split is fitted anew."""
    from ssd_core.config import resolve_data_root

    try:
        root = resolve_data_root(cfg)
    except ConfigError:
        return ()
    out = []
    for name in cfg.data.train_sets:
        sub, _, split = name.rpartition("/")
        for path in (root / sub / "ImageSets" / "Main" / f"{split}.txt", root / "annotations" / f"instances_{name}.json",
                     root / name, root):  # VOC, COCO, COCO or YOLO by path, the data.yaml
            if path.is_file():
                st = path.stat()
                out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _fitted(key, cfg) -> dict:
    if key not in _FITS:
        boxes, labels, names = training_boxes(cfg)
        if len(boxes) == 0:
            raise ConfigError(f"{cfg.source}: model.prior_scales: auto: the training split ({', '.join(cfg.data.train_sets)}) "
                              f"has no boxes to fit the default boxes to")
        _FITS[key] = fit_keys(cfg, boxes, labels, len(names))
    return _FITS[key]


def fit_keys(cfg, boxes: np.ndarray, labels: np.ndarray, classes: int) -> dict:
    """The fitted model keys (model.prior_sizes, and model.prior_aspect_ratios with prior_aspect: auto) of the
    model section of `cfg` for the normalised `boxes` with `labels` in 1..classes."""
    maps, steps = layout(cfg.model)
    f = fit_sizes(maps, steps, cfg.model.image_size, boxes, labels, classes, aspect=cfg.model.prior_aspect == "auto",
                  max_boxes=cfg.model.prior_max_boxes)
    out = {"model.prior_sizes": [round(s, 6) for s in f.sizes]}
    if cfg.model.prior_aspect == "auto":
        out["model.prior_aspect_ratios"] = f.aspect_ratios
    return out


def spec_of(cfg):
    """The PriorSpec the config's model lays out (fitted sizes included), without building the model."""
    from ssd_core.priors import model_prior_spec

    maps, _ = layout(cfg.model)
    return model_prior_spec(cfg.model, maps)
