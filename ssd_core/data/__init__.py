"""Detection data: VOC and COCO datasets, the padded batch, the up-front dataset check.

    dataset.py  the box conventions, Target, the item logic every dataset shares, the holdout slice
    voc.py      PASCAL VOC layout: scan_voc (one scan, shared with the check), parse_voc_xml, VOCDataset
    coco.py     COCO instances json: COCODataset (COCO layout, Roboflow split folders, any JSON by path)
    yolo.py     YOLO labels + data.yaml (Ultralytics, Roboflow): YOLODataset
    sets.py     open_sets: (format, root, sets) -> the dataset of that format; image_problems (headers)
    detect.py   detect_layout: a path a user brings -> format, root, splits, classes
    loader.py   Batch, collate (padded targets), make_loader (deterministic DataLoader)
    check.py    check_dataset / DatasetReport (`ssdlab data check`)
"""
from ssd_core.data.check import DatasetReport, Problem, check_dataset
from ssd_core.data.coco import COCODataset
from ssd_core.data.dataset import DataWarning, Target, holdout_mask, image_keys, pool_sides, select
from ssd_core.data.loader import Batch, collate, make_loader, seed_worker
from ssd_core.data.sets import FORMATS, drop_unreadable, image_problems, open_sets, take_side
from ssd_core.data.voc import VOC_CLASSES, VOCDataset, parse_voc_xml, read_image_set, scan_voc
from ssd_core.data.yolo import YOLODataset

__all__ = [
    "VOC_CLASSES", "DataWarning", "Target", "Batch", "VOCDataset", "COCODataset", "read_image_set",
    "parse_voc_xml", "scan_voc", "collate", "make_loader", "seed_worker", "check_dataset", "DatasetReport",
    "Problem", "image_keys", "holdout_mask", "select",
    "pool_sides", "YOLODataset", "open_sets", "take_side", "image_problems", "drop_unreadable", "FORMATS",
]
