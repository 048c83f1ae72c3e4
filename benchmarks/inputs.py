"""The synthetic inputs the loss, post-processing and train-step benchmarks feed ours and the reference
(one home: bench_loss_postprocess, bench_train_step, gpu_check and profile_loss draw from here; torch is
imported inside the functions, so importing this module sets nothing up before a benchmark's own setup).

    padded_targets(B, gen)       1-10 boxes per image, xyxy in [0, 1], label 0 = padding (ours' layout)
    torchvision_targets(...)     the same targets as torchvision's per-image dicts, in pixels
    trained_like(B, P, gen)      logits of a trained model: ~175 candidates per image above 0.01
    torchvision_ssd()            the attributes torchvision's SSD.compute_loss / postprocess_detections read
    torchvision_loss(...)        SSD.forward's training branch from the head outputs on
"""
from __future__ import annotations

import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NUM_CLASSES = 21  # VOC: 20 classes + background


def padded_targets(B: int, gen: torch.Generator, num_classes: int = NUM_CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded targets: 1-10 boxes per image, xyxy in [0, 1]; label 0 = padding."""
    import torch

    n = torch.randint(1, 11, (B,), generator=gen)
    M = int(n.max())
    xy = torch.rand(B, M, 2, generator=gen) * 0.8
    wh = torch.rand(B, M, 2, generator=gen) * 0.5 + 0.02
    boxes = torch.cat((xy, (xy + wh).clamp(max=1.0)), dim=-1)
    labels = torch.randint(1, num_classes, (B, M), generator=gen)
    pad = torch.arange(M) >= n[:, None]
    return boxes.masked_fill(pad[..., None], 0.0), labels.masked_fill(pad, 0)


def torchvision_targets(boxes: torch.Tensor, labels: torch.Tensor, size: int) -> list[dict]:
    """padded_targets' boxes and labels as torchvision's detection targets: per image, padding dropped, pixels."""
    return [{"boxes": b[lb > 0] * size, "labels": lb[lb > 0]} for b, lb in zip(boxes, labels)]


def trained_like(B: int, P: int, gen: torch.Generator, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Logits of a trained model: N(0, 1), background +12, 2% of the priors +14 on one random class."""
    import torch

    conf = torch.randn(B, P, num_classes, generator=gen)
    conf[..., 0] += 12
    hit = (torch.rand(B, P, generator=gen) < 0.02).float() * 14
    conf.scatter_add_(2, torch.randint(1, num_classes, (B, P, 1), generator=gen), hit.unsqueeze(-1))
    return conf


def torchvision_ssd() -> types.SimpleNamespace:
    """The attributes SSD.compute_loss / postprocess_detections read, with ssd300_vgg16's settings."""
    from torchvision.models.detection import _utils as det_utils

    return types.SimpleNamespace(box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)), neg_to_pos_ratio=3.0,
                                 score_thresh=0.01, nms_thresh=0.45, detections_per_img=200, topk_candidates=400)


def torchvision_loss(ssd, matcher, loc, conf, anchors_px, targets_px):
    """SSD.forward's training branch from the head outputs on: per-image matching, then compute_loss."""
    from torchvision.models.detection.ssd import SSD
    from torchvision.ops import box_iou

    matched = [matcher(box_iou(t["boxes"], anchors_px)) for t in targets_px]
    heads = {"bbox_regression": loc, "cls_logits": conf}
    out = SSD.compute_loss(ssd, targets_px, heads, [anchors_px] * len(targets_px), matched)
    return out["bbox_regression"] + out["classification"]
