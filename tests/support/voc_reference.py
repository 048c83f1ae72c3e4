"""Reference scorers to check ssd_core.evaluate against: py-faster-rcnn's voc_eval written from the
algorithm (per class, detections sorted by score (stable), each takes the highest-IoU box of its image
(+1 pixel-inclusive IoU on 1-based boxes), IoU > 0.5 strictly, difficult -> ignored, first claim -> TP,
later claims -> FP), and a tiny COCO ground truth with noisy detections for pycocotools."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np


def reference_voc_ap(rec, prec, use_07_metric=True):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def reference_voc_eval(dets, gts, image_ids, cls, ovthresh=0.5):
    """dets: list of (image, label, score, [x1, y1, x2, y2] 1-based inclusive); gts: list of
    (image, label, box, difficult). Returns (ap07, ap_area, npos) of class `cls`."""
    recs = {img: [] for img in image_ids}  # the parsed annotations (py-faster-rcnn caches them)
    for g in gts:
        recs[g[0]].append(g)
    class_recs, npos = {}, 0
    for img in image_ids:
        mine = [g for g in recs[img] if g[1] == cls]
        bbox = np.array([g[2] for g in mine], dtype=np.float64).reshape(-1, 4)
        difficult = np.array([g[3] for g in mine], dtype=bool)
        npos += int(np.sum(~difficult))
        class_recs[img] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(mine)}
    mine = [d for d in dets if d[1] == cls]
    confidence = np.array([d[2] for d in mine], dtype=np.float64)
    BB = np.array([d[3] for d in mine], dtype=np.float64).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    ids = [mine[k][0] for k in sorted_ind]
    nd = len(ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[ids[d]]
        bb = BB[d, :]
        ovmax = -np.inf
        BBGT = R["bbox"]
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return reference_voc_ap(rec, prec, True), reference_voc_ap(rec, prec, False), npos


def tiny_coco(tmp_path):
    from pycocotools.coco import COCO
    rng = np.random.default_rng(0)
    images = [{"id": 10 + i, "width": 200, "height": 150, "file_name": f"{i}.jpg"} for i in range(8)]
    cats = [{"id": 3, "name": "cell"}, {"id": 7, "name": "blob"}, {"id": 9, "name": "never"}]
    anns, results = [], []
    for img in images:
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, 120, 2)
            w, h = rng.uniform(4, 70, 2)
            cat = int(rng.choice([3, 7]))
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            for _ in range(rng.integers(0, 3)):
                results.append({"image_id": img["id"], "category_id": cat, "score": float(rng.random()),
                                "bbox": (np.array([x, y, w, h]) + rng.normal(0, 3, 4)).clip(1).tolist()})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    with redirect_stdout(io.StringIO()):
        return COCO(str(path)), results
