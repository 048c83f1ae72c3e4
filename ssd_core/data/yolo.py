"""YOLO layout, as Ultralytics and Roboflow write it: a `data.yaml` and one label file per image.

    data.yaml     (or LabelImg's classes.txt: the names, one a line; the folder is the one split, train)
                  `path:` (the dataset folder; default: the yaml's own folder), `train:` / `val:` / `test:`
                  each a folder of images, a .txt list of image paths, or a list of those; `names:` a list
                  or a {id: name} dict (`nc:` optional). Relative paths are resolved as Ultralytics does:
                  against `path`, and a `../x` that does not exist there as `x` (Roboflow writes
                  `train: ../train/images` next to a `train/` folder).
    labels        beside the images with the last `/images/` of the path replaced by `/labels/` and the
                  extension by `.txt` (no `/images/` in the path: the .txt beside the image). One line per
                  object: `class cx cy w h`, normalised to [0, 1]; a line with more numbers is a segmentation
                  polygon `class x1 y1 x2 y2 ...`, read as its bounding box. A missing or empty label file is
                  an image without objects.

    read_data_yaml(path)           -> YoloSpec (the folder, the splits, the class names)
    split_images(spec, value)      a split's value (a data.yaml key, a folder, a list file) -> image paths
    parse_label_file(path, C)      one label file -> (labels 1..C, normalised xyxy boxes, repairs)
    YOLODataset(yaml, sets, ...)   the dataset (items: data/dataset.py)

Repairs, not errors (each listed in `dataset.repairs`, as `ssdlab data check` shows them): a box reaching past
the border is clipped to it, an exact duplicate line is dropped (Ultralytics drops them too), a box with no
area left is dropped. Errors naming the file and line: a class id outside `names`, a line that is not
numbers, a polygon with an odd number of coordinates.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import yaml

from ssd_core.data.dataset import DataWarning, Target, _DetectionDataset, _Record
from ssd_core.errors import DataError
from ssd_core.imageio import IMAGE_SUFFIXES

SPLIT_KEYS = ("train", "val", "test")
YAML_SUFFIXES = (".yaml", ".yml")
CLASSES_TXT = "classes.txt"  # LabelImg's YOLO mode: the class names, one a line, beside the labels


@dataclass
class YoloSpec:
    yaml: Path                                   # the data.yaml
    folder: Path                                 # its `path:` resolved: what relative split paths start from
    names: list[str]
    splits: dict[str, object] = field(default_factory=dict)   # "train" / "val" / "test" -> the raw value


def find_data_yaml(path: Path) -> Path:
    """`path` itself when it is a yaml file, else the folder's data.yaml (or its only yaml with `names:`)."""
    if path.is_file():
        return path
    if (path / "data.yaml").is_file():
        return path / "data.yaml"
    found = _yamls(path)
    if len(found) == 1:
        return found[0]
    raise DataError(f"{path}: no data.yaml (a YOLO dataset names its classes and splits there)"
                    + (f"; found several: {', '.join(p.name for p in found)}" if found else ""))


def _yamls(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.glob("*.y*ml")) if p.suffix in YAML_SUFFIXES and _has_names(p)]


def _classes_txt(path: Path) -> YoloSpec:
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    return YoloSpec(path, path.parent, _names(names, path), {"train": "."})


def _has_names(path: Path) -> bool:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(doc, dict) and "names" in doc


