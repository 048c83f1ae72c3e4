"""Default-box scales (and aspect ratios) fitted to a data set: fit_sizes.

The paper spreads the scales evenly between s_min and s_max (sec. 2.2, eq. 4; ssd_core/priors.py); here
s_1 < ... < s_m+1 are chosen to maximise the class-mean coverage at IoU 0.5 (coverage.py), then the mean
best IoU, keeping SSD's structure: per map one box of size s_k (aspect 1) and the extra box
sqrt(s_k s_k+1), and the aspect-ratio pairs of s_k (with `aspect`, fitted too: at most max_boxes a cell).

How: for every map and every size on a fine log grid, each object's best IoU with a default box of that
size is computed once against the cell nearest its centre (for boxes of one size, IoU only falls with the
centre offset along each axis, so the nearest cell is the best one); an assignment of sizes to maps is
then scored by a maximum over table columns, and improved one map at a time over every feasible size
(coordinate ascent from the paper's VOC and COCO scales, and one spread over the objects' size quantiles),
until no map changes. Deterministic, vectorised over objects and sizes; a few seconds on VOC's 40k boxes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ssd_core.errors import ConfigError
from ssd_core.prior_fit.coverage import THRESHOLD, _nearest_cells, _prior_iou

GRID = np.exp(np.linspace(math.log(0.008), math.log(1.2), 97))  # sizes (fractions of the side); odd entries: midpoints
RATIO_CHOICES = (1.5, 2.0, 3.0, 4.0)
MAX_FIT_BOXES = 8000                # boxes the fit looks at (an even subsample); coverage counts all


@dataclass
class Fit:
    sizes: list[float]                          # s_1 .. s_m+1, fractions of the side
    aspect_ratios: list[list[float]]            # per map
    objective: tuple[float, float] = (0.0, 0.0)  # (class-mean coverage at 0.5, class-mean best IoU) on the fit set
    history: list = field(default_factory=list)


def fit_sizes(feature_maps: Sequence[int], steps: Sequence[float], image_size: int, boxes: np.ndarray,
              labels: np.ndarray, classes: int, aspect: bool = False, max_boxes: int = 6,
              paper_ratios: Sequence[Sequence[float]] | None = None, clip: bool = True) -> Fit:
    """Fit s_1..s_m+1 (and with `aspect` the per-map ratio sets, at most `max_boxes` boxes a cell) to the
    normalised `boxes` [N, 4] with `labels` [N] in 1..classes (module doc)."""
    from ssd_core.priors import CAFFE_RATIOS, caffe_sizes, paper_aspect_ratios

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, labels = boxes[keep], labels[keep]
    if len(boxes) == 0:
        raise ConfigError("model.prior_scales: auto: the training split has no boxes with an area to fit the "
                          "default boxes to (data.train_sets)")
    m = len(feature_maps)
    if len(GRID[::2]) < m + 1:
        raise ConfigError(f"model.prior_scales: auto: {m} feature maps need {m + 1} increasing sizes, more than the "
                          f"fit's grid holds")
    if len(boxes) > MAX_FIT_BOXES:  # an even, deterministic subsample in file order
        pick = np.linspace(0, len(boxes) - 1, MAX_FIT_BOXES).round().astype(int)
        boxes, labels = boxes[pick], labels[pick]
    ratios = [tuple(r) for r in (paper_ratios or paper_aspect_ratios(m))]
    t = _Tables(boxes, feature_maps, steps, image_size, tuple(sorted(set(RATIO_CHOICES) | {r for rs in ratios for r in rs})),
                clip)
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    starts = []
    for key in (("voc", False), ("coco", False)):
        lo, hi, first = CAFFE_RATIOS[key]
        mins, maxs = caffe_sizes(100, m, lo, hi, first)
        starts.append([s / 100 for s in mins] + [maxs[-1] / 100])
    starts.append(list(np.quantile(side, np.linspace(0.02, 0.98, m + 1))))
    history = []
    best = None
    for start in starts:
        for _ in range(3 if aspect else 1):
            idx, score = _ascend(t, labels, classes, _snap(start), ratios, m)
            if aspect:
                ratios = _fit_ratios(t, labels, classes, idx, ratios, m, max_boxes)
                idx, score = _ascend(t, labels, classes, idx, ratios, m)
            start = [GRID[i] for i in idx]
        history.append((score, idx, list(ratios)))
        if best is None or score > best[0]:
            best = (score, idx, list(ratios))
    score, idx, ratios = best
    return Fit([float(GRID[i]) for i in idx], [list(r) for r in ratios], score, history)


class _Tables:
    """Per map k and grid size g: each box's best IoU with the square default box of size GRID[g]
    (`square[k]` [N, G]), and with the pair of boxes of aspect r at size GRID[g] (`ratio[k][r]` [N, G])."""

    def __init__(self, boxes: np.ndarray, feature_maps, steps, image_size: int, ratios=RATIO_CHOICES, clip=True):
        self.square, self.ratio = [], []
        grid = GRID[None, :]
        for f, st in zip(feature_maps, steps):
            centres = _nearest_cells(boxes, f, st / image_size)
            self.square.append(_prior_iou(boxes, centres, np.broadcast_to(grid, (len(boxes), grid.size)),
                                          np.broadcast_to(grid, (len(boxes), grid.size)), clip))
            per = {}
            for r in ratios:
                a, b = grid * math.sqrt(r), grid / math.sqrt(r)
                shape = (len(boxes), grid.size)
                per[r] = np.maximum(_prior_iou(boxes, centres, np.broadcast_to(a, shape), np.broadcast_to(b, shape), clip),
                                    _prior_iou(boxes, centres, np.broadcast_to(b, shape), np.broadcast_to(a, shape), clip))
            self.ratio.append(per)

    def map_iou(self, k: int, lo: int, hi, ratios) -> np.ndarray:
        """Best IoU on map k with s_k = GRID[lo] and s_k+1 = GRID[hi] (each a grid index or [V] of them: [N, V]):
        the square s_k, the extra square sqrt(s_k s_k+1) = GRID[(lo + hi) / 2] and the ratio pairs of s_k."""
        scalar = np.ndim(lo) == 0 and np.ndim(hi) == 0
        lo, hi = np.broadcast_arrays(np.atleast_1d(lo), np.atleast_1d(hi))
        out = np.maximum(self.square[k][:, lo], self.square[k][:, (lo + hi) // 2])
        for r in ratios:
            out = np.maximum(out, self.ratio[k][r][:, lo])
        return out[:, 0] if scalar else out


def _score(best: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """best [N] or [N, V] -> (class-mean share >= 0.5, class-mean best IoU), each scalar or [V]."""
    hit = (best >= THRESHOLD).astype(np.float64)
    covs, ious = [], []
    for c in range(1, classes + 1):
        m = labels == c
        if m.any():
            covs.append(hit[m].mean(axis=0))
            ious.append(best[m].mean(axis=0))
    return np.mean(covs, axis=0), np.mean(ious, axis=0)


def _ascend(t: _Tables, labels, classes, idx: list[int], ratios: list[tuple], m: int) -> tuple[list[int], tuple]:
    """Coordinate ascent over the size indices (even grid entries, strictly increasing); returns the
    indices and their (coverage, IoU)."""
    idx = list(idx)

    def maps(skip=()):
        out = np.zeros(len(labels))
        for k in range(m):
            if k not in skip:
                out = np.maximum(out, t.map_iou(k, idx[k], idx[k + 1], ratios[k]))
        return out

    for _ in range(30):
        changed = False
        for j in range(m + 1):  # size j is s_j: map j uses it as its s_k, map j-1 as its s_k+1
            lo = idx[j - 1] + 2 if j > 0 else 0
            hi = idx[j + 1] - 2 if j < m else len(GRID) - 1
            cand = np.arange(lo, hi + 1, 2)
            if cand.size == 0:
                continue
            fixed = maps(skip={j - 1, j})[:, None]
            best = fixed
            if j > 0:
                best = np.maximum(best, t.map_iou(j - 1, idx[j - 1], cand, ratios[j - 1]))
            if j < m:
                best = np.maximum(best, t.map_iou(j, cand, idx[j + 1], ratios[j]))
            cov, iou = _score(best, labels, classes)
            order = np.lexsort((np.abs(cand - idx[j]), -np.round(iou, 9), -np.round(cov, 9)))
            pick = int(cand[order[0]])
            if pick != idx[j]:
                idx[j], changed = pick, True
        if not changed:
            break
    cov, iou = _score(maps(), labels, classes)
    return idx, (float(cov), float(iou))


def _snap(sizes: Sequence[float]) -> list[int]:
    """Sizes -> strictly increasing even grid indices nearest them."""
    out = []
    for s in sizes:
        i = int(np.argmin(np.abs(np.log(GRID[::2]) - math.log(max(s, 1e-6))))) * 2
        i = max(i, out[-1] + 2) if out else i
        out.append(min(i, len(GRID) - 1))
    return out


def _fit_ratios(t: _Tables, labels, classes, idx, ratios, m: int, max_boxes: int) -> list[tuple]:
    """Per map, the ratio set (subsets of RATIO_CHOICES within the box cap) that scores best, others fixed."""
    import itertools

    limit = max(0, (max_boxes - 2) // 2)
    options = [()] + [c for n in range(1, limit + 1) for c in itertools.combinations(RATIO_CHOICES, n)]
    ratios = list(ratios)
    for k in range(m):
        rest = np.zeros(len(labels))
        for j in range(m):
            if j != k:
                rest = np.maximum(rest, t.map_iou(j, idx[j], idx[j + 1], ratios[j]))
        scored = []
        for n, opt in enumerate(options):
            cov, iou = _score(np.maximum(rest, t.map_iou(k, idx[k], idx[k + 1], opt)), labels, classes)
            scored.append((-round(float(cov), 9), -round(float(iou), 9), len(opt), n))
        ratios[k] = options[min(scored)[3]]
    return ratios
