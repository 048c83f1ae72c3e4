"""A folder or file a user downloaded -> what it is: format, data root, the three splits, the classes.

    detect_layout(path) -> Layout

What is recognised, in this order (the first match wins):
    *.yaml / *.yml, or a folder holding data.yaml   YOLO (Ultralytics, Roboflow "YOLOv5/v8" exports)
    a folder holding classes.txt and .txt labels     YOLO as LabelImg writes it (no data.yaml)
    *.json                                           a COCO instances file; its siblings named like it with
                                                     another split word (custom_train.json, custom_val.json)
                                                     are the other splits
    a folder with <subdir>/ImageSets/Main/*.txt      PASCAL VOC (devkit layout)
    a folder with */_annotations.coco.json           COCO as Roboflow exports it (one per split folder)
    a folder with annotations/*.json                 COCO (instances_<set>.json or any name)
    a folder with *.xml files                        VOC XML as LabelImg leaves it (no ImageSets)
Splits are recognised by a word in their name: train / training / trainval, val / valid / validation / dev,
test / testing. A dataset without a validation split gets `data.holdout` (a hashed slice of its training
images); without a test split, `data.test_holdout` (another, drawn first): both said in `Layout.notes`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ssd_core.errors import DataError

HOLDOUT = 0.15       # the validation slice of a dataset without a validation split
TEST_HOLDOUT = 0.15  # the test slice of a dataset without a test split
ROLES = {"train": ("train", "training", "trainval"), "val": ("val", "valid", "validation", "dev", "minival"),
         "test": ("test", "testing", "testdev")}


@dataclass
class Layout:
    format: str                      # voc | coco | yolo
    root: Path                       # data.root: the dataset folder (voc, coco) or its data.yaml (yolo)
    train_sets: list[str]
    val_sets: list[str] = field(default_factory=list)
    test_sets: list[str] = field(default_factory=list)
    class_names: list[str] | None = None   # None: read from the annotations (VOC)
    holdout: float | None = None
    test_holdout: float | None = None
    notes: list[str] = field(default_factory=list)

    def data_keys(self) -> dict:
        """The data section's keys for this layout (dotted, as config overrides)."""
        out = {"data.format": self.format, "data.root": str(self.root), "data.train_sets": self.train_sets,
               "data.val_sets": self.val_sets, "data.test_sets": self.test_sets,
               "data.holdout": self.holdout, "data.test_holdout": self.test_holdout}
        if self.class_names is not None:
            out["data.class_names"] = self.class_names
        return out

    def splits(self) -> dict[str, list[str]]:
        """split -> its sets, for the splits that are sets of their own (not hashed slices)."""
        return {k: v for k, v in (("train", self.train_sets), ("val", self.val_sets), ("test", self.test_sets)) if v}


def role_of(name: str) -> str | None:
    """'train' | 'val' | 'test' from a word in a split or file name (custom_train.json, valid, val2017)."""
    words = set(re.split(r"[^a-z]+", name.lower()))
    for role, names in ROLES.items():
        if words & set(names):
            return role
    return None


