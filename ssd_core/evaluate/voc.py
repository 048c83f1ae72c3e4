"""PASCAL VOC mAP@0.5 (the paper's numbers, sec. 3.1): the matching of detections to ground truth, and
its scores (the APs themselves are in ap.py).

    evaluate_voc(...)        VOC07 11-point mAP and the VOC2010+ area mAP from flat arrays, per class
    voc_matches(...)         the matching step alone (VOCMatches), kept for re-scoring
    weighted_voc(m, w)       the scores of a matching with each image counted w[i] times
    weighted_voc_batch(m, W) the same for every row of W at once (a bootstrap over test images)

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

from typing import NamedTuple, Sequence

import numpy as np

from ssd_core.evaluate.ap import _nanmean, _np, _per_class_ap


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


def _pair_iou(a: np.ndarray, b: np.ndarray, pixel_inclusive: bool) -> np.ndarray:
    """IoU of a[i] with b[i] (elementwise, not all pairs); +1 on widths/heights if pixel_inclusive."""
    one = 1.0 if pixel_inclusive else 0.0
    iw = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + one, 0.0)
    ih = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + one, 0.0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    return inter / np.maximum(area_a + area_b - inter, np.finfo(np.float64).tiny)


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
