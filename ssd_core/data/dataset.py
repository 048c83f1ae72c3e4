"""The item logic every detection dataset shares (VOC, COCO): lazy open, the upright frame, the
transform call, skip_bad, an image cache; and the holdout slice (a validation split carved from the
training images).

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
  * YOLO boxes are normalised cx, cy, w, h of the upright image (Ultralytics reads images with the EXIF
    orientation applied): they are turned into normalised xyxy when read and scaled to pixels here,
    once the image's size is known (`_Record.normalized`).
  * A dataset may trust the pixels over the annotation's size (`size_from_pixels`: LabelImg folders,
    whose XML `<size>` is often 0 or stale): a size that matches neither frame is then replaced by the
    image's, with one warning, instead of failing.
  * `__getitem__` hands the transform pixel xyxy boxes and returns boxes normalised to [0, 1]
    (DESIGN.md). Class 0 is background; labels are 1..C. Every format (voc.py, coco.py, yolo.py) builds
    `_Record`s; nothing after the dataset knows the format.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssd_core.errors import DataError
from ssd_core.imageio import DECODE_ERRORS, cannot_decode, exif_orientation, load_rgb, open_image


class DataWarning(UserWarning):
    """An annotation was repaired (box clipped) or partly dropped (degenerate box)."""


class Target(NamedTuple):
    boxes: torch.Tensor       # float32 [n, 4] pixel xyxy, 0-based
    labels: torch.Tensor      # int64 [n], 1..C (0 = background)
    difficult: torch.Tensor   # bool [n]



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
    normalized: bool = False           # boxes are xyxy in [0, 1] of the upright frame (YOLO)


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
        self.repairs: list[str] = []      # boxes clipped to the border, duplicates dropped: one line each
        self.size_from_pixels = False     # an annotation size that matches neither frame: use the image's
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
            t, size = rec.target, tuple(rec.size)
            if rec.normalized:
                boxes = t.boxes * torch.tensor([*upright, *upright], dtype=t.boxes.dtype)
            elif size in ((0, 0), tuple(stored)):
                boxes = _orient_boxes(t.boxes, stored, o)
            elif size == upright:
                boxes = t.boxes
            elif self.size_from_pixels:
                self.repairs.append(f"{rec.source}: annotation size {size[0]}x{size[1]} does not match image "
                                    f"{rec.image} ({stored[0]}x{stored[1]}): the image's size is used")
                boxes, size = _orient_boxes(t.boxes, stored, o), (0, 0)
            else:
                raise DataError(f"{rec.source}: annotation size {size[0]}x{size[1]} does not match "
                                f"image {rec.image} ({stored[0]}x{stored[1]})")
            clipped = boxes.clamp(min=0).minimum(torch.tensor([*upright, *upright], dtype=boxes.dtype))
            moved = (clipped != boxes).any(1)
            if moved.any():  # only where the annotation gave no usable size: the others were clipped when read
                self.repairs.append(f"{rec.source}: {int(moved.sum())} box(es) reach past the {upright[0]}x"
                                    f"{upright[1]} image {rec.image.name}: clipped to it")
                boxes = clipped
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            if not keep.all():
                warnings.warn(f"{rec.source}: dropped {int((~keep).sum())} box(es) lying wholly outside the image "
                              f"{rec.image.name}", DataWarning, stacklevel=2)
            self._upright[i] = (Target(boxes[keep], t.labels[keep], t.difficult[keep]), upright)
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
        except DECODE_ERRORS as exc:
            img.close()
            raise cannot_decode(rec.image, exc) from exc
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



# --------------------------------------------------------------------------------------------
# Holdout: a validation slice of the training images
# --------------------------------------------------------------------------------------------
def image_keys(dataset) -> list[str]:
    """One stable text key per item: "subdir/image_id" (VOC) or the COCO image id."""
    return [f"{i[0]}/{i[1]}" if isinstance(i, tuple) else str(i) for i in dataset.ids]


def holdout_mask(keys: Sequence[str], fraction: float, seed: int = 0, salt: str = "") -> np.ndarray:
    """True for the held-out keys: the round(fraction * n) keys (at least 1, at most n - 1) with the
    smallest sha256(f"{salt}{seed}/{key}"). Deterministic and independent of the order of `keys`, so every
    run, seed and arm on the same images holds out the same ones; another `salt` draws an independent slice."""
    n = len(keys)
    if n < 2:
        raise DataError(f"holdout {fraction}: {n} image(s) cannot be split into training and validation")
    k = min(n - 1, max(1, round(fraction * n)))
    digests = [hashlib.sha256(f"{salt}{seed}/{key}".encode()).hexdigest() for key in keys]
    mask = np.zeros(n, bool)
    mask[np.argsort(digests, kind="stable")[:k]] = True
    return mask


TEST_SALT = "test/"  # the hashed test slice (data.test_holdout) is drawn independently of the holdout


def pool_sides(keys: Sequence[str], holdout: float | None, test_holdout: float | None, seed: int = 0) -> np.ndarray:
    """Each key's side of a training pool: "test" (the test_holdout slice, drawn first), "val" (the holdout
    slice of the rest), "train" (what is left). With no test_holdout the val slice is holdout_mask's."""
    sides = np.full(len(keys), "train", dtype=object)
    rest = np.arange(len(keys))
    if test_holdout:
        test = holdout_mask(keys, test_holdout, seed, salt=TEST_SALT)
        sides[test] = "test"
        rest = np.flatnonzero(~test)
    if holdout:
        sides[rest[holdout_mask([keys[i] for i in rest], holdout, seed)]] = "val"
    return sides


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
