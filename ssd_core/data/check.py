"""`ssdlab data check`: read a whole dataset (VOC, COCO or YOLO; data/detect.py finds which) up front and
list every problem, before hours of training are spent on it. It reads the data through the same datasets
training does (data/sets.py `open_sets`, with skip_bad so that one bad file does not hide the others):

    problems   what stops training without data.skip_bad (an unreadable image or annotation, a box with no
               area, an annotation size that matches no frame of its image, a class the config does not list)
    warnings   what is repaired on the way (boxes clipped to the border, duplicate lines dropped, a stale
               LabelImg <size>): listed, not problems
    notes      images without objects, duplicated boxes (the same class and box twice in an image)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ssd_core.data.dataset import DataWarning
from ssd_core.data.sets import open_sets
from ssd_core.errors import DataError
from ssd_core.imageio import load_rgb, open_image


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
    clipped: list[str] = field(default_factory=list)  # repaired on reading (clipped, duplicate line): not problems
    format_name: str = "voc"
    empty_images: int = 0                              # images without any object (negatives)
    duplicates: list[str] = field(default_factory=list)  # the same class and box twice in one image
    notes: list[str] = field(default_factory=list)       # what detect_layout found

    @property
    def ok(self) -> bool:
        return not self.problems

    def fatal(self, skip_bad: bool = False) -> list[Problem]:
        """Problems that stop loading (all of them, or with skip_bad those it cannot skip)."""
        return [p for p in self.problems if not (skip_bad and p.skippable)]

    def format(self) -> str:
        lines = [f"dataset {self.root} ({self.format_name}): {self.images} images, {sum(self.objects.values())} "
                 f"objects, {len(self.class_names)} classes"]
        lines += [f"  {n}" for n in self.notes]
        lines += [f"  split {s}: {n} images" for s, n in self.split_sizes.items()]
        lines += [f"  class {c}: {self.objects.get(c, 0)} objects ({self.difficult.get(c, 0)} difficult)"
                  for c in self.class_names]
        if self.min_size:
            lines.append(f"  image size: width {self.min_size[0]}..{self.max_size[0]}, "
                         f"height {self.min_size[1]}..{self.max_size[1]}")
        if self.empty_images:
            lines.append(f"  images without objects: {self.empty_images} (kept: negatives)")
        if self.clipped:
            lines.append(f"  warnings: {len(self.clipped)} boxes reach past the image border and are clipped to it, "
                         f"or are repaired on reading")
            lines += [f"  - {c}" for c in self.clipped]
        if self.duplicates:
            lines.append(f"  duplicated boxes: {len(self.duplicates)} (the same class and box twice in an image)")
            lines += [f"  - {d}" for d in self.duplicates[:20]]
        lines.append(f"  problems: {len(self.problems)}" if self.problems else "  problems: none")
        lines += [f"  - {p.message}" for p in self.problems]
        return "\n".join(lines)



def check_dataset(root: str | Path, image_sets: Sequence[str] | None = None,
                  class_names: Sequence[str] | None = None, decode: bool = True, fmt: str | None = None) -> DatasetReport:
    """Read every annotation and image of `image_sets` (default: the splits data/detect.py finds at `root`,
    which may be a folder, a YOLO data.yaml or a COCO .json) and report counts, sizes and every problem
    (nothing raises for a bad file; a root that is no dataset does). `fmt` with `image_sets` (default voc).

    decode=True fully decodes each image (finds truncated files); False reads headers only.
    """
    from ssd_core.data.detect import detect_layout

    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset root not found")
    notes: list[str] = []
    if image_sets is None:
        layout = detect_layout(root)
        fmt, root, notes = layout.format, layout.root, layout.notes
        image_sets = [s for sets in layout.splits().values() for s in sets]
        if class_names is None:
            class_names = layout.class_names
    fmt = fmt or "voc"
    report = DatasetReport(str(root), list(image_sets), format_name=fmt, notes=list(notes))
    seen: dict[str, None] = {}
    problems: dict[str, Problem] = {}
    sizes = []
    for s in image_sets:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            try:
                ds = open_sets(fmt, root, [s], class_names=class_names, keep_difficult=True, skip_bad=True)
            except DataError as exc:
                problems.setdefault(str(exc), Problem(_file_of(exc), str(exc), skippable=False))
                continue
            report.split_sizes[s] = len(ds) + len(ds.skip_reasons)
            if class_names is None:
                class_names = list(ds.class_names)
            for k in range(len(ds)):
                path = str(ds.image_path(k))
                if path in seen:
                    continue
                seen[path] = None
                size = _read(ds, k, decode, problems)
                if size is None:
                    continue
                report.images += 1
                sizes.append(size)
                _count(report, ds, k, class_names)
        for message in ds.skip_reasons + [str(w.message) for w in caught if issubclass(w.category, DataWarning)]:
            problems.setdefault(message, Problem(message.split(": ", 1)[0], message, skippable=True))
        report.clipped += [r for r in ds.repairs if r not in report.clipped]
    report.class_names = list(class_names or [])
    report.problems = list(problems.values())
    if sizes:
        report.min_size = (min(s[0] for s in sizes), min(s[1] for s in sizes))
        report.max_size = (max(s[0] for s in sizes), max(s[1] for s in sizes))
    return report


def _read(ds, k: int, decode: bool, problems: dict) -> tuple[int, int] | None:
    """Item k's upright (w, h), reading the image (fully with `decode`) and its annotation's frame; None, with
    a problem recorded, when either cannot be read."""
    path = ds.image_path(k)
    try:
        with open_image(path) as img:
            size = load_rgb(img).size if decode else None
        upright = ds.image_size(k)  # also checks the annotation's size against the image
    except DataError as exc:
        problems.setdefault(str(exc), Problem(str(path), str(exc), skippable=True))
        return None
    return size or upright


def _count(report: DatasetReport, ds, k: int, class_names: Sequence[str]) -> None:
    """Objects per class (and difficult), images without objects, duplicated boxes of item k."""
    t = ds.annotation(k)
    if len(t.labels) == 0:
        report.empty_images += 1
    for label, diff in zip(t.labels.tolist(), t.difficult.tolist()):
        name = class_names[label - 1]
        report.objects[name] = report.objects.get(name, 0) + 1
        report.difficult[name] = report.difficult.get(name, 0) + int(diff)
    rows = np.concatenate([t.labels.numpy()[:, None], t.boxes.numpy().round(2)], 1) if len(t.labels) else None
    if rows is not None and len(np.unique(rows, axis=0)) < len(rows):
        report.duplicates.append(f"{ds.records[k].source}: {len(rows) - len(np.unique(rows, axis=0))} duplicated "
                                 f"box(es) in {ds.image_path(k).name}")


def _file_of(exc: DataError) -> str:
    """The file a DataError names (its messages start with it)."""
    return str(exc).split(": ", 1)[0]
