"""How well a set of default boxes covers a data set's objects (why that matters: ssd_core/prior_fit/__init__.py).

    coverage(spec, boxes, labels, names)   per training box: the best IoU over the default boxes; the share
                                           with best IoU >= 0.5 (the best possible recall at the matching
                                           threshold), the mean best IoU, per class, per COCO size (small <
                                           32^2, medium < 96^2, large, in pixels at the model's input), and
                                           the feature map each class is matched on

Boxes are the training split's, normalised by their image (SSD resizes every image to a square, so a
normalised box is what the network sees) and, for the pixel sizes, at model.image_size. A box's best IoU
is taken against the cell nearest its centre on each map (for boxes of one size, IoU only falls with the
centre offset along each axis, so the nearest cell is the best one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

THRESHOLD = 0.5                     # SSD's matching threshold (ssd_core/boxes.py match)
SMALL, MEDIUM = 32 ** 2, 96 ** 2    # COCO's area limits, pixels at the model's input


@dataclass
class Coverage:
    """How a set of default boxes covers a set of ground-truth boxes (module doc)."""

    best_iou: np.ndarray                 # [N] best IoU over the default boxes
    best_map: np.ndarray                 # [N] feature map of that default box
    labels: np.ndarray                   # [N] 1..C
    sizes: np.ndarray                    # [N] 0 small, 1 medium, 2 large
    class_names: list[str]
    threshold: float = THRESHOLD

    def share(self, mask=None, threshold: Optional[float] = None) -> float:
        t = self.threshold if threshold is None else threshold
        x = self.best_iou if mask is None else self.best_iou[mask]
        return float((x >= t).mean()) if x.size else math.nan

    @property
    def bpr(self) -> float:
        """Best possible recall at 0.5: the share of boxes some default box overlaps at IoU >= 0.5."""
        return self.share(threshold=0.5)

    def per_class(self) -> dict[str, float]:
        return {c: self.share(self.labels == i + 1) for i, c in enumerate(self.class_names)}

    def class_mean(self) -> float:
        values = [v for v in self.per_class().values() if math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan

    def per_size(self) -> dict[str, float]:
        return {name: self.share(self.sizes == i) for i, name in enumerate(("small", "medium", "large"))}

    def maps_by_class(self) -> dict[str, dict[int, int]]:
        """class -> {feature map: boxes whose best default box is on it}."""
        out = {}
        for i, c in enumerate(self.class_names):
            m = self.best_map[self.labels == i + 1]
            out[c] = {int(k): int(v) for k, v in zip(*np.unique(m, return_counts=True))}
        return out

    def metrics(self, prefix: str = "data/") -> dict[str, float]:
        """What every training run logs (ssd_core/metrics.py `data/...`)."""
        from ssd_core import metrics as M

        out = {M.DATA_COVERAGE: self.bpr, M.DATA_COVERAGE_CLASS_MEAN: self.class_mean(),
               M.DATA_BEST_IOU: float(self.best_iou.mean()) if self.best_iou.size else math.nan}
        out.update({M.data_coverage(c): v for c, v in self.per_class().items()})
        out.update({M.data_coverage(s): v for s, v in self.per_size().items()})
        return {k: v for k, v in out.items() if math.isfinite(v)}  # a class or size with no boxes: nothing

    def format(self, title: str) -> str:
        n = self.best_iou.size
        lines = [f"{title}: {n} training boxes; IoU >= 0.5 for {self.bpr:.1%} (class mean {self.class_mean():.1%}), "
                 f"mean best IoU {self.best_iou.mean():.3f}" if n else f"{title}: no boxes"]
        for c, v in self.per_class().items():
            maps = ", ".join(f"map {k}: {m}" for k, m in self.maps_by_class()[c].items())
            lines.append(f"  {c:>12s}: {v:6.1%}   matched on {maps}")
        counts = np.bincount(self.sizes, minlength=3)
        lines.append("  by size (COCO areas at the input): " + ", ".join(
            f"{name} {v:.1%} of {counts[i]}" for i, (name, v) in enumerate(self.per_size().items())))
        return "\n".join(lines)


def coverage(spec, boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
             threshold: float = THRESHOLD) -> Coverage:
    """The coverage of `boxes` [N, 4] (normalised xyxy) by the default boxes of `spec` (priors.PriorSpec)."""
    from ssd_core.priors import cell_box_sizes

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    best = np.zeros(len(boxes))
    best_map = np.zeros(len(boxes), dtype=np.int64)
    for k, f in enumerate(spec.feature_maps):
        step = spec.steps[k] / spec.image_size
        centres = _nearest_cells(boxes, f, step)
        wh = cell_box_sizes(spec, k).numpy()                          # [A, 2]
        iou = _prior_iou(boxes, centres, np.broadcast_to(wh[:, 0], (len(boxes), len(wh))),
                         np.broadcast_to(wh[:, 1], (len(boxes), len(wh))), spec.clip).max(axis=1) if len(boxes) else best
        better = iou > best
        best = np.where(better, iou, best)
        best_map = np.where(better, k, best_map)
    return Coverage(best, best_map, np.asarray(labels, np.int64).reshape(-1), _size_class(boxes, spec.image_size),
                    list(class_names), threshold)


def _size_class(boxes: np.ndarray, image_size: int) -> np.ndarray:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * image_size ** 2
    return np.where(area < SMALL, 0, np.where(area < MEDIUM, 1, 2)).astype(np.int64)


def _nearest_cells(boxes: np.ndarray, f: int, step: float) -> np.ndarray:
    """[N, 2] centres (normalised) of the map's cells nearest each box centre."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    idx = np.clip(np.round(c / step - 0.5), 0, f - 1)
    return (idx + 0.5) * step


def _prior_iou(boxes: np.ndarray, centres: np.ndarray, w, h, clip: bool = True) -> np.ndarray:
    """IoU of each box with a default box of size (w, h) at its cell centre; w, h broadcast ([N] or [N, V])."""
    w, h = np.asarray(w, float), np.asarray(h, float)
    extra = w.ndim - 1 if w.ndim else 0
    cx, cy = (centres[:, 0], centres[:, 1]) if not extra else (centres[:, :1], centres[:, 1:])
    pr = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    if clip:
        pr = np.clip(pr, 0.0, 1.0)
    gt = boxes if not extra else boxes[:, None, :]
    return _iou_xyxy(gt, pr)


def _iou_xyxy(gt: np.ndarray, pr: np.ndarray) -> np.ndarray:
    lt = np.maximum(gt[..., :2], pr[..., :2])
    rb = np.minimum(gt[..., 2:], pr[..., 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    ag = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    ap = (pr[..., 2] - pr[..., 0]) * (pr[..., 3] - pr[..., 1])
    return inter / np.maximum(ag + ap - inter, 1e-12)