def detect_layout(path: str | os.PathLike) -> Layout:
    """What `path` holds (module docstring); DataError naming the path when it is none of those."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    p = p.resolve()
    if p.is_file():
        if p.suffix in (".yaml", ".yml"):
            return _yolo(p)
        if p.suffix == ".json":
            return _coco_json(p)
        raise DataError(f"{p}: not a dataset file: expected a YOLO data.yaml or a COCO instances .json")
    from ssd_core.data.voc import find_image_sets
    from ssd_core.data.yolo import find_data_yaml

    try:
        return _yolo(find_data_yaml(p))
    except DataError:
        pass
    if (p / "classes.txt").is_file():
        return _yolo(p / "classes.txt")
    if find_image_sets(p):
        return _voc_devkit(p, find_image_sets(p))
    from ssd_core.data.coco import ROBOFLOW_JSON
    if (p / ROBOFLOW_JSON).is_file():  # one split folder of a Roboflow export: the export is its parent
        return _coco_json(p / ROBOFLOW_JSON)
    if sorted(p.glob(f"*/{ROBOFLOW_JSON}")):
        return _coco_json(sorted(p.glob(f"*/{ROBOFLOW_JSON}"))[0])
    jsons = sorted((p / "annotations").glob("*.json")) if (p / "annotations").is_dir() else []
    if jsons:
        train = [j for j in jsons if role_of(j.stem.replace("instances", "")) == "train"] or jsons
        return _coco_json(train[0])
    if next(p.rglob("*.xml"), None) is not None:
        return _voc_folder(p)
    raise DataError(f"{p}: no dataset found: expected a YOLO data.yaml, a COCO instances .json (or Roboflow's "
                    f"_annotations.coco.json per split folder), a VOC devkit (<subdir>/ImageSets/Main) or a folder "
                    f"of LabelImg .xml files")


def _finish(layout: Layout) -> Layout:
    """The hashed slices for the splits a dataset does not have, said in the notes."""
    if not layout.val_sets:
        layout.holdout = HOLDOUT
        layout.notes.append(f"no validation split: data.holdout {HOLDOUT} (a fixed hashed slice of the training "
                            f"images) is the selection split")
    if not layout.test_sets:
        layout.test_holdout = TEST_HOLDOUT
        layout.notes.append(f"NO TEST SPLIT: data.test_holdout {TEST_HOLDOUT} holds out a fixed hashed slice of the "
                            f"training images as the test split (the same for every run); nothing is chosen on it")
    return layout


def _yolo(yaml_path: Path) -> Layout:
    from ssd_core.data.yolo import read_data_yaml, resolve_split_path, split_images

    spec = read_data_yaml(yaml_path)
    layout = Layout("yolo", spec.yaml, ["train"], class_names=list(spec.names))
    layout.notes.append(f"YOLO dataset {spec.yaml} (folder {spec.folder}): {len(spec.names)} classes")
    if "val" in spec.splits:
        layout.val_sets = ["val"]
    if "test" in spec.splits:
        layout.test_sets = ["test"]
    elif isinstance(spec.splits["train"], str):  # Roboflow often leaves test: out beside a test/images folder
        train = resolve_split_path(spec, spec.splits["train"])
        for name in ROLES["test"]:
            for candidate in (train.parent.parent / name / train.name, train.parent / name):
                if candidate.is_dir() and candidate != train and split_images(spec, str(candidate)):
                    layout.test_sets = [_relative(candidate, spec.folder)]
                    layout.notes.append(f"data.yaml names no test split: the folder {candidate} beside the training "
                                        f"images is the test split")
                    break
            if layout.test_sets:
                break
    return _finish(layout)


def _coco_json(path: Path) -> Layout:
    from ssd_core.data.coco import ROBOFLOW_JSON

    if path.name == ROBOFLOW_JSON:  # Roboflow: <export>/<split>/_annotations.coco.json
        root = path.parent.parent
        folders = sorted(j.parent.name for j in root.glob(f"*/{ROBOFLOW_JSON}"))
        by_role = {role_of(f): f for f in folders if role_of(f)}
        layout = Layout("coco", root, [by_role.get("train", path.parent.name)])
        layout.notes.append(f"COCO dataset as Roboflow exports it: {root}, split folders {', '.join(folders)}")
    else:
        root = path.parent.parent if path.parent.name == "annotations" else path.parent
        role = role_of(path.stem.replace("instances", ""))
        siblings = {}
        if role is not None:
            for j in sorted(path.parent.glob("*.json")):
                r = role_of(j.stem.replace("instances", ""))
                if r and _template(j.stem) == _template(path.stem):
                    siblings.setdefault(r, j)
        by_role = {r: _relative(j, root) for r, j in siblings.items()}
        layout = Layout("coco", root, [by_role.get("train", _relative(path, root))])
        layout.notes.append(f"COCO instances file {path}" + (f" with its split siblings {', '.join(by_role.values())}"
                                                             if len(by_role) > 1 else ""))
    layout.val_sets = [by_role["val"]] if "val" in by_role else []
    layout.test_sets = [by_role["test"]] if "test" in by_role else []
    from ssd_core.data.sets import open_sets
    layout.class_names = list(open_sets("coco", root, layout.train_sets).class_names)
    return _finish(layout)


def _template(stem: str) -> str:
    """A file name with its split word taken out: custom_train and custom_val share 'custom_'."""
    words = [w for names in ROLES.values() for w in names]
    return re.sub(r"(?<![a-z])(" + "|".join(sorted(words, key=len, reverse=True)) + r")(?![a-z])", "", stem.lower())


def _voc_devkit(root: Path, sets: list[str]) -> Layout:
    by_role: dict[str, list[str]] = {}
    for s in sets:
        split = s.rpartition("/")[2]
        if split in ("train", "val", "test", "trainval"):
            by_role.setdefault(split, []).append(s)
    if "train" in by_role and "val" in by_role:
        train, val = by_role["train"], by_role["val"]
    else:
        train, val = by_role.get("trainval") or by_role.get("train") or [], []
    if not train:
        raise DataError(f"{root}: VOC image sets {', '.join(sets)}: none is a training split (train or trainval)")
    layout = Layout("voc", root, train, val, by_role.get("test", []))
    layout.notes.append(f"PASCAL VOC devkit layout: {root}, image sets {', '.join(sets)}")
    return _finish(layout)


def _voc_folder(root: Path) -> Layout:
    from ssd_core.imageio import IMAGE_SUFFIXES

    subs = {role_of(d.name): d.name for d in sorted(root.iterdir()) if d.is_dir() and role_of(d.name)
            and any(q.suffix.lower() in IMAGE_SUFFIXES for q in d.rglob("*"))}
    if "train" in subs:
        layout = Layout("voc", root, [subs["train"]], [subs["val"]] if "val" in subs else [],
                        [subs["test"]] if "test" in subs else [])
    else:
        layout = Layout("voc", root, ["."])
    layout.notes.append(f"VOC XML without a devkit (LabelImg): {root}, folders {', '.join(layout.train_sets + layout.val_sets + layout.test_sets)}; "
                        f"XML files matched to images by file name")
    return _finish(layout)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)
