"""One door to every format: (format, root, sets) -> a dataset, and the quick look at its images.

    open_sets(fmt, root, sets, ...)   VOCDataset | COCODataset | YOLODataset of those sets; the same item
                                      contract for all three (data/dataset.py), so nothing after this knows
                                      the format
    take_side(ds, side, ...)          keep one side of a training pool (data.holdout, data.test_holdout)
    image_problems(ds)                every image's header read (fast: no decode): the files that cannot be
                                      opened, one line each
    drop_unreadable(datasets, ...)    what fit, a sweep and `ssdlab train` do with them before training:
                                      refuse in one line naming them, or (data.skip_bad) leave them out
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


def image_problems(ds) -> dict[int, str]:
    """Item index -> one line, for each image of `ds` whose header cannot be read (missing, empty, not an
    image, cut before its size); the full decode stays in `ssdlab data check`."""
    from ssd_core.imageio import open_image

    bad = {}
    for k in range(len(ds)):
        try:
            with open_image(ds.image_path(k)):
                pass
        except DataError as exc:
            bad[k] = str(exc)
    return bad


def drop_unreadable(datasets: dict, where: str, skip_bad: bool) -> dict[str, list[str]]:
    """The images whose headers cannot be read in `datasets` (split -> dataset or None): none -> {}; some -> a
    DataError in one line naming them (`where`: the config), or with `skip_bad` they leave their datasets and
    their lines are returned by split."""
    from ssd_core.data.dataset import select

    bad = {split: image_problems(ds) for split, ds in datasets.items() if ds is not None}
    found = [(split, m) for split, b in bad.items() for m in b.values()]
    if found and not skip_bad:
        files = [f"{m.split(': ', 1)[0]} ({split})" for split, m in found]
        raise DataError(f"{where}: {len(found)} image(s) cannot be read: {', '.join(files[:5])}"
                        f"{f' and {len(files) - 5} more' if len(files) > 5 else ''} (first: {found[0][1]}); "
                        f"fix or remove them, or set data.skip_bad: true to train past them")
    for split, b in bad.items():
        if b:
            select(datasets[split], [k not in b for k in range(len(datasets[split]))])
    return {split: list(b.values()) for split, b in bad.items() if b}
