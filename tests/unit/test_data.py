"""data: VOC/COCO readers (box convention, clipping, degenerate boxes, bad files, difficult, classes,
EXIF frame), collate, the seeded loader, check_dataset and `ssdlab data check`; BCCD counts."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

import ssdlab.cli
from ssd_core import data as D
from ssd_core.data import (
    VOC_CLASSES,
    COCODataset,
    DataWarning,
    VOCDataset,
    check_dataset,
    collate,
    make_loader,
    parse_voc_xml,
    read_image_set,
)
from ssd_core.errors import DataError
from ssd_core.imageio import load_rgb


# ------------------------------------------------------------------ a tiny VOC writer
def write_xml(path, size, objects):
    w, h = size
    objs = "".join(
        f"<object><name>{name}</name><difficult>{int(diff)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, diff in objects)
    path.write_text(f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def make_voc(root, subdir="SET", images=None, splits=None):
    """images: {id: ((w, h), [(name, (xmin, ymin, xmax, ymax), difficult), ...])} -> root."""
    base = root / subdir
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / d).mkdir(parents=True, exist_ok=True)
    for k, (image_id, (size, objects)) in enumerate(images.items()):
        Image.new("RGB", size, (10 * k, 50, 90)).save(base / "JPEGImages" / f"{image_id}.jpg")
        write_xml(base / "Annotations" / f"{image_id}.xml", size, objects)
    for split, ids in (splits or {"train": list(images)}).items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


@pytest.fixture
def voc(tmp_path):
    return make_voc(tmp_path, images={
        "a": ((40, 30), [("dog", (1, 1, 10, 20), False), ("cat", (5, 6, 40, 30), True)]),
        "b": ((40, 30), [("cat", (11, 1, 20, 10), False)]),
    }, splits={"train": ["a", "b"], "val": ["b"]})


# ------------------------------------------------------------------ boxes
def test_voc_boxes_are_converted_from_1_based_inclusive_to_0_based_xyxy(voc):
    ds = VOCDataset(voc, ["SET/train"], keep_difficult=True)
    t = ds.annotation(0)
    assert t.boxes.tolist() == [[0, 0, 10, 20], [4, 5, 40, 30]]       # (xmin-1, ymin-1, xmax, ymax)
    assert ds.image_size(0) == (40, 30) and ds.ids == [("SET", "a"), ("SET", "b")]
    image, boxes, labels, index = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40) and index == 0
    assert torch.allclose(boxes, torch.tensor([[0, 0, 10 / 40, 20 / 30], [4 / 40, 5 / 30, 1, 1]]))
    assert labels.tolist() == [2, 1] and ds.class_names == ["cat", "dog"]  # inferred, sorted


def test_parse_voc_xml_and_read_image_set(voc):
    target, size = parse_voc_xml(voc / "SET/Annotations/a.xml", ["dog", "cat"])
    assert size == (40, 30) and target.labels.tolist() == [1, 2] and target.difficult.tolist() == [False, True]
    assert target.boxes.dtype == torch.float32
    assert read_image_set(voc, "SET/val") == ["b"]
    with pytest.raises(DataError, match=r"Main/test\.txt.*available: train, val"):
        read_image_set(voc, "SET/test")


def test_boxes_outside_the_image_are_clipped(tmp_path):
    root = make_voc(tmp_path, images={"a": ((40, 30), [("dog", (-5, 0, 50, 31), False)])})
    assert VOCDataset(root, ["SET/train"]).annotation(0).boxes.tolist() == [[0, 0, 40, 30]]


def test_check_dataset_lists_clipped_boxes_as_warnings_not_problems(tmp_path, capsys):
    root = make_voc(tmp_path, images={"a": ((40, 30), [("dog", (-5, 0, 50, 31), False), ("dog", (2, 2, 9, 9), False)]),
                                      "b": ((40, 30), [("cat", (3, 3, 41, 12), False)])})
    report = check_dataset(root)
    assert report.ok and len(report.clipped) == 2
    assert "a.xml: object 0 (dog, box [-5.0, 0.0, 50.0, 31.0]) clipped" in report.clipped[0]
    assert "b.xml: object 0 (cat" in report.clipped[1]
    text = report.format()
    assert "warnings: 2 boxes reach past the image border" in text and "problems: none" in text


def test_holdout_is_a_fixed_slice_whatever_the_order():
    keys = [f"SET/{i:04d}" for i in range(200)]
    mask = D.holdout_mask(keys, 0.1, seed=0)
    assert mask.sum() == 20
    shuffled = keys[::-1]
    again = dict(zip(shuffled, D.holdout_mask(shuffled, 0.1, seed=0)))
    assert [k for k, m in zip(keys, mask) if m] == sorted(k for k, m in again.items() if m)
    assert not np.array_equal(mask, D.holdout_mask(keys, 0.1, seed=1))       # holdout_seed moves it
    assert D.holdout_mask(keys[:3], 0.01).sum() == 1 and D.holdout_mask(keys[:3], 0.99).sum() == 2
    with pytest.raises(DataError, match="holdout"):
        D.holdout_mask(keys[:1], 0.5)


def test_select_keeps_items_ids_and_annotations_together(voc):
    ds = VOCDataset(voc, ["SET/train"], class_names=["dog", "cat"])
    assert D.image_keys(ds) == ["SET/a", "SET/b"]
    D.select(ds, np.array([False, True]))
    assert D.image_keys(ds) == ["SET/b"] and len(ds) == 1
    assert ds.annotation(0).labels.tolist() == [2] and ds[0][3] == 0


def test_degenerate_boxes_are_dropped_with_one_warning_naming_file_and_objects(tmp_path):
    root = make_voc(tmp_path, images={"a": ((40, 30), [
        ("dog", (5, 5, 5, 9), False), ("cat", (3, 3, 9, 9), False), ("cat", (9, 9, 3, 12), False),
        ("dog", (45, 5, 50, 9), False)])})                      # zero width, ok, inverted, outside
    with pytest.warns(DataWarning) as record:
        ds = VOCDataset(root, ["SET/train"])
    assert len(record) == 1
    message = str(record[0].message)
    assert "a.xml" in message and "object 0 (dog" in message and "object 2 (cat" in message
    assert "object 3 (dog" in message and "object 1" not in message
    assert ds.annotation(0).boxes.tolist() == [[2, 2, 9, 9]]


def test_unknown_class_names_file_object_and_known_classes(voc):
    with pytest.raises(DataError, match=r"a\.xml: object 1 has class 'cat', not in the class list \[dog, bird\]"):
        VOCDataset(voc, ["SET/train"], class_names=["dog", "bird"])


# ------------------------------------------------------------------ classes and difficult
def test_difficult_is_excluded_from_training_items_but_kept_for_the_metric(voc):
    ds = VOCDataset(voc, ["SET/train"], class_names=["dog", "cat"])
    _, boxes, labels, _ = ds[0]
    assert labels.tolist() == [1] and len(boxes) == 1
    assert ds.annotation(0).difficult.tolist() == [False, True]
    assert VOCDataset(voc, ["SET/train"], keep_difficult=True, class_names=["dog", "cat"])[0][2].tolist() == [1, 2]


def test_voc_dirs_default_to_the_20_voc_classes_and_07_plus_12_concatenates(tmp_path):
    make_voc(tmp_path, "VOC2007", images={"x": ((20, 20), [("person", (2, 2, 9, 9), False)])})
    make_voc(tmp_path, "VOC2012", images={"y": ((20, 20), [("tvmonitor", (2, 2, 9, 9), False)])})
    ds = VOCDataset(tmp_path, ["VOC2007/train", "VOC2012/train"])
    assert ds.class_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert ds.ids == [("VOC2007", "x"), ("VOC2012", "y")]
    assert [ds.annotation(i).labels.tolist() for i in range(2)] == [[15], [20]]


# ------------------------------------------------------------------ bad files
def test_malformed_xml_raises_naming_the_file_or_is_skipped_and_counted(voc):
    (voc / "SET/Annotations/b.xml").write_text("<annotation><size>")
    with pytest.raises(DataError, match=r"b\.xml: malformed annotation XML"):
        VOCDataset(voc, ["SET/train"])
    with pytest.warns(DataWarning, match="b.xml"):
        ds = VOCDataset(voc, ["SET/train"], skip_bad=True)
    assert len(ds) == 1 and ds.skipped == 1 and ds.ids == [("SET", "a")]


def test_missing_image_raises_naming_the_file_or_is_skipped(voc):
    (voc / "SET/JPEGImages/a.jpg").unlink()
    with pytest.raises(DataError, match=r"a\.jpg: image file not found"):
        VOCDataset(voc, ["SET/train"])
    with pytest.warns(DataWarning):
        ds = VOCDataset(voc, ["SET/train"], skip_bad=True)
    assert ds.skipped == 1 and ds.ids == [("SET", "b")]


def test_truncated_image_fails_at_decode_naming_the_file_or_is_replaced(tmp_path):
    root = make_voc(tmp_path, images={"a": ((64, 64), []), "b": ((40, 30), [("dog", (1, 1, 9, 9), False)])})
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = root / "SET/JPEGImages/a.jpg"
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(DataError, match=r"a\.jpg: cannot decode"):
        VOCDataset(root, ["SET/train"])[0]
    calls = []
    ds = VOCDataset(root, ["SET/train"], skip_bad=True, transform=lambda img, b, l: calls.append(1) or (img.load(), b, l))
    with pytest.warns(DataWarning, match="a.jpg"):
        item = ds[0]
    assert item[3] == 1 and ds.skipped == 1                    # the next readable item, its own index


# ------------------------------------------------------------------ transform contract, EXIF frame, cache
def test_transform_gets_the_lazy_image_and_pixel_boxes(voc):
    seen = {}

    def transform(img, boxes, labels):
        seen.update(img=img, boxes=boxes, labels=labels)
        return torch.zeros(3, 8, 8, dtype=torch.uint8), boxes / 40, labels

    image, boxes, labels, i = VOCDataset(voc, ["SET/train"], class_names=["dog", "cat"], transform=transform)[1]
    assert isinstance(seen["img"], Image.Image) and seen["img"].size == (40, 30)
    assert seen["boxes"].dtype == torch.float32 and seen["boxes"].tolist() == [[10, 0, 20, 10]]
    assert seen["labels"].dtype == torch.int64 and seen["labels"].tolist() == [2]
    assert image.shape == (3, 8, 8) and boxes.tolist() == [[0.25, 0, 0.5, 0.25]] and i == 1
    seen["img"].close()                                       # a real transform decodes (and closes) it


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_boxes_follows_the_pixels(orientation):
    stored = np.zeros((30, 40), np.uint8)
    stored[5:12, 8:20] = 255                                  # box (8, 5, 20, 12) in the stored frame
    img = Image.fromarray(stored).convert("RGB")
    img.getexif()[0x0112] = orientation
    upright = np.asarray(load_rgb(img))[..., 0]
    rows, cols = np.flatnonzero(upright.any(1)), np.flatnonzero(upright.any(0))
    expected = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
    assert D.dataset._orient_boxes(torch.tensor([[8.0, 5, 20, 12]]), (40, 30), orientation).tolist() == [expected]


def test_exif_rotated_image_gets_rotated_boxes(tmp_path):
    root = make_voc(tmp_path, images={"r": ((40, 30), [("dog", (9, 6, 20, 12), False)])})
    a = np.zeros((30, 40, 3), np.uint8)
    a[5:12, 8:20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "SET/JPEGImages/r.jpg").unlink()
    Image.fromarray(a).save(root / "SET/JPEGImages/r.png", exif=exif)  # found by extension fallback
    ds = VOCDataset(root, ["SET/train"])
    image, boxes, _, _ = ds[0]
    assert image.shape == (3, 40, 30) and ds.image_size(0) == (30, 40)
    x1, y1, x2, y2 = (boxes[0] * torch.tensor([30, 40, 30, 40])).round().int().tolist()
    assert (x1, y1, x2, y2) == (18, 8, 25, 20)
    assert image[0, y1:y2, x1:x2].min() == 255 and image[0].sum() == 255 * 7 * 12


def test_cache_images_keeps_decoded_images(voc):
    ds = VOCDataset(voc, ["SET/train"], cache_images=True)
    first = ds[1][0]
    (voc / "SET/JPEGImages/b.jpg").unlink()
    assert torch.equal(ds[1][0], first)


# ------------------------------------------------------------------ COCO
def test_coco_dataset_maps_categories_and_excludes_crowd(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "images/1.jpg")
    Image.new("RGB", (30, 20)).save(tmp_path / "images/2.jpg")
    instances = {
        "images": [{"id": 2, "file_name": "2.jpg", "width": 30, "height": 20},
                   {"id": 1, "file_name": "1.jpg", "width": 50, "height": 40}],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 5, 20, 10], "iscrowd": 0, "area": 200},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 40], "iscrowd": 1, "area": 2000},
            {"id": 3, "image_id": 2, "category_id": 90, "bbox": [25, 10, 10, 20], "iscrowd": 0, "area": 200}],
    }
    (tmp_path / "annotations/instances_images.json").write_text(json.dumps(instances))
    ds = COCODataset(tmp_path / "images", tmp_path / "annotations/instances_images.json")
    assert ds.class_names == ["person", "airplane", "toothbrush"] and ds.num_classes == 4
    assert ds.cat_id_to_contiguous == {1: 1, 5: 2, 90: 3} and ds.contiguous_to_cat_id == {1: 1, 2: 5, 3: 90}
    assert ds.category_ids == [1, 5, 90] and ds.ids == ds.image_ids == [1, 2]
    image, boxes, labels, _ = ds[0]
    assert image.shape == (3, 40, 50) and labels.tolist() == [2]              # crowd excluded
    assert torch.allclose(boxes, torch.tensor([[10 / 50, 5 / 40, 30 / 50, 15 / 40]]))  # xywh -> xyxy
    assert ds.annotation(0).difficult.tolist() == [False, True]              # crowd = ignore for the metric
    assert ds.annotation(1).boxes.tolist() == [[25, 10, 30, 20]]             # clipped to the image
    split_form = COCODataset(tmp_path, ["images"])                           # train.build_dataset's call
    assert split_form.ids == [1, 2] and len(split_form[1][2]) == 1
    with pytest.raises(DataError, match="instances_nope.json"):
        COCODataset(tmp_path, ["nope"])


# ------------------------------------------------------------------ batching
def test_collate_pads_boxes_and_labels_with_label_zero():
    img = torch.zeros(3, 4, 4, dtype=torch.uint8)
    items = [(img, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 7),
             (img + 1, torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.9, 0.9]]), torch.tensor([3, 1]), 2),
             (img, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([2]), 5)]
    b = collate(items)
    assert b.images.shape == (3, 3, 4, 4) and b.images.dtype == torch.uint8 and b.images[1].max() == 1
    assert b.boxes.shape == (3, 2, 4) and b.labels.tolist() == [[0, 0], [3, 1], [2, 0]]
    assert b.boxes[2, 0].tolist() == [0, 0, 1, 1] and b.boxes[2, 1].abs().sum() == 0
    assert b.indices.tolist() == [7, 2, 5] and b.indices.dtype == torch.int64
    empty = collate(items[:1])
    assert empty.boxes.shape == (1, 1, 4) and empty.labels.tolist() == [[0]]      # M >= 1
    with pytest.raises(ValueError, match="equally sized"):
        collate([items[0], (torch.zeros(3, 5, 5, dtype=torch.uint8), *items[0][1:])])


class RandomDataset(torch.utils.data.Dataset):
    """Items expose the numpy/random/torch RNG state of whoever loads them."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        value = np.random.rand() + random.random() + torch.rand(()).item()
        return torch.zeros(3, 2, 2, dtype=torch.uint8), torch.full((1, 4), value), torch.tensor([1]), i


