"""COCO detection (instances json) through pycocotools' COCO API.

A COCO set is named three ways (coco_split):
    val2017                      <root>/val2017/ + <root>/annotations/instances_val2017.json (the COCO layout)
    train                        <root>/train/_annotations.coco.json with its images beside it (Roboflow)
    annotations/custom.json      any instances file by its path from the root; its images are found where
                                 the first image's file_name exists: beside the file, one folder up, the
                                 root, <root>/images, or a folder named like the file's split
Category ids of any numbering (0-based too) map to contiguous labels 1..K in id order. Roboflow's extra
category (the dataset's own name, id 0, supercategory 'none', parent of the others and with no boxes) is not
a class and is left out. Images without annotations are kept: they are negatives.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ssd_core.data.dataset import DataWarning, Target, _DetectionDataset, _Record
from ssd_core.errors import DataError


class COCODataset(_DetectionDataset):
    """COCO detection through pycocotools' COCO API.

    Category ids map to contiguous labels 1..K (sorted by id; 0 = background):
    `cat_id_to_contiguous`, `contiguous_to_cat_id` (for result files). iscrowd boxes are never
    training targets; annotation(i) keeps them with difficult=True, the VOC way of "ignore".
    """

    def __init__(self, image_dir: str | Path, instances_json: str | Path | Sequence[str],
                 transform: Callable | None = None, class_names: Sequence[str] | None = None,
                 skip_bad: bool = False, cache_images: bool = False,
                 remove_images_without_annotations: bool = False):
        super().__init__(transform, keep_difficult=False, skip_bad=skip_bad, cache_images=cache_images)
        from pycocotools.coco import COCO

        self.image_dir, self.instances_json = _coco_paths(Path(image_dir), instances_json)
        if not self.instances_json.is_file():
            raise DataError(f"{self.instances_json}: COCO instances file not found")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(self.instances_json))
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise DataError(f"{self.instances_json}: not a COCO instances file: {exc!r}") from exc
        cats = _object_categories(self.coco)
        self.class_names = [c["name"] for c in cats]
        if class_names is not None and list(class_names) != self.class_names:
            raise DataError(f"{self.instances_json}: class_names {list(class_names)} do not match the "
                            f"categories in id order {self.class_names}")
        self.category_ids = [c["id"] for c in cats]  # category_ids[label - 1] is the COCO id of label
        self.cat_id_to_contiguous = {c["id"]: k + 1 for k, c in enumerate(cats)}
        self.contiguous_to_cat_id = {k: c for c, k in self.cat_id_to_contiguous.items()}
        self.ids: list[int] = sorted(self.coco.getImgIds())
        if remove_images_without_annotations:
            self.ids = [i for i in self.ids if self.coco.getAnnIds(imgIds=i, iscrowd=False)]
        self.image_ids = self.ids
        self.records = [self._record(i) for i in self.ids]

    def _record(self, image_id: int) -> _Record:
        info = self.coco.loadImgs(image_id)[0]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        w, h = int(info.get("width", 0)), int(info.get("height", 0))
        missing = [a.get("id") for a in anns if not (isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4)]
        if missing:
            raise DataError(f"{self.instances_json}: image {image_id}: annotation {missing[0]} has no 'bbox' "
                            f"[x, y, width, height]" + (f" ({len(missing)} such annotations)" if len(missing) > 1 else ""))
        xywh = np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        b = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        if w > 0 and h > 0:
            unclipped, b = b, b.clip(0.0, np.array([w, h, w, h], np.float64))
            for k in np.flatnonzero((b != unclipped).any(1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])):
                self.repairs.append(f"{self.instances_json}: image {image_id}: annotation {anns[k].get('id')} "
                                    f"(bbox {anns[k]['bbox']}) reaches past the {w}x{h} image: clipped to it")
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        if not keep.all():
            dropped = ", ".join(f"annotation {anns[k].get('id')}" for k in np.flatnonzero(~keep))
            warnings.warn(f"{self.instances_json}: image {image_id}: dropped degenerate box(es) with no area: "
                          f"{dropped}", DataWarning, stacklevel=3)
        labels = np.asarray([self.cat_id_to_contiguous.get(a["category_id"], -1) for a in anns], np.int64)
        if (labels < 0).any():
            bad = anns[int(np.flatnonzero(labels < 0)[0])]
            raise DataError(f"{self.instances_json}: annotation {bad.get('id')} has category_id "
                            f"{bad['category_id']} not in 'categories'")
        crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool)
        target = Target(torch.as_tensor(b[keep], dtype=torch.float32).reshape(-1, 4),
                        torch.as_tensor(labels[keep]), torch.as_tensor(crowd[keep]))
        return _Record(self.image_dir / info["file_name"], self.instances_json, target, (w, h))


def _object_categories(coco) -> list[dict]:
    """The categories in id order, without a Roboflow-style umbrella: a category with no annotations that
    other categories name as their supercategory."""
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    parents = {c.get("supercategory") for c in cats}
    return [c for c in cats if not (c["name"] in parents and not coco.getAnnIds(catIds=[c["id"]]))]


ROBOFLOW_JSON = "_annotations.coco.json"


def coco_split(root: Path, name: str) -> tuple[Path, Path]:
    """(image folder, instances json) of a COCO set name (module docstring)."""
    if name.endswith(".json"):
        path = Path(name) if Path(name).is_absolute() else root / name
        return image_folder(path, root), path
    if (root / name / ROBOFLOW_JSON).is_file():
        return root / name, root / name / ROBOFLOW_JSON
    return root / name, root / "annotations" / f"instances_{Path(name).name}.json"


def image_folder(instances: Path, root: Path) -> Path:
    """Where an instances file's images are: the first candidate folder holding its first image."""
    import json

    if not instances.is_file():
        raise DataError(f"{instances}: COCO instances file not found")
    try:
        images = json.loads(instances.read_text()).get("images") or []
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise DataError(f"{instances}: not a COCO instances file: {exc}") from exc
    split = instances.stem.replace("instances_", "").replace("_annotations.coco", "")
    candidates = [instances.parent, instances.parent.parent, root, root / "images", root / split,
                  root / "images" / split, instances.parent.parent / "images"]
    for token in ("train", "val", "valid", "test"):
        if token in split.split("_") or split.endswith(token):
            candidates += [root / token, root / "images" / token]
    if not images:
        return instances.parent
    first = str(images[0].get("file_name", ""))
    for folder in dict.fromkeys(candidates):
        if (folder / first).is_file():
            return folder
    raise DataError(f"{instances}: image {first!r} (the first in 'images') not found in any of "
                    f"{', '.join(str(c) for c in dict.fromkeys(candidates))}")


def _coco_paths(image_dir: Path, instances: str | Path | Sequence[str]) -> tuple[Path, Path]:
    """(image_dir, instances.json) as given, or the set form (root, ["val2017"]) -> coco_split(root, "val2017")."""
    if isinstance(instances, (list, tuple)):
        if len(instances) != 1:
            raise DataError(f"{image_dir}: COCODataset reads one split at a time, got {list(instances)}")
        return coco_split(image_dir, str(instances[0]))
    return image_dir, Path(instances)