def read_data_yaml(path: str | Path) -> YoloSpec:
    """The data.yaml at `path` (or in that folder); a LabelImg `classes.txt` stands for one whose only split,
    train, is the folder it lies in."""
    path = Path(path)
    if path.name == CLASSES_TXT or (path.is_dir() and not _yamls(path) and (path / CLASSES_TXT).is_file()):
        return _classes_txt(path if path.is_file() else path / CLASSES_TXT)
    path = find_data_yaml(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with names: and train: / val: / test:")
    names = _names(doc.get("names"), path)
    if "nc" in doc and doc["nc"] is not None and int(doc["nc"]) != len(names):
        raise DataError(f"{path}: nc: {doc['nc']} but names: lists {len(names)} classes")
    folder = Path(str(doc.get("path") or "")).expanduser()
    if not folder.is_absolute():
        folder = (path.parent / folder).resolve()
    if not folder.is_dir():  # `path:` written for another machine (Ultralytics' datasets dir): the yaml's folder
        folder = path.parent.resolve()
    splits = {k: doc[k] for k in SPLIT_KEYS if doc.get(k)}
    if "train" not in splits:
        raise DataError(f"{path}: train: is missing (a folder of images or a list of image paths)")
    return YoloSpec(path, folder, names, splits)


def _names(raw, path: Path) -> list[str]:
    """names: ['a', 'b'] or {0: 'a', 1: 'b'} -> ['a', 'b'] (ids must be 0..C-1)."""
    if isinstance(raw, dict):
        try:
            ids = sorted(int(k) for k in raw)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: names: keys must be class ids 0..C-1, got {list(raw)}") from exc
        if ids != list(range(len(ids))):
            raise DataError(f"{path}: names: ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        return [str(raw[k] if k in raw else raw[str(k)]) for k in ids]
    if isinstance(raw, list) and raw:
        names = [str(n) for n in raw]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"{path}: names: repeats {dup}")
        return names
    raise DataError(f"{path}: names: expected a list of class names or a {{id: name}} mapping, got {raw!r}")


def resolve_split_path(spec: YoloSpec, value: str) -> Path:
    """One split path as Ultralytics resolves it: against the folder; `../x` missing there -> `x`."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    x = (spec.folder / p).resolve()
    if not x.exists() and value.startswith("../"):
        x = (spec.folder / value[3:]).resolve()
    return x


def split_images(spec: YoloSpec, value) -> list[Path]:
    """The images of one split: `value` is a data.yaml key (train / val / test), a folder, a .txt list of
    image paths, or a list of those; folders are searched recursively. Sorted, without repeats."""
    if isinstance(value, str) and value in SPLIT_KEYS:
        if value not in spec.splits:
            raise DataError(f"{spec.yaml}: {value}: is not set (it has {', '.join(spec.splits) or 'no splits'})")
        value = spec.splits[value]
    values = value if isinstance(value, list) else [value]
    images: dict[Path, None] = {}
    for v in values:
        p = resolve_split_path(spec, str(v))
        if p.is_dir():
            images.update(dict.fromkeys(sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)))
        elif p.is_file() and p.suffix == ".txt":
            images.update(dict.fromkeys(_list_file(p, spec)))
        else:
            raise DataError(f"{spec.yaml}: split {v!r}: {p} is neither a folder of images nor a .txt list of them")
    return list(images)


def _list_file(path: Path, spec: YoloSpec) -> list[Path]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        q = Path(line)
        if not q.is_absolute():  # './x' and 'x': from the list's folder, else from the dataset folder
            q = (path.parent / line).resolve() if (path.parent / line).exists() else (spec.folder / line).resolve()
        out.append(q)
    return out


def label_path(image: Path) -> Path:
    """The label file of an image: the last `/images/` -> `/labels/`, the extension -> `.txt`."""
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def parse_label_file(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One label file -> (labels int64 [n] in 1..C, boxes float64 [n, 4] normalised xyxy, repairs).
    A missing or empty file has no objects. DataError for a line that cannot be an object."""
    if not path.is_file():
        return np.zeros(0, np.int64), np.zeros((0, 4)), []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM from Windows editors is not a number
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read label file: {exc}") from exc
    labels, boxes, repairs, seen = [], [], [], set()
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(v) for v in parts]
        except ValueError as exc:
            raise DataError(f"{path}: line {n}: not numbers: {line.strip()!r}") from exc
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise DataError(f"{path}: line {n}: class id {parts[0]} is not one of the {num_classes} classes "
                            f"(0..{num_classes - 1}) that data.yaml names")
        coords = values[1:]
        if len(coords) == 4:
            cx, cy, w, h = coords
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        elif len(coords) >= 6 and len(coords) % 2 == 0:  # a segmentation polygon: its bounding box
            xy = np.asarray(coords).reshape(-1, 2)
            box = [*xy.min(0), *xy.max(0)]
        else:
            raise DataError(f"{path}: line {n}: expected 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 ...', "
                            f"got {len(parts)} values")
        key = (int(cls), *(round(v, 6) for v in box))
        if key in seen:
            repairs.append(f"{path}: line {n}: duplicate of an earlier line, dropped")
            continue
        seen.add(key)
        clipped = [min(max(v, 0.0), 1.0) for v in box]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            warnings.warn(f"{path}: line {n}: dropped degenerate box with no area inside the image: "
                          f"{line.strip()!r}", DataWarning, stacklevel=2)
            continue
        if clipped != box:
            repairs.append(f"{path}: line {n} ({line.strip()}) reaches past the image border: clipped to it")
        labels.append(int(cls) + 1)
        boxes.append(clipped)
    return np.asarray(labels, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4), repairs


class YOLODataset(_DetectionDataset):
    """A YOLO dataset: `data_yaml` (the file or its folder) and `image_sets`, each a data.yaml split key
    (train / val / test) or a path (folder or .txt list) from the dataset folder. `class_names` must equal
    data.yaml's names when given. Item ids are the images' paths relative to the dataset folder.
    A label file that cannot be read raises DataError naming it, or with skip_bad drops that image."""

    def __init__(self, data_yaml: str | Path, image_sets: Sequence[str] | str, transform: Callable | None = None,
                 class_names: Sequence[str] | None = None, skip_bad: bool = False, cache_images: bool = False):
        super().__init__(transform, keep_difficult=False, skip_bad=skip_bad, cache_images=cache_images)
        self.spec = read_data_yaml(data_yaml)
        self.class_names = list(self.spec.names)
        if class_names is not None and list(class_names) != self.class_names:
            raise DataError(f"{self.spec.yaml}: class_names {list(class_names)} do not match data.yaml's names "
                            f"{self.class_names}")
        self.image_sets = [image_sets] if isinstance(image_sets, str) else list(image_sets)
        images: dict[Path, None] = {}
        for s in self.image_sets:
            found = split_images(self.spec, s)
            if not found:
                raise DataError(f"{self.spec.yaml}: split {s!r} has no images")
            images.update(dict.fromkeys(found))
        self.ids: list[str] = []
        self.records = []
        for image in images:
            source = label_path(image)
            try:
                labels, boxes, repairs = parse_label_file(source, len(self.class_names))
            except DataError as exc:
                if not skip_bad:
                    raise
                self._skip(str(exc))
                continue
            self.repairs += repairs
            target = Target(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            torch.as_tensor(labels), torch.zeros(len(labels), dtype=torch.bool))
            self.ids.append(_key(image, self.spec.folder))
            self.records.append(_Record(image, source, target, (0, 0), normalized=True))


def _key(image: Path, folder: Path) -> str:
    try:
        return image.relative_to(folder).as_posix()
    except ValueError:
        return image.as_posix()
