"""One door to every format: (format, root, sets) -> a dataset, and the quick look at its images.

    open_sets(fmt, root, sets, ...)   VOCDataset | COCODataset | YOLODataset of those sets; the same item
                                      contract for all three (data/dataset.py), so nothing after this knows
                                      the format
    take_side(ds, side, ...)          keep one side of a training pool (data.holdout, data.test_holdout)
    image_problems(ds)                every image's header read (fast: no decode): the files that cannot be
                                      opened, one line each; what a sweep or `ssdlab train` checks up front
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from ssd_core.errors import DataError

FORMATS = ("voc", "coco", "yolo")


def open_sets(fmt: str, root: Path, sets: Sequence[str], transform: Optional[Callable] = None,
              class_names: Optional[Sequence[str]] = None, keep_difficult: bool = False, skip_bad: bool = False,
              cache_images: bool = False):
    """The dataset of `sets` under `root` in format `fmt` (DataConfig's docstring says what a set names)."""
    from ssd_core.data.coco import COCODataset
    from ssd_core.data.voc import VOCDataset
    from ssd_core.data.yolo import YOLODataset

    sets = list(sets)
    if fmt == "voc":
        return VOCDataset(root, sets, class_names=class_names, keep_difficult=keep_difficult, transform=transform,
                          skip_bad=skip_bad, cache_images=cache_images)
    if fmt == "coco":
        if len(sets) != 1:
            raise DataError(f"{root}: COCO reads one set (instances file) per split, got {sets}")
        return COCODataset(root, sets, transform=transform, class_names=class_names, skip_bad=skip_bad,
                           cache_images=cache_images)
    if fmt == "yolo":
        return YOLODataset(root, sets, transform=transform, class_names=class_names, skip_bad=skip_bad,
                           cache_images=cache_images)
    raise DataError(f"{root}: unknown data format {fmt!r} (expected one of {', '.join(FORMATS)})")


def take_side(ds, side: str, holdout: Optional[float], test_holdout: Optional[float], seed: int = 0):
    """Keep the items of `ds` on `side` ("train" | "val" | "test") of its pool (dataset.pool_sides)."""
    from ssd_core.data.dataset import image_keys, pool_sides, select

    return select(ds, pool_sides(image_keys(ds), holdout, test_holdout, seed) == side)


def image_problems(ds) -> list[str]:
    """One line per image of `ds` whose header cannot be read (missing, empty, not an image, truncated
    before its size); the full decode stays in `ssdlab data check`."""
    from ssd_core.imageio import open_image

    bad = []
    for k in range(len(ds)):
        try:
            with open_image(ds.image_path(k)):
                pass
        except DataError as exc:
            bad.append(str(exc))
    return bad
