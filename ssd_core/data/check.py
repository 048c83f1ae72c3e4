"""`ssdlab data check`: read a whole VOC-layout dataset up front and list every problem, before hours
of training are spent on it (the same scan the dataset uses: data/voc.py `scan_voc`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ssd_core.data.dataset import DataWarning, _upright_size
from ssd_core.data.voc import _to_target, scan_voc
from ssd_core.errors import DataError
from ssd_core.imageio import exif_orientation, load_rgb, open_image


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
    scan = scan_voc(root, image_sets)
    report.split_sizes = dict(scan.split_sizes)
    report.problems += [Problem(_file_of(e), str(e), skippable=False) for e in scan.set_errors]
    report.problems += [Problem(_file_of(e), str(e), skippable=True) for e in scan.item_errors]
    if class_names is None:
        class_names = scan.class_names()
    report.class_names = list(class_names)
    sizes = []
    for e in scan.entries:
        xml, raw, image = e.xml, e.raw, e.image
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


def _file_of(exc: DataError) -> str:
    """The file a DataError names (its messages start with it)."""
    return str(exc).split(": ", 1)[0]
