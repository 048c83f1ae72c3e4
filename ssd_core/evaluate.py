"""Detection metrics: PASCAL VOC mAP@0.5 (the paper's numbers, sec. 3.1) and COCO AP (sec. 3.4).

    voc_ap(rec, prec, use_07_metric)    AP of one class from its precision/recall curve
    evaluate_voc(...)                   VOC07 11-point mAP (`mAP50`, the paper's metric) and the
                                        VOC2010+ area under the PR curve (`mAP50_area`), per class
    DetectionAccumulator                padded `Detections` batch by batch -> flat arrays in pixels
    to_coco_results(...)                flat arrays -> COCO results json (xywh, category ids)
    evaluate_coco(coco_gt, results)     AP, AP50, AP75, APs, APm, APl, AR100 + per-class AP (pycocotools)

VOC numbers equal the community reference, py-faster-rcnn's `voc_eval` (per class: detections sorted
by score descending, stably; each one takes the ground truth box of the same image and class with the
highest IoU; IoU > 0.5 strictly and that box not taken yet -> true positive, taken -> false positive
(a duplicate), below -> false positive; a detection whose best box is *difficult* is ignored: neither
TP nor FP, and difficult boxes do not count as positives). It is computed without a Python loop over
detections: the best box of every detection is independent of the others (the reference takes the
argmax over *all* boxes, taken or not), so the only sequential rule, "first in score order takes the
box", becomes a first-occurrence per ground truth box in rank order (np.unique on ranked candidates).

Box convention. Inputs are pixel xyxy as ssd_core.data returns them: VOC's 1-based inclusive pixel
boxes (x1, y1, x2, y2) become (x1 - 1, y1 - 1, x2, y2), the continuous box that covers the same
pixels. The reference adds +1 to widths and heights of the 1-based numbers; on the shifted boxes the
plain area IoU is *exactly* that number (width x2 - (x1 - 1) = x2 - x1 + 1, likewise for the overlap),
so the default `pixel_inclusive=False` reproduces the reference on the original annotations. Pass
`pixel_inclusive=True` for boxes still in the 1-based inclusive form (or any uniform shift of it:
the +1 IoU is shift invariant); then +1 is added exactly as the reference does.

A class with no non-difficult ground truth has no recall: py-faster-rcnn returns 0 (11-point) or nan
(area; 0 if it also has no detections) for it. Here its AP is nan in both forms, and it is left out of
both means, so a class absent from a split neither lowers nor raises the mAP. Detections on images
that have no ground truth at all are false positives.
"""
from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

__all__ = [
    "VOC07_RECALL_THRESHOLDS",
    "voc_ap",
    "evaluate_voc",
    "voc_matches",
    "weighted_voc",
    "weighted_voc_batch",
    "VOCMatches",
    "DetectionAccumulator",
    "ground_truth_from_dataset",
    "to_coco_results",
    "evaluate_coco",
]

# The reference's np.arange(0., 1.1, 0.1): the same floats (0.30000000000000004, ...) on purpose.
VOC07_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)
_EPS = np.finfo(np.float64).eps


def _np(x: Any, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def voc_ap(rec, prec, use_07_metric: bool = True) -> float:
    """AP of one class from recall/precision in score order (VOC devkit, as py-faster-rcnn).

    11-point (VOC2007): mean over t in {0, 0.1, ..., 1} of max precision at recall >= t (0 if none).
    Area (VOC2010+): area under the precision envelope, summed where recall changes.
    """
    rec, prec = _np(rec, np.float64), _np(prec, np.float64)
    if use_07_metric:
        reached = rec[None, :] >= VOC07_RECALL_THRESHOLDS[:, None]           # [11, n]
        p = np.where(reached, prec[None, :], -np.inf).max(axis=1, initial=-np.inf)
        return float(np.sum(np.where(np.isfinite(p), p, 0.0) / 11.0))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], prec, [0.0]))[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _pair_iou(a: np.ndarray, b: np.ndarray, pixel_inclusive: bool) -> np.ndarray:
    """IoU of a[i] with b[i] (elementwise, not all pairs); +1 on widths/heights if pixel_inclusive."""
    one = 1.0 if pixel_inclusive else 0.0
    iw = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + one, 0.0)
    ih = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + one, 0.0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    return inter / np.maximum(area_a + area_b - inter, np.finfo(np.float64).tiny)


