"""Inference and scoring: one path from images to detections, used by evaluation, `ssdlab detect`
and the training loop's input (`prepare`).

    detect(model, images, cfg, device)     uint8 images -> normalise -> forward -> postprocess -> Detections
    evaluate_model(model, dataset, cfg)    VOC07 / area mAP (+ per class, + COCO AP) as `<split>/...` metrics
    score_test(model, test_ds, cfg, ...)   the reported split, once, at the selected checkpoint (+ final weights)
    model_from_checkpoint(path)            (model, class names, config) rebuilt from a checkpoint
    evaluate_checkpoint(cfg, path, split)  `ssdlab eval`
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn

from ssd_core import metrics as M
from ssd_core import precision
from ssd_core.build import build_dataset, build_model, resolve_device
from ssd_core.checkpoint import load_checkpoint, load_model_state
from ssd_core.config import ExperimentConfig, validate_config
from ssd_core.errors import CheckpointError, ConfigError


def autocast(cfg: ExperimentConfig, device: torch.device, training: bool = False):
    """The forward's autocast as train.amp resolves on `device` (ssd_core/precision.py): while training the
    resolved dtype; in evaluation on CUDA only (a CPU run scores in fp32)."""
    return precision.autocast(cfg.train, device, training)


def prepare(model: nn.Module, images: torch.Tensor, cfg: ExperimentConfig, device: torch.device) -> torch.Tensor:
    """uint8 images [B, 3, S, S] -> the normalised float input the base network expects, on `device`
    (channels_last when the resolved precision plan says so): the input path of training and inference alike."""
    x = unwrap(model).normalize(images.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if precision.resolve(cfg.train, device).channels_last else x


def unwrap(model: nn.Module) -> nn.Module:
    """The SSD module behind a torch.compile wrapper."""
    return getattr(model, "_orig_mod", model)


@torch.inference_mode()
def detect(model: nn.Module, images: torch.Tensor, cfg: ExperimentConfig, device: torch.device,
           score_threshold: Optional[float] = None):
    """THE inference path: uint8 images -> prepare -> forward -> postprocess (decode + per-class NMS,
    eval.* settings) -> Detections (boxes xyxy in [0, 1]). Evaluation and `ssdlab detect` both use it."""
    from ssd_core.postprocess import NMSSettings, postprocess

    settings = NMSSettings.of(cfg.eval)
    if score_threshold is not None:
        settings = settings._replace(score_threshold=score_threshold)
    with autocast(cfg, device):
        loc, conf = model(prepare(model, images, cfg, device))
    return postprocess(loc.float(), conf.float(), unwrap(model).priors, **settings._asdict())


def predict(model: nn.Module, loader, cfg: ExperimentConfig, device: torch.device, accumulator) -> None:
    """Run `detect` over `loader` in eval mode; add each batch's detections to `accumulator`."""
    was_training = model.training
    model.eval()
    for batch in loader:
        accumulator.add(detect(model, batch.images, cfg, device), batch.indices)
    model.train(was_training)


def eval_loader(dataset, cfg: ExperimentConfig, device: torch.device, batch_size: Optional[int] = None):
    """THE loader a split is scored with: in order, every image, eval.batch_size (else train.batch_size)."""
    from ssd_core.data import make_loader

    return make_loader(dataset, batch_size=batch_size or cfg.eval.batch_size or cfg.train.batch_size, shuffle=False,
                       num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                       pin_memory=device.type == "cuda", persistent_workers=False, drop_last=False)


def voc_metrics(acc, prefix: str) -> dict[str, float]:
    """An accumulator's VOC07 11-point and area mAP@0.5 and per-class AP, named `<prefix>/...`."""
    voc = acc.evaluate(iou_threshold=0.5)
    metrics = {M.map50(prefix): float(voc["mAP50"]), M.map50_area(prefix): float(voc["mAP50_area"])}
    metrics.update({M.class_ap50(prefix, c): float(ap) for c, ap in voc["AP50"].items()})
    return metrics


def evaluate_model(model: nn.Module, dataset, cfg: ExperimentConfig, device: torch.device,
                   prefix: str = M.VAL, reference=None, save_detections=None) -> dict[str, float]:
    """VOC07 11-point and area mAP@0.5 (+ per class), and COCO AP on COCO data, as flat metrics named
    `<prefix>/...` (ssd_core.metrics). `reference`: a DetectionAccumulator.for_dataset(dataset) to reuse
    its ground truth. `save_detections`: also write the detections + ground truth there (.npz)."""
    from ssd_core.data import image_keys
    from ssd_core.evaluate import DetectionAccumulator

    ref = reference if reference is not None else DetectionAccumulator.for_dataset(dataset)
    acc = DetectionAccumulator(ref.class_names, ref.image_sizes, ref.ground_truth)
    predict(model, eval_loader(dataset, cfg, device), cfg, device, acc)
    metrics = voc_metrics(acc, prefix)
    if cfg.data.format == "coco":
        metrics.update(_coco_metrics(dataset, acc, prefix))
    if save_detections is not None:
        acc.save(save_detections, image_keys(dataset))
    return metrics


