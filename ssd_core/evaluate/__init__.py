"""Detection metrics: PASCAL VOC mAP@0.5 (the paper's numbers, sec. 3.1) and COCO AP (sec. 3.4).

    voc_ap(rec, prec, use_07_metric)    AP of one class from its precision/recall curve          ap.py
    evaluate_voc(...)                   VOC07 11-point mAP (`mAP50`, the paper's metric) and the   voc.py
                                        VOC2010+ area under the PR curve (`mAP50_area`), per class
    voc_matches / weighted_voc(_batch)  the VOC matching kept for re-scoring with image weights    voc.py
                                        (the paired bootstrap over test images)
    DetectionAccumulator                padded `Detections` batch by batch -> flat arrays in      accumulator.py
                                        pixels, with the dataset's ground truth; saved as .npz
    to_coco_results(...)                flat arrays -> COCO results json (xywh, category ids)      coco.py
    evaluate_coco(coco_gt, results)     AP, AP50, AP75, APs, APm, APl, AR100 + per-class AP        coco.py
                                        (pycocotools, imported when called)

The VOC conventions (py-faster-rcnn's `voc_eval`, difficult boxes, the box convention, classes without
ground truth) are in the docstring of ssd_core/evaluate/voc.py.
"""
from __future__ import annotations

from ssd_core.evaluate.accumulator import DetectionAccumulator, ground_truth_from_dataset
from ssd_core.evaluate.ap import VOC07_RECALL_THRESHOLDS, voc_ap
from ssd_core.evaluate.coco import COCO_STATS, evaluate_coco, to_coco_results
from ssd_core.evaluate.voc import VOCMatches, evaluate_voc, voc_matches, weighted_voc, weighted_voc_batch

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
    "COCO_STATS",
]
