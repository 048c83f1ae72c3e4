"""Average precision from ranked detections: the VOC devkit's two forms, of one class (voc_ap) or of every
class at once and of many image weightings at once (_per_class_ap, what voc.py scores with).

    11-point (VOC2007, the paper's `mAP50`): the mean over t in {0, 0.1, ..., 1} of the max precision at
        recall >= t (0 if none)
    area (VOC2010+, `mAP50_area`): the area under the precision envelope, summed where recall changes
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

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


def _segment_starts(labels_sorted: np.ndarray, num_classes: int):
    count = np.bincount(labels_sorted, minlength=num_classes + 1)[1:]
    return np.cumsum(count) - count, count


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
