"""Detection datasets (PASCAL VOC layout, COCO) and the padded batch the loss consumes.

Boxes, written down once:
  * VOC XML boxes are 1-based and pixel-inclusive: a box covering pixel columns c0..c1 (0-based) is
    stored as xmin = c0 + 1, xmax = c1 + 1. We convert to 0-based continuous xyxy with
    (x1, y1, x2, y2) = (xmin - 1, ymin - 1, xmax, ymax), so the width is xmax - xmin + 1.
  * COCO boxes are 0-based continuous xywh: (x, y, x + w, y + h).
  * Boxes are clipped to the image. A box with no extent in the annotation (xmax <= xmin or
    ymax <= ymin: a point, a line or inverted) or none left after clipping is dropped with one
    warning per file naming the file and each object's index and name.
  * `annotation(i)` and `image_size(i)` are in the upright frame (EXIF orientation applied), which is
    the frame the transforms see (they decode with imageio.load_rgb). An annotation whose size
    matches the stored pixels is taken to be in the stored frame (what labelling tools show) and its
    boxes are rotated with the image.
  * `__getitem__` hands the transform pixel xyxy boxes and returns boxes normalised to [0, 1]
    (DESIGN.md). Class 0 is background; labels are 1..C.
"""
from __future__ import annotations

import contextlib
import io
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from defusedxml import ElementTree as SafeET
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from .errors import DataError
from .imageio import exif_orientation, load_rgb, open_image

__all__ = [
    "VOC_CLASSES", "DataWarning", "Target", "Batch", "VOCDataset", "COCODataset", "read_image_set",
    "parse_voc_xml", "collate", "make_loader", "seed_worker", "check_dataset", "DatasetReport",
    "image_keys", "holdout_mask", "select",
]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")
_VOC_DIR = re.compile(r"VOC\d{4}$")
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, Image.DecompressionBombError)


class DataWarning(UserWarning):
    """An annotation was repaired (box clipped) or partly dropped (degenerate box)."""


class Target(NamedTuple):
    boxes: torch.Tensor       # float32 [n, 4] pixel xyxy, 0-based
    labels: torch.Tensor      # int64 [n], 1..C (0 = background)
    difficult: torch.Tensor   # bool [n]


class Batch(NamedTuple):
    images: torch.Tensor   # uint8 [B, 3, S, S]
    boxes: torch.Tensor    # float32 [B, M, 4] xyxy in [0, 1]; padding rows are 0
    labels: torch.Tensor   # int64 [B, M]; 0 = padding
    indices: torch.Tensor  # int64 [B] dataset indices

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))


# --------------------------------------------------------------------------------------------
# VOC files: image sets and XML annotations
# --------------------------------------------------------------------------------------------
def _split_image_set(root: Path, image_set: str) -> tuple[str, str]:
    """"VOC2007/trainval" -> ("VOC2007", "trainval"); a bare "test" when root is the subdir itself."""
    subdir, _, split = image_set.strip("/").rpartition("/")
    if not split:
        raise DataError(f"{root}: empty image set name {image_set!r} (expected e.g. 'VOC2007/trainval')")
    return subdir or ".", split


def read_image_set(root: str | Path, image_set: str) -> list[str]:
    """Image ids listed in `<root>/<subdir>/ImageSets/Main/<split>.txt` for image_set "subdir/split"."""
    root = Path(root)
    subdir, split = _split_image_set(root, image_set)
    path = root / subdir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        main = path.parent
        have = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem) if main.is_dir() else []
        raise DataError(f"{path}: image set {image_set!r} not found"
                        + (f" (available: {', '.join(have)})" if have else f" ({main} does not exist)"))
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read image set: {exc}") from exc
    return [line.split()[0] for line in lines if line.strip()]


@dataclass
class _RawAnnotation:
    """What a VOC XML file says, before class mapping, clipping and filtering."""
    size: tuple[int, int]                      # (w, h); (0, 0) when absent
    names: list[str]
    boxes: np.ndarray                          # float64 [n, 4] raw 1-based xmin, ymin, xmax, ymax
    difficult: np.ndarray                      # bool [n]
    filename: str | None = None