def _best_ground_truth(det_key, det_boxes, gt_key, gt_boxes, num_keys, pixel_inclusive):
    """For every detection: max IoU over the ground truth of its (image, class) and the first argmax.

    Group keys are dense (image * (C + 1) + label), so each detection finds its group's boxes with a
    bincount table; all (detection, box) pairs are laid out detection by detection, so the max and the
    first argmax are segment reductions (np.maximum/minimum.reduceat). -inf / -1 where no box.
    """
    n = det_key.size
    gt_order = np.argsort(gt_key, kind="stable")  # keeps the file order of boxes within a group
    per_key = np.bincount(gt_key, minlength=num_keys)
    start = (np.cumsum(per_key) - per_key)[det_key]
    count = per_key[det_key]
    ovmax = np.full(n, -np.inf)
    jmax = np.full(n, -1, dtype=np.int64)
    total = int(count.sum())
    if total == 0:
        return ovmax, jmax
    offset = np.cumsum(count) - count
    pair_det = np.repeat(np.arange(n), count)
    pair_gt = gt_order[start[pair_det] + np.arange(total) - offset[pair_det]]
    iou = _pair_iou(det_boxes[pair_det], gt_boxes[pair_gt], pixel_inclusive)
    has = count > 0
    segments = offset[has]
    ovmax[has] = np.maximum.reduceat(iou, segments)
    position = np.where(iou == ovmax[pair_det], np.arange(total), total)
    jmax[has] = pair_gt[np.minimum.reduceat(position, segments)]
    return ovmax, jmax