def test_make_loader_is_deterministic_for_a_seed():
    order = lambda seed: torch.cat([b.indices for b in make_loader(RandomDataset(), 3, shuffle=True, seed=seed)])
    assert order(0).tolist() == order(0).tolist() != order(1).tolist()
    assert sorted(order(0).tolist()) == list(range(8))
    loader = make_loader(RandomDataset(), 3, shuffle=True, num_workers=2, seed=4, drop_last=True)
    assert loader.pin_memory == torch.cuda.is_available() and loader.persistent_workers and len(loader) == 2
    runs = [[(b.indices.tolist(), b.boxes[:, 0, 0].tolist()) for b in
             make_loader(RandomDataset(), 3, shuffle=True, num_workers=2, seed=4)] for _ in range(2)]
    assert runs[0] == runs[1]                                 # worker numpy/random seeded per worker
    values = [v for _, vs in runs[0] for v in vs]
    assert len(set(values)) == len(values)                    # and workers do not repeat each other


# ------------------------------------------------------------------ check_dataset and the CLI
def test_check_dataset_reports_counts_and_every_problem(voc, capsys, monkeypatch):
    # the real `ssdlab` entry point, with only our sub-command registered (the others import MLflow)
    monkeypatch.setattr(ssdlab.cli, "COMMAND_MODULES", ("ssdlab.commands.data",))
    cli = ssdlab.cli.main
    report = check_dataset(voc, ["SET/train", "SET/val"])
    assert report.ok and report.images == 2 and report.split_sizes == {"SET/train": 2, "SET/val": 1}
    assert report.objects == {"dog": 1, "cat": 2} and report.difficult == {"dog": 0, "cat": 1}
    assert report.min_size == report.max_size == (40, 30)
    assert cli(["data", "check", str(voc)]) == 0
    write_xml(voc / "SET/Annotations/b.xml", (40, 30), [("cat", (5, 5, 5, 9), False)])
    (voc / "SET/JPEGImages/a.jpg").write_bytes(b"")
    report = check_dataset(voc)
    messages = "\n".join(p.message for p in report.problems)
    assert len(report.problems) == 2 and "a.jpg" in messages and "b.xml" in messages and "object 0 (cat" in messages
    assert cli(["data", "check", str(voc)]) == 1
    assert cli(["data", "check", str(voc), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "problems: 2" in out and "a.jpg" in out
    assert cli(["data", "check", str(voc), "--classes", "dog"]) == 1          # an unknown class is fatal
    assert cli(["data", "check", str(voc), "--classes", "dog", "--skip-bad"]) == 1
    assert cli(["data", "check", str(voc / "missing")]) == 2                  # DataError -> exit 2


# ------------------------------------------------------------------ the real data
def test_bccd_has_364_images_3_classes_and_the_published_splits(bccd_root):
    sizes = {s: len(read_image_set(bccd_root, f"BCCD/{s}")) for s in ("train", "val", "trainval", "test")}
    assert sizes == {"train": 205, "val": 87, "trainval": 292, "test": 72}
    with pytest.warns(DataWarning, match="BloodImage_00"):                    # two 1-pixel "boxes"
        ds = VOCDataset(bccd_root, ["BCCD/trainval", "BCCD/test"])
    assert len(ds) == 364 and ds.class_names == ["Platelets", "RBC", "WBC"]
    image, boxes, labels, _ = ds[0]
    assert image.shape == (3, 480, 640) and len(boxes) == len(labels) > 0
    assert ((boxes >= 0) & (boxes <= 1)).all() and set(labels.tolist()) <= {1, 2, 3}