def _text(node, tag: str, path: Path, what: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{path}: {what} has no <{tag}>")
    return child.text.strip()


def _read_voc_xml(path: Path) -> _RawAnnotation:
    try:
        root = SafeET.parse(str(path)).getroot()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: annotation file not found") from exc
    except Exception as exc:  # ParseError, defusedxml's forbidden entities, OSError
        raise DataError(f"{path}: malformed annotation XML: {exc}") from exc
    try:
        size = root.find("size")
        wh = (int(float(size.findtext("width", "0"))), int(float(size.findtext("height", "0")))) if size is not None else (0, 0)
    except ValueError as exc:
        raise DataError(f"{path}: <size> is not numeric: {exc}") from exc
    names, boxes, difficult = [], [], []
    for k, obj in enumerate(root.iter("object")):
        name = _text(obj, "name", path, f"object {k}")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{path}: object {k} ({name}) has no <bndbox>")
        try:
            boxes.append([float(_text(bnd, t, path, f"object {k} ({name})")) for t in ("xmin", "ymin", "xmax", "ymax")])
            difficult.append(int(float(obj.findtext("difficult", "0") or 0)) != 0)
        except ValueError as exc:
            raise DataError(f"{path}: object {k} ({name}) has a non-numeric box: {exc}") from exc
        names.append(name)
    return _RawAnnotation(wh, names, np.asarray(boxes, np.float64).reshape(-1, 4),
                          np.asarray(difficult, bool), root.findtext("filename"))


def _to_target(raw: _RawAnnotation, class_names: Sequence[str], path: Path,
               size: tuple[int, int] | None = None, clipped: list[str] | None = None) -> Target:
    """Map names to labels 1..C, convert 1-based inclusive -> 0-based xyxy, clip, drop degenerate.
    `clipped`: when given, one line per box that clipping changed is appended to it."""
    index = {n: i + 1 for i, n in enumerate(class_names)}
    unknown = [(k, n) for k, n in enumerate(raw.names) if n not in index]
    if unknown:
        k, n = unknown[0]
        raise DataError(f"{path}: object {k} has class {n!r}, not in the class list "
                        f"[{', '.join(class_names)}]" + (f" ({len(unknown)} such objects)" if len(unknown) > 1 else ""))
    w, h = size or raw.size
    b = raw.boxes.copy()
    degenerate = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    b[:, :2] -= 1.0
    if w > 0 and h > 0:
        unclipped = b
        b = b.clip(0.0, np.array([w, h, w, h], np.float64))
        if clipped is not None:
            for k in np.flatnonzero((b != unclipped).any(1) & ~degenerate):
                clipped.append(f"{path}: object {k} ({raw.names[k]}, box {raw.boxes[k].tolist()}) clipped to the "
                               f"{w}x{h} image")
    degenerate |= (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if degenerate.any():
        dropped = ", ".join(f"object {k} ({raw.names[k]}, box {raw.boxes[k].tolist()})" for k in np.flatnonzero(degenerate))
        warnings.warn(f"{path}: dropped degenerate box(es) with no area: {dropped}", DataWarning, stacklevel=3)
    keep = ~degenerate
    labels = [index[n] for n, k in zip(raw.names, keep) if k]
    return Target(torch.as_tensor(b[keep], dtype=torch.float32).reshape(-1, 4),
                  torch.as_tensor(labels, dtype=torch.int64),
                  torch.as_tensor(raw.difficult[keep], dtype=torch.bool))


def parse_voc_xml(path: str | Path, class_names: Sequence[str],
                  image_size: tuple[int, int] | None = None) -> tuple[Target, tuple[int, int]]:
    """Parse one VOC annotation -> (Target in 0-based pixel xyxy, difficult kept; (w, h)).

    `image_size` overrides the XML <size> (used for clipping) when the XML has none.
    """
    path = Path(path)
    raw = _read_voc_xml(path)
    size = raw.size if raw.size[0] > 0 and raw.size[1] > 0 else image_size
    if size is None:
        raise DataError(f"{path}: annotation has no <size>; pass image_size")
    return _to_target(raw, class_names, path, size), tuple(size)


# --------------------------------------------------------------------------------------------
# EXIF orientation of boxes (imageio.load_rgb rotates the pixels; the boxes must follow)
# --------------------------------------------------------------------------------------------
def _orient_boxes(boxes: torch.Tensor, size: tuple[int, int], orientation: int) -> torch.Tensor:
    """Map xyxy boxes from the stored frame (w, h) to the upright frame of EXIF `orientation`."""
    if orientation == 1 or boxes.numel() == 0:
        return boxes
    w, h = size
    x1, y1, x2, y2 = boxes.unbind(-1)
    mapped = {
        2: (w - x2, y1, w - x1, y2),          # mirror horizontal
        3: (w - x2, h - y2, w - x1, h - y1),  # rotate 180
        4: (x1, h - y2, x2, h - y1),          # mirror vertical
        5: (y1, x1, y2, x2),                  # transpose
        6: (h - y2, x1, h - y1, x2),          # rotate 90 clockwise
        7: (h - y2, w - x2, h - y1, w - x1),  # transverse
        8: (y1, w - x2, y2, w - x1),          # rotate 90 counter-clockwise
    }[orientation]
    return torch.stack(mapped, -1)


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation >= 5 else tuple(size)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
@dataclass
class _Record:
    image: Path
    source: Path                       # annotation file (XML or instances JSON)
    target: Target                     # annotation frame, pixel xyxy, difficult kept
    size: tuple[int, int]              # annotation frame (w, h); (0, 0) = unknown


class _DetectionDataset(Dataset):
    """Shared item logic: lazy open, upright frame, transform call, skip_bad, image cache."""

    records: list[_Record]
    class_names: list[str]

    def __init__(self, transform, keep_difficult: bool, skip_bad: bool, cache_images: bool):
        self.transform = transform
        self.keep_difficult = keep_difficult
        self.skip_bad = skip_bad
        self.cache_images = cache_images
        self.skipped = 0
        self.skip_reasons: list[str] = []
        self._upright: dict[int, tuple[Target, tuple[int, int]]] = {}
        self._cache: dict[int, Image.Image] = {}

    @property
    def num_classes(self) -> int:
        """Including background."""
        return len(self.class_names) + 1

    def __len__(self) -> int:
        return len(self.records)

    def _skip(self, reason: str) -> None:
        self.skipped += 1
        self.skip_reasons.append(reason)
        warnings.warn(f"skipped: {reason}", DataWarning, stacklevel=3)

    def _frame(self, i: int, img: Image.Image | None = None) -> tuple[Target, tuple[int, int]]:
        """(target, (w, h)) in the upright frame; reads the image header once per index."""
        if i not in self._upright:
            rec = self.records[i]
            if img is None:
                with open_image(rec.image) as header:   # header only; close the file again
                    stored, o = header.size, exif_orientation(header)
            else:
                stored, o = img.size, exif_orientation(img)
            upright = _upright_size(stored, o)
            t = rec.target
            if rec.size in ((0, 0), tuple(stored)):
                boxes = _orient_boxes(t.boxes, stored, o)
            elif tuple(rec.size) == upright:
                boxes = t.boxes
            else:
                raise DataError(f"{rec.source}: annotation size {rec.size[0]}x{rec.size[1]} does not match "
                                f"image {rec.image} ({stored[0]}x{stored[1]})")
            if rec.size == (0, 0):  # no size in the annotation: clip now that we know it
                boxes = boxes.clamp(min=0).minimum(torch.tensor([*upright, *upright], dtype=boxes.dtype))
            self._upright[i] = (Target(boxes, t.labels, t.difficult), upright)
        return self._upright[i]

    def annotation(self, i: int) -> Target:
        """All objects of item i (difficult kept) in original pixels, upright frame."""
        return self._frame(i)[0]

    def image_size(self, i: int) -> tuple[int, int]:
        """(w, h) of item i, upright frame."""
        return self._frame(i)[1]

    def image_path(self, i: int) -> Path:
        return self.records[i].image

    def _item(self, i: int):
        rec = self.records[i]
        img = self._cache.get(i)
        if img is None:
            img = open_image(rec.image)
            target, (w, h) = self._frame(i, img)
            if self.cache_images:
                with img:
                    img = self._cache[i] = load_rgb(img)
        else:
            target, (w, h) = self._frame(i)
        keep = target.difficult.logical_not() | self.keep_difficult
        boxes, labels = target.boxes[keep].clone(), target.labels[keep].clone()
        try:
            if self.transform is None:
                rgb = load_rgb(img)
                image = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()
                return image, boxes / torch.tensor([w, h, w, h], dtype=torch.float32), labels, i
            image, boxes, labels = self.transform(img, boxes, labels)
        except _DECODE_ERRORS as exc:
            img.close()
            raise DataError(f"{rec.image}: cannot decode image: {exc}") from exc
        except DataError:
            img.close()
            raise
        return image, boxes, labels, i

    def __getitem__(self, i: int):
        """(image uint8 [3, S, S], boxes [k, 4] xyxy in [0, 1], labels int64 [k], index i).

        With skip_bad, an image that cannot be read is counted in `skipped` and the next readable
        item is returned instead (its own index is returned, so indices stay truthful).
        """
        for j in range(len(self) if self.skip_bad else 1):
            k = (i + j) % len(self)
            try:
                return self._item(k)
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self._skip(str(exc))
        raise DataError(f"{self.records[i].source}: no readable item left (skip_bad skipped {self.skipped})")


class VOCDataset(_DetectionDataset):
    """PASCAL VOC layout: <root>/<subdir>/{Annotations, JPEGImages, ImageSets/Main/<split>.txt}.

    image_sets: e.g. ["VOC2007/trainval", "VOC2012/trainval"] (07+12) or ["BCCD/test"].
    class_names: None -> VOC_CLASSES when every subdir is VOCyyyy, else inferred (sorted) from the
    annotations. Difficult objects are excluded from training items unless keep_difficult, and
    always present in annotation(i). A malformed annotation or a missing image raises DataError
    naming the file, or with skip_bad is dropped at construction and counted in `skipped`; an image
    that turns out unreadable when its item is read is handled by __getitem__ the same way.
    """

    def __init__(self, root: str | Path, image_sets: Sequence[str] | str,
                 class_names: Sequence[str] | None = None, keep_difficult: bool = False,
                 transform: Callable | None = None, skip_bad: bool = False, cache_images: bool = False):
        super().__init__(transform, keep_difficult, skip_bad, cache_images)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found")
        self.image_sets = [image_sets] if isinstance(image_sets, str) else list(image_sets)
        if not self.image_sets:
            raise DataError(f"{self.root}: no image sets given (expected e.g. ['VOC2007/trainval'])")
        ids = [(_split_image_set(self.root, s)[0], i) for s in self.image_sets for i in read_image_set(self.root, s)]
        raws = []
        for subdir, image_id in dict.fromkeys(ids):  # 07+12 style lists may repeat nothing, but be safe
            xml = self.root / subdir / "Annotations" / f"{image_id}.xml"
            try:
                raw = _read_voc_xml(xml)
                image = _find_image(self.root / subdir / "JPEGImages", image_id, raw.filename, xml)
                raws.append((subdir, image_id, xml, image, raw))
            except DataError as exc:
                if not skip_bad:
                    raise
                self._skip(str(exc))
        if class_names is not None:
            self.class_names = list(class_names)
        elif all(_VOC_DIR.match(Path(s).name) for s, *_ in raws) and raws:
            self.class_names = list(VOC_CLASSES)
        else:
            self.class_names = sorted({n for *_, raw in raws for n in raw.names})
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"{self.root}: duplicate class names in {self.class_names}")
        self.ids: list[tuple[str, str]] = []
        self.records = []
        for subdir, image_id, xml, image, raw in raws:
            target = _to_target(raw, self.class_names, xml)
            self.ids.append((subdir, image_id))
            self.records.append(_Record(image, xml, target, raw.size))


def _find_image(folder: Path, image_id: str, filename: str | None, source: Path) -> Path:
    """<folder>/<id>.jpg, else another common extension, else the XML's <filename>."""
    candidates = [folder / f"{image_id}{ext}" for ext in IMAGE_EXTENSIONS]
    if filename:
        candidates.append(folder / Path(filename).name)
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"{candidates[0]}: image file not found (annotation {source})")


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
        cats = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
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
        xywh = np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        b = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        if w > 0 and h > 0:
            b = b.clip(0.0, np.array([w, h, w, h], np.float64))
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


