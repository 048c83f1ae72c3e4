"""PASCAL VOC XML, in the devkit layout or as LabelImg leaves it.

A set is either an image set of the devkit layout, "<subdir>/<split>" for
<root>/<subdir>/{Annotations, JPEGImages, ImageSets/Main/<split>.txt}, or a folder under the root ("." for the
root itself) with no ImageSets: LabelImg's layout, the XML files beside their images or in a folder of their
own next to the images' folder, matched to the images by file name. An image there without an XML is an
image without objects; the XML's <size>, often 0 or stale in such folders, gives way to the image's pixels.

    scan_voc(root, image_sets)   image set -> ids -> XML -> image path, once: VOCDataset and
                                 check_dataset (data/check.py) both read a dataset through it
    parse_voc_xml(path, names)   one annotation -> Target (0-based pixel xyxy, difficult kept)
    VOCDataset(root, sets, ...)  the dataset (items: data/dataset.py)
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from defusedxml import ElementTree as SafeET

from ssd_core.data.dataset import DataWarning, Target, _DetectionDataset, _Record
from ssd_core.errors import DataError
from ssd_core.imageio import IMAGE_SUFFIXES

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")
_VOC_DIR = re.compile(r"VOC\d{4}$")


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
# One scan of a VOC dataset, shared by the dataset and the checker
# --------------------------------------------------------------------------------------------
@dataclass
class VOCEntry:
    subdir: str
    image_id: str
    xml: Path
    image: Path
    raw: _RawAnnotation


@dataclass
class VOCScan:
    entries: list[VOCEntry] = field(default_factory=list)        # readable annotations with an image
    split_sizes: dict[str, int] = field(default_factory=dict)    # image set -> listed ids
    set_errors: list[DataError] = field(default_factory=list)    # image set files that cannot be read
    item_errors: list[DataError] = field(default_factory=list)   # annotations / images that cannot be read
    unannotated: int = 0                                          # folder sets: images without an XML

    def class_names(self) -> list[str]:
        """VOC_CLASSES when every subdir is VOCyyyy, else the names in the annotations, sorted."""
        if self.entries and all(_VOC_DIR.match(Path(e.subdir).name) for e in self.entries):
            return list(VOC_CLASSES)
        return sorted({n for e in self.entries for n in e.raw.names})


def scan_voc(root: Path, image_sets: Sequence[str], stop_at_first: bool = False) -> VOCScan:
    """Read every image set's id list, then each id's annotation and find its image (ids repeated
    across sets are read once). Errors are collected, not raised; `stop_at_first` returns at the
    first one (what a dataset without skip_bad needs)."""
    scan = VOCScan()
    ids: dict[tuple[str, str], None] = {}
    for s in image_sets:
        if is_folder_set(root, s):
            _scan_folder(root, s, scan)
            if stop_at_first and scan.item_errors:
                return scan
            continue
        try:
            listed = read_image_set(root, s)
        except DataError as exc:
            scan.set_errors.append(exc)
            if stop_at_first:
                return scan
            continue
        scan.split_sizes[s] = len(listed)
        ids.update(dict.fromkeys((_split_image_set(root, s)[0], i) for i in listed))
    for subdir, image_id in ids:
        xml = root / subdir / "Annotations" / f"{image_id}.xml"
        try:
            raw = _read_voc_xml(xml)
            image = _find_image(root / subdir / "JPEGImages", image_id, raw.filename, xml)
        except DataError as exc:
            scan.item_errors.append(exc)
            if stop_at_first:
                return scan
            continue
        scan.entries.append(VOCEntry(subdir, image_id, xml, image, raw))
    return scan


def find_image_sets(root: Path) -> list[str]:
    """Every "<subdir>/<split>" under root with a plain split file (train, val, trainval, test, ...)."""
    found = []
    for main in sorted(root.glob("*/ImageSets/Main")) + sorted(root.glob("ImageSets/Main")):
        subdir = main.parent.parent.relative_to(root).as_posix()
        found += [f"{subdir}/{p.stem}" if subdir != "." else p.stem
                  for p in sorted(main.glob("*.txt")) if "_" not in p.stem]
    return found


def is_folder_set(root: Path, image_set: str) -> bool:
    """True for a LabelImg-style folder set: a folder under root without an ImageSets/Main list of that name."""
    subdir, split = _split_image_set(root, image_set)
    if (root / subdir / "ImageSets" / "Main" / f"{split}.txt").is_file():
        return False
    folder = root / image_set.strip("/") if image_set.strip("/") not in ("", ".") else root
    return folder.is_dir() and not (folder / "ImageSets").is_dir()


def _scan_folder(root: Path, folder_set: str, scan: VOCScan) -> None:
    """Every image under the folder, each with the XML of the same file name (module docstring)."""
    name = folder_set.strip("/") or "."
    folder = root / name
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    xmls: dict[str, list[Path]] = {}
    for x in sorted(folder.rglob("*.xml")):
        xmls.setdefault(x.stem, []).append(x)
    used: set[Path] = set()
    for image in images:
        xml = _match_xml(image, xmls.get(image.stem, []))
        image_id = image.relative_to(folder).as_posix()
        if xml is None:
            raw = _RawAnnotation((0, 0), [], np.zeros((0, 4)), np.zeros(0, bool))
            scan.entries.append(VOCEntry(name, image_id, image, image, raw))
            scan.unannotated += 1
            continue
        used.add(xml)
        try:
            raw = _read_voc_xml(xml)
        except DataError as exc:
            scan.item_errors.append(exc)
            continue
        scan.entries.append(VOCEntry(name, image_id, xml, image, raw))
    matched = {e.image for e in scan.entries if e.xml != e.image}
    by_name = {i.name: i for i in images if i not in matched}
    for stem, paths in xmls.items():
        for x in paths:
            if x in used:
                continue
            try:  # an XML named otherwise than its image: LabelImg's <filename> says which
                raw = _read_voc_xml(x)
            except DataError as exc:
                scan.item_errors.append(exc)
                continue
            image = by_name.pop(Path(raw.filename).name, None) if raw.filename else None
            if image is None:
                scan.item_errors.append(DataError(f"{x}: no image named {stem}.* or {raw.filename!r} under {folder} "
                                                  f"for this annotation"))
                continue
            k = next(n for n, e in enumerate(scan.entries) if e.image == image)
            scan.entries[k] = VOCEntry(name, scan.entries[k].image_id, x, image, raw)
            scan.unannotated -= 1
    scan.split_sizes[folder_set] = len(images)


def _match_xml(image: Path, candidates: list[Path]) -> Path | None:
    """The XML of an image among those with its file name: beside it, else in a folder next to the image's
    folder, else the only one."""
    for x in candidates:
        if x.parent == image.parent:
            return x
    siblings = [x for x in candidates if x.parent.parent == image.parent.parent]
    if len(siblings) == 1:
        return siblings[0]
    return candidates[0] if len(candidates) == 1 else None


def _find_image(folder: Path, image_id: str, filename: str | None, source: Path) -> Path:
    """<folder>/<id>.jpg, else another common extension, else the XML's <filename>."""
    candidates = [folder / f"{image_id}{ext}" for ext in IMAGE_EXTENSIONS]
    if filename:
        candidates.append(folder / Path(filename).name)
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"{candidates[0]}: image file not found (annotation {source})")




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
        scan = scan_voc(self.root, self.image_sets, stop_at_first=not skip_bad)
        if scan.set_errors:
            raise scan.set_errors[0]
        if scan.item_errors and not skip_bad:
            raise scan.item_errors[0]
        for exc in scan.item_errors:
            self._skip(str(exc))
        self.class_names = list(class_names) if class_names is not None else scan.class_names()
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"{self.root}: duplicate class names in {self.class_names}")
        self.ids: list[tuple[str, str]] = []
        self.records = []
        folders = {s.strip("/") or "." for s in self.image_sets if is_folder_set(self.root, s)}
        self.size_from_pixels = bool(folders)
        for e in scan.entries:
            loose = e.subdir in folders  # LabelImg: the pixels decide the size, and the clipping
            target = _to_target(e.raw, self.class_names, e.xml, (0, 0) if loose else None, clipped=self.repairs)
            self.ids.append((e.subdir, e.image_id))
            self.records.append(_Record(e.image, e.xml, target, e.raw.size))
