"""COCO AP (paper sec. 3.4): detections as a COCO results json, scored by pycocotools' COCOeval (imported
when evaluate_coco is called).
"""
from __future__ import annotations

import contextlib
import io
import math
from typing import Mapping, Sequence

import numpy as np

from ssd_core.evaluate.ap import _np


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