def _coco_paths(image_dir: Path, instances: str | Path | Sequence[str]) -> tuple[Path, Path]:
    """(image_dir, instances.json), or the split form (root, ["val2017"]) ->
    (root/val2017, root/annotations/instances_val2017.json) used by train.build_dataset."""
    if isinstance(instances, (list, tuple)):
        if len(instances) != 1:
            raise DataError(f"{image_dir}: COCODataset reads one split at a time, got {list(instances)}")
        instances = instances[0]
    path = Path(instances)
    if path.suffix == ".json" or path.is_file():
        return image_dir, path
    return image_dir / path.name, image_dir / "annotations" / f"instances_{path.name}.json"


# --------------------------------------------------------------------------------------------
# Holdout: a validation slice of the training images
# --------------------------------------------------------------------------------------------
def image_keys(dataset) -> list[str]:
    """One stable text key per item: "subdir/image_id" (VOC) or the COCO image id."""
    return [f"{i[0]}/{i[1]}" if isinstance(i, tuple) else str(i) for i in dataset.ids]


def holdout_mask(keys: Sequence[str], fraction: float, seed: int = 0) -> np.ndarray:
    """True for the held-out keys: the round(fraction * n) keys (at least 1, at most n - 1) with the
    smallest sha256(f"{seed}/{key}"). Deterministic and independent of the order of `keys`, so every
    run, seed and arm on the same images holds out the same ones."""
    import hashlib

    n = len(keys)
    if n < 2:
        raise DataError(f"holdout {fraction}: {n} image(s) cannot be split into training and validation")
    k = min(n - 1, max(1, round(fraction * n)))
    digests = [hashlib.sha256(f"{seed}/{key}".encode()).hexdigest() for key in keys]
    mask = np.zeros(n, bool)
    mask[np.argsort(digests, kind="stable")[:k]] = True
    return mask