def _coco_metrics(dataset, acc, prefix: str) -> dict[str, float]:
    from ssd_core.evaluate import evaluate_coco
    results = acc.coco_results(label_to_category=dataset.contiguous_to_cat_id, image_id_map=dataset.ids)
    coco = evaluate_coco(dataset.coco, results)
    return {M.coco_ap(prefix, k): float(coco[k]) for k in M.COCO_KEYS if k in coco}


def score_selected(model: nn.Module, ds, cfg: ExperimentConfig, device: torch.device, selected_checkpoint=None,
                   prefix: str = M.TEST, detections_path=None, reference=None) -> dict[str, float]:
    """`prefix/...` metrics of the selected weights on `ds`: `selected_checkpoint`'s, or the model's own when
    None (it is the selected one); their detections go to `detections_path` (.npz)."""
    if selected_checkpoint is None:
        return evaluate_model(model, ds, cfg, device, prefix=prefix, reference=reference,
                              save_detections=detections_path)
    chosen = copy.deepcopy(model)
    load_model_state(chosen, load_checkpoint(selected_checkpoint, map_location=device), selected_checkpoint)
    try:
        return evaluate_model(chosen, ds, cfg, device, prefix=prefix, reference=reference,
                              save_detections=detections_path)
    finally:
        del chosen


def score_test(model: nn.Module, test_ds, cfg: ExperimentConfig, device: torch.device,
               selected_checkpoint=None, detections_path=None) -> dict[str, float]:
    """The reported split, once: `test/...` at the selected weights (score_selected) and
    `test_last/mAP50(_area)` at the model's current (final) weights."""
    from ssd_core.evaluate import DetectionAccumulator

    reference = DetectionAccumulator.for_dataset(test_ds)
    last = evaluate_model(model, test_ds, cfg, device, prefix=M.TEST, reference=reference,
                          save_detections=detections_path if selected_checkpoint is None else None)
    selected = last if selected_checkpoint is None else score_selected(
        model, test_ds, cfg, device, selected_checkpoint, M.TEST, detections_path, reference)
    out = dict(selected)
    for name in (M.map50, M.map50_area):
        out[M.last_of(name(M.TEST))] = last[name(M.TEST)]
    return out


def config_from_checkpoint(state: dict[str, Any], path) -> ExperimentConfig:
    return validate_config(state["config"], source=f"{path} (config)")


def model_from_checkpoint(path, device: str | torch.device = "cpu"):
    """-> (model in eval mode, class_names, cfg) rebuilt from the config stored in the checkpoint."""
    state = load_checkpoint(path, map_location=device)
    cfg = config_from_checkpoint(state, path)
    model = build_model(cfg, len(state["class_names"]) + 1)
    load_model_state(model, state, path)
    return model.to(device).eval(), list(state["class_names"]), cfg


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint, split: str = "val") -> dict[str, float]:
    """Score `checkpoint` on `split` of `cfg`'s data (`ssdlab eval`): mAP, per-class AP, COCO AP."""
    device = resolve_device(cfg)
    state = load_checkpoint(checkpoint, map_location=device)
    class_names = list(state["class_names"])
    if cfg.data.class_names is not None and list(cfg.data.class_names) != class_names:
        raise CheckpointError(f"{checkpoint}: trained on classes {class_names}, but {cfg.source} "
                              f"data.class_names is {list(cfg.data.class_names)}")
    dataset = build_dataset(cfg, split, train=False, class_names=class_names)
    if dataset is None:
        key = "data.val_sets (or data.holdout)" if split == M.VAL else f"data.{split}_sets"
        raise ConfigError(f"{cfg.source}: {key}: empty, so there is no {split!r} split to evaluate on")
    if cfg.model.prior_scales == "auto" and cfg.model.prior_sizes is None:
        # fitted default boxes: the checkpoint's config holds what the weights were trained with
        cfg = cfg.model_copy(update={"model": config_from_checkpoint(state, checkpoint).model})
    model = build_model(cfg, len(class_names) + 1)
    load_model_state(model, state, checkpoint)
    model.to(device)
    if precision.resolve(cfg.train, device).channels_last:
        model = model.to(memory_format=torch.channels_last)
    return evaluate_model(model, dataset, cfg, device, prefix=split)