def _dense_ids(ids: np.ndarray) -> np.ndarray:
    """Image ids -> small non-negative ints (dataset indices pass through; anything else via np.unique)."""
    if ids.dtype.kind in "iu" and (ids.size == 0 or (ids.min() >= 0 and ids.max() < 4 * ids.size + 1024)):
        return ids.astype(np.int64)
    return np.unique(ids, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _rank_order(labels: np.ndarray, scores: np.ndarray, num_classes: int) -> np.ndarray:
    """Order by class, then score descending, ties in input order (two stable sorts; radix on labels)."""
    by_score = np.argsort(-scores, kind="stable")
    small = labels[by_score].astype(np.int16 if num_classes < 2**15 else np.int64)
    return by_score[np.argsort(small, kind="stable")]


def _segment_starts(labels_sorted: np.ndarray, num_classes: int):
    count = np.bincount(labels_sorted, minlength=num_classes + 1)[1:]
    return np.cumsum(count) - count, count


def _per_class_ap(label_s, tp_s, fp_s, npos, num_classes, *, area_ap: bool = True, point11: bool = True):
    """11-point and area AP of every class at once; detections sorted by (class, score desc).

    `tp_s`, `fp_s` are [N] or [B, N] (B weightings of the same ranked detections, e.g. bootstrap
    resamples) and `npos` [C] or [B, C]; the APs come back as [C] or [B, C] (None for a form not asked
    for). Every step works along the last axis, so a row of a batch is computed exactly as it would be
    alone."""
    single = np.ndim(tp_s) == 1
    tp, fp = np.atleast_2d(tp_s).astype(np.float64), np.atleast_2d(fp_s).astype(np.float64)
    npos = np.atleast_2d(npos).astype(np.float64)
    rows = tp.shape[0]
    start, count = _segment_starts(label_s, num_classes)
    cls = label_s - 1
    zero = np.zeros((rows, 1))
    tpc, fpc = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
    tpc -= np.concatenate((zero, tpc), axis=1)[:, start][:, cls]   # restart the running sums at each class
    fpc -= np.concatenate((zero, fpc), axis=1)[:, start][:, cls]
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tpc / npos[:, cls]
    prec = tpc / np.maximum(tpc + fpc, _EPS)
    # Precision envelope max(prec[k:]) within each class: one reversed running max, with each class
    # lifted by 2 per class so that no maximum leaks into the class before it (prec is in [0, 1]; the
    # lift costs at most a few ulps of 2 * num_classes, i.e. < 1e-13).
    lift = 2.0 * (num_classes - cls)
    envelope = np.maximum.accumulate((prec + lift)[:, ::-1], axis=1)[:, ::-1] - lift
    row = np.arange(rows)[:, None]
    missing = npos == 0
    ap07 = area = None
    if point11:
        ap07 = _point11(rec, envelope, cls, start, count, row, rows, num_classes)
        ap07[missing] = np.nan
    if area_ap:
        area = _area(rec, envelope, cls, start, count, row, rows, num_classes)
        area[missing] = np.nan
    if single:
        return (None if ap07 is None else ap07[0]), (None if area is None else area[0])
    return ap07, area


def _point11(rec, envelope, cls, start, count, row, rows, num_classes):
    """VOC07 11-point AP [B, C]. reached_k = #{t <= rec_k} is non-decreasing within a class, so the first
    detection with rec >= T[j] is start + #{k in class: reached_k <= j}: one histogram of (row, class,
    reached)."""
    reached = np.searchsorted(VOC07_RECALL_THRESHOLDS, rec, side="right")  # exact comparisons
    hist = np.bincount(((row * num_classes + cls) * 12 + reached).reshape(-1),
                       minlength=rows * num_classes * 12).reshape(rows, num_classes, 12)
    below = np.cumsum(hist, axis=2)[:, :, :11]                                  # [B, C, 11]
    hit = below < count[None, :, None]
    p = np.zeros((rows, num_classes, 11))
    r_hit = np.broadcast_to(row[:, :, None], hit.shape)[hit]
    p[hit] = envelope[r_hit, (start[None, :, None] + below)[hit]]
    ap07 = np.zeros((rows, num_classes))
    for j in range(11):  # summed in the reference's order
        ap07 += p[:, :, j] / 11.0
    return ap07


def _area(rec, envelope, cls, start, count, row, rows, num_classes):
    """VOC2010+ area AP [B, C]: the sum over detections of (rec_k - rec_{k-1}) * envelope_k, with
    rec_{-1} = 0 at each class start."""
    zero = np.zeros((rows, 1))
    prev = np.concatenate((zero, rec[:, :-1]), axis=1)
    prev[:, start[count > 0]] = 0.0
    with np.errstate(invalid="ignore"):
        step = rec - prev
        contrib = np.where(step != 0, step * envelope, 0.0)
    area = np.bincount((row * num_classes + cls).reshape(-1), weights=contrib.reshape(-1),
                       minlength=rows * num_classes).reshape(rows, num_classes).astype(np.float64)
    return area


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


class VOCMatches(NamedTuple):
    """evaluate_voc's matching, kept for re-scoring: detections in rank order (class, then score)
    with their true/false-positive flags, and the ground truth counted per image and class. Scoring
    these with image weights (`weighted_voc`) equals scoring the images repeated that many times:
    the paired bootstrap over test images (reports/stats.py) resamples with it, without re-matching."""

    label_s: np.ndarray     # [N] labels 1..C in rank order
    tp_s: np.ndarray        # [N] 1 for a true positive
    fp_s: np.ndarray        # [N] 1 for a false positive (a detection on a difficult box is neither)
    image_s: np.ndarray     # [N] dense image index of each ranked detection
    gt_count: np.ndarray    # [I, C] non-difficult ground-truth boxes per dense image and class
    image_ids: np.ndarray   # [I] the original image id of each dense index
    class_names: list


def voc_matches(det_image, det_label, det_score, det_boxes, gt_image, gt_label, gt_boxes, gt_difficult,
                class_names: Sequence[str], iou_threshold: float = 0.5, *,
                pixel_inclusive: bool = False) -> VOCMatches:
    """The matching step of evaluate_voc (arguments as there)."""
    num_classes = len(class_names)
    det_label, gt_label = _np(det_label, np.int64).reshape(-1), _np(gt_label, np.int64).reshape(-1)
    det_score = _np(det_score, np.float64).reshape(-1)
    det_boxes, gt_boxes = _np(det_boxes, np.float64).reshape(-1, 4), _np(gt_boxes, np.float64).reshape(-1, 4)
    gt_difficult = _np(gt_difficult, bool).reshape(-1)
    det_image, gt_image = _np(det_image).reshape(-1), _np(gt_image).reshape(-1)
    n, g = det_label.size, gt_label.size
    for name, arr, size in (("det_image", det_image, n), ("det_score", det_score, n),
                            ("det_boxes", det_boxes, n), ("gt_image", gt_image, g),
                            ("gt_boxes", gt_boxes, g), ("gt_difficult", gt_difficult, g)):
        if len(arr) != size:
            raise ValueError(f"evaluate_voc: {name} has {len(arr)} rows, expected {size}")
    for name, lab in (("det_label", det_label), ("gt_label", gt_label)):
        if lab.size and (lab.min() < 1 or lab.max() > num_classes):
            bad = lab[(lab < 1) | (lab > num_classes)][0]
            raise ValueError(f"evaluate_voc: {name} contains {bad}; labels must be 1..{num_classes} "
                             f"(class_names[label - 1]; 0 is background)")
    if not np.isfinite(det_score).all():
        raise ValueError("evaluate_voc: det_score contains nan or inf")

    # Images -> dense ints, groups = (image, class) -> dense keys.
    all_images = np.concatenate([det_image, gt_image])
    image_idx = _dense_ids(all_images)
    num_images = int(image_idx.max()) + 1 if image_idx.size else 0
    det_key = image_idx[:n] * (num_classes + 1) + det_label
    gt_key = image_idx[n:] * (num_classes + 1) + gt_label
    num_keys = num_images * (num_classes + 1)

    ovmax, jmax = _best_ground_truth(det_key, det_boxes, gt_key, gt_boxes, num_keys, pixel_inclusive)

    order = _rank_order(det_label, det_score, num_classes)
    hit = ovmax > iou_threshold
    hit_difficult = np.zeros(n, dtype=bool)
    hit_difficult[hit] = gt_difficult[jmax[hit]]
    candidate = (hit & ~hit_difficult)[order]           # in rank order
    cand_rank = np.nonzero(candidate)[0]
    _, first = np.unique(jmax[order][cand_rank], return_index=True)  # first claim of each box wins
    tp_s = np.zeros(n)
    tp_s[cand_rank[first]] = 1.0
    fp_s = (~hit[order]).astype(np.float64)
    fp_s[cand_rank] = 1.0 - tp_s[cand_rank]             # duplicates

    easy = ~gt_difficult
    gt_count = np.zeros((num_images, num_classes))
    np.add.at(gt_count, (image_idx[n:][easy], gt_label[easy] - 1), 1.0)
    ids = np.zeros(num_images, dtype=all_images.dtype) if all_images.size else np.zeros(0, np.int64)
    ids[image_idx] = all_images
    return VOCMatches(det_label[order], tp_s, fp_s, image_idx[:n][order], gt_count, ids, list(class_names))


def weighted_voc(m: VOCMatches, image_weights=None) -> dict:
    """mAP50 (11-point) and mAP50_area of `m` with each dense image counted `image_weights[i]` times
    (None: once each), plus the per-class APs."""
    num_classes = len(m.class_names)
    if image_weights is None:
        tp, fp, gt = m.tp_s, m.fp_s, m.gt_count
    else:
        w = _np(image_weights, np.float64).reshape(-1)  # may cover images with no box and no detection
        tp, fp, gt = m.tp_s * w[m.image_s], m.fp_s * w[m.image_s], m.gt_count * w[:len(m.gt_count), None]
    npos = gt.sum(axis=0)
    ap07, area = _per_class_ap(m.label_s, tp, fp, npos, num_classes)
    return {"mAP50": _nanmean(ap07), "mAP50_area": _nanmean(area),
            "AP50": dict(zip(m.class_names, ap07.tolist())), "AP50_area": dict(zip(m.class_names, area.tolist())),
            "num_gt": dict(zip(m.class_names, npos.tolist()))}


def _without_trailing_false_positives(m: VOCMatches) -> VOCMatches:
    """`m` without the detections ranked after their class's last true positive: under any image weights
    they add no recall and only lower the precision after the last recall step, which neither AP reads
    (the envelope looks forward, the 11-point takes the first detection reaching each recall). The scores
    stay exactly equal; the bootstrap gets faster by the share of low-score false positives."""
    if m.label_s.size == 0:
        return m
    rank = np.arange(m.label_s.size)
    last_tp = np.full(len(m.class_names) + 1, -1)
    np.maximum.at(last_tp, m.label_s[m.tp_s > 0], rank[m.tp_s > 0])
    keep = rank <= last_tp[m.label_s]
    if keep.all():
        return m
    return m._replace(label_s=m.label_s[keep], tp_s=m.tp_s[keep], fp_s=m.fp_s[keep], image_s=m.image_s[keep])


def weighted_voc_batch(m: VOCMatches, image_weights, metric: str = "mAP50", chunk_elements: int = 2**22
                       ) -> np.ndarray:
    """`weighted_voc(m, w)[metric]` for every row w of `image_weights` [B, I] at once -> [B] (mAP50 or
    mAP50_area): what a bootstrap over test images needs, B resamples in a few array passes instead of B
    calls. Rows are scored in chunks of about `chunk_elements` detection cells, so memory stays bounded
    on large test sets."""
    if metric not in ("mAP50", "mAP50_area"):
        raise ValueError(f"weighted_voc_batch: metric {metric!r} is not mAP50 or mAP50_area")
    w = _np(image_weights, np.float64)
    if w.ndim != 2:
        raise ValueError(f"weighted_voc_batch: image_weights must be [B, I], got shape {w.shape}")
    m = _without_trailing_false_positives(m)
    num_classes = len(m.class_names)
    n_gt = len(m.gt_count)
    out = np.empty(w.shape[0])
    step = max(1, chunk_elements // max(1, m.label_s.size + num_classes))
    for lo in range(0, w.shape[0], step):
        wb = w[lo:lo + step]
        tp, fp = m.tp_s[None, :] * wb[:, m.image_s], m.fp_s[None, :] * wb[:, m.image_s]
        npos = wb[:, :n_gt] @ m.gt_count
        ap07, area = _per_class_ap(m.label_s, tp, fp, npos, num_classes, point11=metric == "mAP50",
                                   area_ap=metric == "mAP50_area")
        ap = ap07 if metric == "mAP50" else area
        valid = ~np.isnan(ap)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:lo + step] = np.where(valid, ap, 0.0).sum(axis=1) / valid.sum(axis=1)
    return out


def evaluate_voc(det_image, det_label, det_score, det_boxes,
                 gt_image, gt_label, gt_boxes, gt_difficult,
                 class_names: Sequence[str], iou_threshold: float = 0.5,
                 *, pixel_inclusive: bool = False) -> dict:
    """VOC mAP at IoU > `iou_threshold` from flat arrays (numpy or torch).

    det_image [N] (any hashable ids, e.g. dataset indices), det_label [N] in 1..C (0 = background is
    not allowed), det_score [N], det_boxes [N, 4] pixel xyxy; gt_* likewise with gt_difficult [G] bool.
    `class_names[l - 1]` names label l. Returns {"mAP50", "mAP50_area", "AP50": {cls: ap},
    "AP50_area": {cls: ap}, "num_gt": {cls: non-difficult boxes}, "num_det": {cls: detections}};
    see the module docstring for the conventions (nan for a class without ground truth).
    """
    m = voc_matches(det_image, det_label, det_score, det_boxes, gt_image, gt_label, gt_boxes, gt_difficult,
                    class_names, iou_threshold, pixel_inclusive=pixel_inclusive)
    out = weighted_voc(m)
    out["num_gt"] = {k: int(v) for k, v in out["num_gt"].items()}
    ndet = np.bincount(m.label_s, minlength=len(class_names) + 1)[1:]
    out["num_det"] = dict(zip(list(class_names), ndet.tolist()))
    return out


def ground_truth_from_dataset(dataset) -> dict[str, np.ndarray]:
    """Flat ground truth of a dataset with `annotation(i) -> Target` (original pixels, difficult kept).

    Image ids are dataset indices, as `Batch.indices`. One annotation read per image (not a hot path).
    """
    targets = [dataset.annotation(i) for i in range(len(dataset))]
    counts = [len(_np(t.labels)) for t in targets]
    cat = lambda parts, dtype, shape: (np.concatenate([_np(p, dtype).reshape(shape) for p in parts])
                                       if parts else np.zeros((0,) + shape[1:], dtype))
    return {
        "gt_image": np.repeat(np.arange(len(targets)), counts),
        "gt_label": cat([t.labels for t in targets], np.int64, (-1,)),
        "gt_boxes": cat([t.boxes for t in targets], np.float64, (-1, 4)),
        "gt_difficult": cat([t.difficult for t in targets], bool, (-1,)),
    }


class DetectionAccumulator:
    """Collects padded `Detections` (xyxy in [0, 1]) batch by batch as flat arrays in original pixels.

        acc = DetectionAccumulator.for_dataset(val_set)       # ground truth + (w, h) per image
        for batch in loader:
            acc.add(postprocess(*model(x), priors), batch.indices)
        metrics = acc.evaluate()                              # evaluate_voc(...) dict

    Each `add` is vectorised over the batch: a validity mask (slot < count, label > 0), one multiply
    by (w, h, w, h) per image, one boolean gather.
    """

    def __init__(self, class_names: Sequence[str], image_sizes=None, ground_truth: Mapping | None = None):
        self.class_names = list(class_names)
        self.image_sizes = None if image_sizes is None else torch.as_tensor(_np(image_sizes, np.float64))
        self.ground_truth = dict(ground_truth) if ground_truth is not None else None
        self._chunks: list[tuple[torch.Tensor, ...]] = []

    @classmethod
    def for_dataset(cls, dataset) -> "DetectionAccumulator":
        sizes = [dataset.image_size(i) for i in range(len(dataset))]
        return cls(dataset.class_names, np.asarray(sizes, np.float64).reshape(-1, 2),
                   ground_truth_from_dataset(dataset))

    def add(self, detections, image_ids, image_sizes=None) -> None:
        """detections: Detections (boxes [B, D, 4], scores, labels, counts); image_ids [B];
        image_sizes [B, 2] (w, h), or looked up by id in the sizes given at construction."""
        boxes, scores = detections.boxes.detach().cpu(), detections.scores.detach().cpu()
        labels, counts = detections.labels.detach().cpu(), detections.counts.detach().cpu()
        ids = torch.as_tensor(_np(image_ids, np.int64)).reshape(-1)
        batch, slots = scores.shape
        if image_sizes is None:
            if self.image_sizes is None:
                raise ValueError("DetectionAccumulator.add: image_sizes not given and none known at construction")
            image_sizes = self.image_sizes[ids]
        wh = torch.as_tensor(_np(image_sizes, np.float64)).reshape(batch, 2)
        valid = (torch.arange(slots)[None, :] < counts.reshape(-1, 1)) & (labels > 0)
        pixels = boxes.double() * wh.repeat(1, 2)[:, None, :]
        self._chunks.append((ids[:, None].expand(batch, slots)[valid], labels[valid].long(),
                             scores[valid].double(), pixels[valid]))

    def arrays(self) -> dict[str, np.ndarray]:
        """The flat detections: det_image [N], det_label [N], det_score [N], det_boxes [N, 4] (pixels)."""
        if not self._chunks:
            return {"det_image": np.zeros(0, np.int64), "det_label": np.zeros(0, np.int64),
                    "det_score": np.zeros(0), "det_boxes": np.zeros((0, 4))}
        parts = [torch.cat(column).numpy() for column in zip(*self._chunks)]
        return dict(zip(("det_image", "det_label", "det_score", "det_boxes"), parts))

    def matches(self, iou_threshold: float = 0.5) -> VOCMatches:
        """The VOC matching of these detections (for weighted re-scoring, e.g. a bootstrap)."""
        if self.ground_truth is None:
            raise ValueError("DetectionAccumulator.matches: no ground truth (use for_dataset or pass ground_truth)")
        return voc_matches(**self.arrays(), **self.ground_truth, class_names=self.class_names,
                           iou_threshold=iou_threshold)

    def evaluate(self, iou_threshold: float = 0.5) -> dict:
        if self.ground_truth is None:
            raise ValueError("DetectionAccumulator.evaluate: no ground truth (use for_dataset or pass ground_truth)")
        return evaluate_voc(**self.arrays(), **self.ground_truth, class_names=self.class_names,
                            iou_threshold=iou_threshold)

    def save(self, path, image_keys: Sequence[str] | None = None) -> None:
        """The detections with their ground truth as one compressed .npz (no pickles): enough to
        re-score any VOC metric, or a bootstrap resample of the images, without the model.
        `image_keys[i]` names image i (e.g. "BCCD/BloodImage_00001")."""
        if self.ground_truth is None:
            raise ValueError("DetectionAccumulator.save: no ground truth to save with the detections")
        n = 0 if self.image_sizes is None else len(self.image_sizes)
        keys = np.asarray([str(k) for k in (image_keys if image_keys is not None else range(n))], dtype=str)
        sizes = np.zeros((0, 2)) if self.image_sizes is None else self.image_sizes.numpy()
        np.savez_compressed(path, **self.arrays(), **self.ground_truth, image_sizes=sizes, image_keys=keys,
                            class_names=np.asarray(self.class_names, dtype=str))

    @classmethod
    def load(cls, path) -> "DetectionAccumulator":
        """An accumulator holding what `save` wrote (its `evaluate()` gives the same numbers)."""
        with np.load(path, allow_pickle=False) as z:
            acc = cls([str(c) for c in z["class_names"]], z["image_sizes"],
                      {k: z[k] for k in ("gt_image", "gt_label", "gt_boxes", "gt_difficult")})
            acc.image_keys = [str(k) for k in z["image_keys"]]
            det = [torch.from_numpy(z[k]) for k in ("det_image", "det_label", "det_score", "det_boxes")]
        acc._chunks = [tuple(det)]
        return acc

    def coco_results(self, label_to_category: Mapping[int, int] | Sequence[int],
                     image_id_map: Mapping | Sequence | None = None) -> list[dict]:
        return to_coco_results(**self.arrays(), label_to_category=label_to_category, image_id_map=image_id_map)


def to_coco_results(det_image, det_label, det_score, det_boxes,
                    label_to_category: Mapping[int, int] | Sequence[int],
                    image_id_map: Mapping | Sequence | None = None) -> list[dict]:
    """Flat detections -> COCO results json: {"image_id", "category_id", "bbox": [x, y, w, h], "score"}.

    label_to_category maps contiguous label -> COCO category id (a dict, or a sequence indexed by
    label); image_id_map maps det_image (e.g. a dataset index) -> COCO image id (None: as is).
    """
    labels = _np(det_label, np.int64).reshape(-1)
    lut = label_to_category
    if isinstance(lut, Mapping):
        table = np.zeros(max(lut, default=0) + 1, np.int64)
        table[list(lut)] = list(lut.values())
    else:
        table = np.asarray(lut, np.int64)
    cats = table[labels].tolist()
    images = _np(det_image).reshape(-1)
    if image_id_map is not None:
        images = np.asarray([image_id_map[i] for i in images.tolist()]) if isinstance(image_id_map, Mapping) \
            else np.asarray(image_id_map)[images.astype(np.int64)]
    b = _np(det_boxes, np.float64).reshape(-1, 4)
    xywh = np.round(np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1), 3).tolist()
    scores = np.round(_np(det_score, np.float64).reshape(-1), 5).tolist()
    return [{"image_id": i, "category_id": c, "bbox": bb, "score": s}
            for i, c, bb, s in zip(images.tolist(), cats, xywh, scores)]


COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def evaluate_coco(coco_gt, results: Sequence[dict] | str, verbose: bool = False) -> dict:
    """COCO box metrics through pycocotools' COCOeval (stats[0..11]) and per-class AP.

    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", ..., "AP_per_class": {name: ap}};
    pycocotools' -1 ("no ground truth in this range") becomes nan. Per-class AP is the mean of the
    precision array over IoU 0.50:0.95 and recall, area "all", 100 detections. No results -> all 0.
    pycocotools' prints are silenced unless verbose.
    """
    from pycocotools.cocoeval import COCOeval

    names = {c["id"]: c["name"] for c in coco_gt.loadCats(coco_gt.getCatIds())}
    if isinstance(results, str):
        import json
        with open(results) as f:
            results = json.load(f)
    if len(results) == 0:
        out = {k: 0.0 for k in COCO_STATS}
        out["AP_per_class"] = {name: 0.0 for name in names.values()}
        return out
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes annotates its input in place
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {k: (float(v) if v > -1 else math.nan) for k, v in zip(COCO_STATS, ev.stats)}
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K] at area "all", maxDets 100
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_class[names[cat_id]] = float(p[p > -1].mean()) if (p > -1).any() else math.nan
    out["AP_per_class"] = per_class
    return out