def select(dataset, keep: np.ndarray):
    """Keep only the items where `keep` is true (in place; returns the dataset)."""
    keep = np.asarray(keep, bool)
    dataset.ids = [i for i, k in zip(dataset.ids, keep) if k]
    dataset.records = [r for r, k in zip(dataset.records, keep) if k]
    if hasattr(dataset, "image_ids"):
        dataset.image_ids = dataset.ids
    dataset._upright.clear()
    dataset._cache.clear()
    return dataset


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------
def collate(batch: Sequence[tuple]) -> Batch:
    """Stack images and pad boxes/labels to M = max objects in the batch (at least 1), label 0 = padding."""
    images, boxes, labels, indices = zip(*batch)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise ValueError(f"collate needs equally sized images (got {sorted(shapes)}); use a resizing transform")
    m = max(1, max(len(lb) for lb in labels))
    boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
    labels = [torch.as_tensor(lb, dtype=torch.int64).reshape(-1) for lb in labels]
    padded_boxes = pad_sequence(boxes + [torch.zeros(m, 4)], batch_first=True)[:-1]
    padded_labels = pad_sequence(labels + [torch.zeros(m, dtype=torch.int64)], batch_first=True)[:-1]
    return Batch(torch.stack(images), padded_boxes, padded_labels, torch.as_tensor(indices, dtype=torch.int64))


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed numpy and random from torch's per-worker seed (base_seed + worker_id)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0, seed: int = 0,
                pin_memory: bool | None = None, persistent_workers: bool | None = None,
                drop_last: bool = False, collate_fn: Callable = collate) -> DataLoader:
    """A deterministic DataLoader: seeded generator (shuffle order, worker base seeds) + seed_worker.

    pin_memory=None -> torch.cuda.is_available(); persistent_workers=None -> num_workers > 0.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=pin_memory, drop_last=drop_last, generator=generator,
                      worker_init_fn=seed_worker if num_workers > 0 else None,
                      persistent_workers=bool(persistent_workers and num_workers > 0))


# --------------------------------------------------------------------------------------------
# Up-front dataset check (ssdlab data check)
# --------------------------------------------------------------------------------------------
@dataclass
class Problem:
    file: str
    message: str
    skippable: bool   # skip_bad=True would skip this image and go on


@dataclass
class DatasetReport:
    root: str
    image_sets: list[str]
    class_names: list[str] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    images: int = 0
    objects: dict[str, int] = field(default_factory=dict)
    difficult: dict[str, int] = field(default_factory=dict)
    min_size: tuple[int, int] | None = None   # (smallest width, smallest height)
    max_size: tuple[int, int] | None = None   # (largest width, largest height)
    problems: list[Problem] = field(default_factory=list)
    clipped: list[str] = field(default_factory=list)  # boxes past the image border (repaired: not problems)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fatal(self, skip_bad: bool = False) -> list[Problem]:
        """Problems that stop loading (all of them, or with skip_bad those it cannot skip)."""
        return [p for p in self.problems if not (skip_bad and p.skippable)]

    def format(self) -> str:
        lines = [f"dataset {self.root}: {self.images} images, {sum(self.objects.values())} objects, "
                 f"{len(self.class_names)} classes"]
        lines += [f"  split {s}: {n} images" for s, n in self.split_sizes.items()]
        lines += [f"  class {c}: {self.objects.get(c, 0)} objects ({self.difficult.get(c, 0)} difficult)"
                  for c in self.class_names]
        if self.min_size:
            lines.append(f"  image size: width {self.min_size[0]}..{self.max_size[0]}, "
                         f"height {self.min_size[1]}..{self.max_size[1]}")
        if self.clipped:
            lines.append(f"  warnings: {len(self.clipped)} boxes reach past the image border and are clipped to it")
            lines += [f"  - {c}" for c in self.clipped]
        lines.append(f"  problems: {len(self.problems)}" if self.problems else "  problems: none")
        lines += [f"  - {p.message}" for p in self.problems]
        return "\n".join(lines)


def check_dataset(root: str | Path, image_sets: Sequence[str] | None = None,
                  class_names: Sequence[str] | None = None, decode: bool = True) -> DatasetReport:
    """Read every annotation and image of `image_sets` (default: every split found under root) and
    report counts, sizes and every problem (nothing raises for a bad file; a missing root does).

    decode=True fully decodes each image (finds truncated files); False reads headers only.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found")
    image_sets = list(image_sets or _find_image_sets(root))
    if not image_sets:
        raise DataError(f"{root}: no <subdir>/ImageSets/Main/<split>.txt found")
    report = DatasetReport(str(root), image_sets)
    ids: dict[tuple[str, str], None] = {}
    for s in image_sets:
        try:
            split_ids = read_image_set(root, s)
        except DataError as exc:
            report.problems.append(Problem(s, str(exc), skippable=False))
            continue
        report.split_sizes[s] = len(split_ids)
        ids.update(dict.fromkeys((_split_image_set(root, s)[0], i) for i in split_ids))
    raws = []
    for subdir, image_id in ids:
        xml = root / subdir / "Annotations" / f"{image_id}.xml"
        try:
            raw = _read_voc_xml(xml)
            raws.append((subdir, xml, raw, _find_image(root / subdir / "JPEGImages", image_id, raw.filename, xml)))
        except DataError as exc:
            report.problems.append(Problem(str(xml), str(exc), skippable=True))
    if class_names is None:
        voc = raws and all(_VOC_DIR.match(Path(s).name) for s, *_ in raws)
        class_names = list(VOC_CLASSES) if voc else sorted({n for _, _, raw, _ in raws for n in raw.names})
    report.class_names = list(class_names)
    sizes = []
    for subdir, xml, raw, image in raws:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            try:
                target = _to_target(raw, class_names, xml, clipped=report.clipped)
            except DataError as exc:
                report.problems.append(Problem(str(xml), str(exc), skippable=False))
                continue
        report.problems += [Problem(str(xml), str(w.message), skippable=True) for w in caught]
        try:
            with open_image(image) as img:
                size = load_rgb(img).size if decode else _upright_size(img.size, exif_orientation(img))
        except DataError as exc:
            report.problems.append(Problem(str(image), str(exc), skippable=True))
            continue
        if raw.size not in ((0, 0), size, size[::-1]):
            report.problems.append(Problem(str(xml), f"{xml}: annotation size {raw.size[0]}x{raw.size[1]} does "
                                           f"not match image {image} ({size[0]}x{size[1]})", skippable=True))
        report.images += 1
        sizes.append(size)
        for label, diff in zip(target.labels.tolist(), target.difficult.tolist()):
            name = class_names[label - 1]
            report.objects[name] = report.objects.get(name, 0) + 1
            report.difficult[name] = report.difficult.get(name, 0) + int(diff)
    if sizes:
        report.min_size = (min(s[0] for s in sizes), min(s[1] for s in sizes))
        report.max_size = (max(s[0] for s in sizes), max(s[1] for s in sizes))
    return report


def _find_image_sets(root: Path) -> list[str]:
    """Every "<subdir>/<split>" under root with a plain split file (train, val, trainval, test, ...)."""
    found = []
    for main in sorted(root.glob("*/ImageSets/Main")) + sorted(root.glob("ImageSets/Main")):
        subdir = main.parent.parent.relative_to(root).as_posix()
        found += [f"{subdir}/{p.stem}" if subdir != "." else p.stem
                  for p in sorted(main.glob("*.txt")) if "_" not in p.stem]
    return found
