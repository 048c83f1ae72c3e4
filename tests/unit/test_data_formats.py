"""The formats a user brings (ssd_core/data/yolo.py, coco.py, voc.py folders, detect.py): tiny hand-written
files of each, with the known quirks, and the one item contract all three keep."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from ssd_core.data import COCODataset, DataWarning, VOCDataset, YOLODataset, check_dataset, image_problems, open_sets
from ssd_core.data.detect import HOLDOUT, TEST_HOLDOUT, detect_layout, role_of
from ssd_core.data.yolo import label_path, parse_label_file, read_data_yaml
from ssd_core.errors import DataError

W, H = 64, 48
# one image's objects in pixels (x1, y1, x2, y2) and class index 0..C-1, shared by the three writers
OBJECTS = {"a": [(0, (8, 6, 40, 30)), (1, (30, 20, 64, 48))], "b": [(1, (2, 2, 12, 10))], "c": []}
NAMES = ["cat", "dog"]


def _image(path, size=(W, H), color=(30, 60, 90)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _yolo_line(c, b, w=W, h=H):
    x1, y1, x2, y2 = b
    return f"{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}"


def write_yolo(root, split="train", objects=OBJECTS, names=NAMES, yaml_doc=None):
    for stem, objs in objects.items():
        _image(root / split / "images" / f"{stem}.jpg")
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        (root / split / "labels" / f"{stem}.txt").write_text("".join(_yolo_line(c, b) + "\n" for c, b in objs))
    doc = yaml_doc or {"train": f"../{split}/images", "nc": len(names), "names": names}  # Roboflow's relative paths
    (root / "data.yaml").write_text(yaml.safe_dump(doc))
    return root / "data.yaml"


def write_coco(path, images_dir, objects=OBJECTS, names=NAMES, first_id=0, umbrella=None):
    images, anns = [], []
    for k, (stem, objs) in enumerate(objects.items()):
        _image(images_dir / f"{stem}.jpg")
        images.append({"id": k + 7, "file_name": f"{stem}.jpg", "width": W, "height": H})
        for c, (x1, y1, x2, y2) in objs:
            anns.append({"id": len(anns) + 1, "image_id": k + 7, "category_id": c + first_id,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": i + first_id, "name": n, "supercategory": umbrella or "none"} for i, n in enumerate(names)]
    if umbrella:  # Roboflow: the dataset's own name as a category with no boxes, parent of the others
        cats.insert(0, {"id": first_id - 1, "name": umbrella, "supercategory": "none"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def write_labelimg(folder, objects=OBJECTS, xml_dir=None, size=(W, H)):
    for stem, objs in objects.items():
        _image(folder / f"{stem}.jpg")
        if not objs and stem == "c":
            continue  # LabelImg writes no XML for an image left unlabelled
        body = "".join(f"<object><name>{NAMES[c]}</name><bndbox><xmin>{b[0] + 1}</xmin><ymin>{b[1] + 1}</ymin>"
                       f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for c, b in objs)
        target = (xml_dir or folder) / f"{stem}.xml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"<annotation><filename>{stem}.jpg</filename><size><width>{size[0]}</width>"
                          f"<height>{size[1]}</height></size>{body}</annotation>")
    return folder


def _items(ds):
    """{image stem: (boxes normalised xyxy, labels)} of the dataset's items, without a transform."""
    out = {}
    for k in range(len(ds)):
        _, boxes, labels, _ = ds[k]
        out[ds.image_path(k).stem] = (boxes.numpy().round(5).tolist(), labels.tolist())
    return out


def test_the_three_formats_give_the_same_items(tmp_path):
    """The item contract: upright frame, xyxy in [0, 1], class 0 background, whatever the format."""
    yolo = YOLODataset(write_yolo(tmp_path / "y"), ["train"])
    write_coco(tmp_path / "c/annotations/custom_train.json", tmp_path / "c/images")
    coco = COCODataset(tmp_path / "c", ["annotations/custom_train.json"])
    voc = VOCDataset(write_labelimg(tmp_path / "v"), ["."], class_names=NAMES)
    expected = {stem: ([[x1 / W, y1 / H, x2 / W, y2 / H] for _, (x1, y1, x2, y2) in objs], [c + 1 for c, _ in objs])
                for stem, objs in OBJECTS.items()}
    expected = {k: (np.round(np.asarray(b, np.float32).reshape(-1, 4), 5).tolist(), lab) for k, (b, lab) in expected.items()}
    for ds in (yolo, coco, voc):
        assert ds.class_names == NAMES and _items(ds) == expected, type(ds).__name__


# ------------------------------------------------------------------ YOLO
def test_yolo_data_yaml_as_ultralytics_reads_it(tmp_path):
    write_yolo(tmp_path, "train")
    write_yolo(tmp_path, "valid", {"v": [(0, (1, 1, 20, 20))]})
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/test.txt").write_text("../valid/images/v.jpg\n\n")  # a list file, relative to itself
    doc = {"path": ".", "train": "../train/images", "val": ["valid/images"], "test": "lists/test.txt",
           "names": {0: "cat", 1: "dog"}}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(doc))
    spec = read_data_yaml(tmp_path)                     # the folder finds its data.yaml
    assert spec.names == NAMES and spec.folder == tmp_path.resolve()
    assert len(YOLODataset(tmp_path / "data.yaml", ["train"])) == 3
    assert YOLODataset(tmp_path / "data.yaml", ["val"]).ids == ["valid/images/v.jpg"]
    assert YOLODataset(tmp_path / "data.yaml", ["test"]).ids == ["valid/images/v.jpg"]
    assert label_path(tmp_path / "x/images/sub/images/a.png") == tmp_path / "x/images/sub/labels/a.txt"
    assert label_path(tmp_path / "flat/a.jpg") == tmp_path / "flat/a.txt"   # no images/: beside the image
    with pytest.raises(DataError, match="test: is not set"):
        YOLODataset(write_yolo(tmp_path / "other"), ["test"])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"train": "x", "nc": 3, "names": NAMES}))
    with pytest.raises(DataError, match="nc: 3 but names: lists 2"):
        read_data_yaml(tmp_path / "bad.yaml")


def test_yolo_label_quirks(tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.95 0.5 0.2 0.4\n\n1 0.1 0.2 0.3 0.2 0.2 0.6\n")
    labels, boxes, repairs = parse_label_file(f, 2)
    assert labels.tolist() == [1, 2, 2]                                        # the duplicate line dropped
    assert np.allclose(boxes, [[0.4, 0.4, 0.6, 0.6], [0.85, 0.3, 1.0, 0.7], [0.1, 0.2, 0.3, 0.6]])  # clipped; polygon bbox
    assert "line 2: duplicate" in repairs[0] and "line 3" in repairs[1] and "clipped" in repairs[1]
    assert parse_label_file(tmp_path / "missing.txt", 2)[0].size == 0         # no label file: no objects
    f.write_text("")
    assert parse_label_file(f, 2)[1].shape == (0, 4)                          # empty file: no objects
    f.write_text("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"l\.txt: line 2: class id 2 is not one of the 2 classes"):
        parse_label_file(f, 2)
    f.write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(DataError, match="line 1: expected 'class cx cy w h'"):
        parse_label_file(f, 2)
    f.write_text("0 0.5 0.5 0 0.3\n")
    with pytest.warns(DataWarning, match="degenerate"):
        assert parse_label_file(f, 2)[0].size == 0


def test_yolo_class_out_of_range_fails_naming_the_file_or_is_skipped(tmp_path):
    data = write_yolo(tmp_path, objects={"a": [(0, (8, 6, 40, 30))], "b": [(5, (2, 2, 12, 10))]})
    with pytest.raises(DataError, match=r"b\.txt: line 1: class id 5"):
        YOLODataset(data, ["train"])
    with pytest.warns(DataWarning, match="skipped"):
        ds = YOLODataset(data, ["train"], skip_bad=True)
    assert len(ds) == 1 and ds.skipped == 1 and "b.txt" in ds.skip_reasons[0]


def test_a_truncated_image_is_named_by_the_header_check_and_data_check(tmp_path):
    data = write_yolo(tmp_path)
    good = (tmp_path / "train/images/a.jpg").read_bytes()
    (tmp_path / "train/images/b.jpg").write_bytes(good[:len(good) - 40])   # header readable, pixels cut
    (tmp_path / "train/images/c.jpg").write_bytes(b"not an image")
    ds = YOLODataset(data, ["train"])
    bad = image_problems(ds)
    assert list(bad) == [2] and "c.jpg" in bad[2]                 # headers only: b's cut pixels pass here
    report = check_dataset(data)                                 # the full decode finds both
    assert sorted(p.file.rsplit("/", 1)[1] for p in report.problems) == ["b.jpg", "c.jpg"]
    assert all(p.skippable for p in report.problems) and report.format_name == "yolo"


# ------------------------------------------------------------------ COCO
def test_coco_any_numbering_roboflow_umbrella_negatives_and_paths(tmp_path):
    # 0-based ids, and Roboflow's umbrella category (-1 here, its 0 in an export) with no boxes
    write_coco(tmp_path / "export/train/_annotations.coco.json", tmp_path / "export/train", first_id=0,
               umbrella="pets")
    ds = COCODataset(tmp_path / "export", ["train"])              # a Roboflow split folder by name
    assert ds.class_names == NAMES and ds.cat_id_to_contiguous == {0: 1, 1: 2}
    assert len(ds) == 3 and _items(ds)["c"] == ([], [])           # the image without boxes is kept
    # a COCO file with a name of its own, its images in images/
    write_coco(tmp_path / "own/annotations/custom_val.json", tmp_path / "own/images", first_id=5)
    ds = open_sets("coco", tmp_path / "own", ["annotations/custom_val.json"])
    assert ds.class_names == NAMES and ds.image_dir == tmp_path / "own/images" and len(ds) == 3
    with pytest.raises(DataError, match="not found in any of"):
        write_coco(tmp_path / "lost/annotations/x.json", tmp_path / "elsewhere/deep")
        COCODataset(tmp_path / "lost", ["annotations/x.json"])


def test_coco_boxes_past_the_border_are_clipped_and_listed(tmp_path):
    write_coco(tmp_path / "c/ann.json", tmp_path / "c", objects={"a": [(0, (50, 40, 80, 60))]})
    ds = COCODataset(tmp_path / "c", ["ann.json"])
    assert ds.annotation(0).boxes.tolist() == [[50, 40, 64, 48]] and "clipped" in ds.repairs[0]


# ------------------------------------------------------------------ VOC without a devkit (LabelImg)
def test_labelimg_folders_xml_beside_or_apart_and_sizes_from_the_pixels(tmp_path):
    beside = VOCDataset(write_labelimg(tmp_path / "beside"), ["."], class_names=NAMES)
    write_labelimg(tmp_path / "apart/images", xml_dir=tmp_path / "apart/annotations")  # a folder of their own
    apart = VOCDataset(tmp_path / "apart", ["."], class_names=NAMES)
    assert _items(beside) == _items(apart) and len(beside) == 3          # c.jpg has no XML: no objects
    for size in ((0, 0), (640, 480)):                                    # <size> 0, or stale: the pixels decide
        ds = VOCDataset(write_labelimg(tmp_path / f"stale{size[0]}", size=size), ["."], class_names=NAMES)
        assert ds.image_size(0) == (W, H) and _items(ds) == _items(beside)
    assert any("640x480 does not match" in r and "the image's size is used" in r for r in ds.repairs)
    devkit_like = ds.records[0]
    ds.size_from_pixels = False  # the devkit layout keeps refusing a size that matches no frame
    ds._upright.clear()
    with pytest.raises(DataError, match="does not match"):
        ds.image_size(0)
    assert devkit_like.size == (640, 480)


def test_an_xml_without_its_image_is_a_skippable_problem(tmp_path):
    folder = write_labelimg(tmp_path / "f")
    (folder / "orphan.xml").write_text((folder / "a.xml").read_text())
    with pytest.raises(DataError, match="orphan.xml: no image named orphan"):
        VOCDataset(folder, ["."])
    assert len(VOCDataset(folder, ["."], skip_bad=True)) == 3


# ------------------------------------------------------------------ what a path is
def test_detect_layout_of_each_format(tmp_path):
    y = detect_layout(write_yolo(tmp_path / "y"))
    assert (y.format, y.train_sets, y.val_sets, y.test_sets) == ("yolo", ["train"], [], [])
    assert y.holdout == HOLDOUT and y.test_holdout == TEST_HOLDOUT and any("NO TEST SPLIT" in n for n in y.notes)
    write_yolo(tmp_path / "y", "test")                               # Roboflow leaves test: out of data.yaml
    (tmp_path / "y/data.yaml").write_text(yaml.safe_dump({"train": "../train/images", "names": NAMES}))
    assert detect_layout(tmp_path / "y").test_sets == ["test/images"]
    for split in ("train", "valid", "test"):
        write_coco(tmp_path / f"rf/{split}/_annotations.coco.json", tmp_path / f"rf/{split}", umbrella="pets")
    c = detect_layout(tmp_path / "rf")
    assert (c.format, c.train_sets, c.val_sets, c.test_sets, c.class_names) == ("coco", ["train"], ["valid"], ["test"], NAMES)
    for split in ("train", "val"):
        write_coco(tmp_path / f"own/annotations/custom_{split}.json", tmp_path / "own/images")
    o = detect_layout(tmp_path / "own/annotations/custom_train.json")
    assert (o.train_sets, o.val_sets, o.test_holdout) == (["annotations/custom_train.json"],
                                                          ["annotations/custom_val.json"], TEST_HOLDOUT)
    v = detect_layout(write_labelimg(tmp_path / "li"))
    assert (v.format, v.train_sets, v.holdout, v.test_holdout) == ("voc", ["."], HOLDOUT, TEST_HOLDOUT)
    assert role_of("instances_val2017") == "val" and role_of("custom_train") == "train" and role_of("images") is None
    with pytest.raises(DataError, match="no dataset found"):
        (tmp_path / "empty").mkdir()
        detect_layout(tmp_path / "empty")


def test_hashed_splits_partition_the_pool(tmp_path):
    from ssd_core.data import pool_sides

    keys = [f"img{i:03d}.jpg" for i in range(200)]
    sides = pool_sides(keys, 0.15, 0.15)
    assert {s: int((sides == s).sum()) for s in ("train", "val", "test")} == {"train": 144, "val": 26, "test": 30}
    assert (pool_sides(keys[::-1], 0.15, 0.15) == sides[::-1]).all()          # order does not matter
    only_val = pool_sides(keys, 0.15, None)
    from ssd_core.data import holdout_mask
    assert ((only_val == "val") == holdout_mask(keys, 0.15)).all()             # without a test slice: as before


def test_an_xml_named_otherwise_finds_its_image_by_filename(tmp_path):
    folder = write_labelimg(tmp_path / "f")
    (folder / "label_7.xml").write_text((folder / "b.xml").read_text().replace("b.jpg", "c.jpg"))
    ds = VOCDataset(folder, ["."], class_names=NAMES)
    assert _items(ds)["c"] == _items(ds)["b"] and ds.records[ds.ids.index((".", "c.jpg"))].source.name == "label_7.xml"


def test_quirks_of_exported_files_bom_missing_bbox_and_a_foreign_path(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeff0 0.5 0.5 0.2 0.2\r\n".encode())       # a Windows editor's BOM and line ends
    assert parse_label_file(f, 2)[0].tolist() == [1]
    ann = write_coco(tmp_path / "c/ann.json", tmp_path / "c")
    doc = json.loads(ann.read_text())
    del doc["annotations"][1]["bbox"]
    ann.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"ann\.json: image 7: annotation 2 has no 'bbox'"):
        COCODataset(tmp_path / "c", ["ann.json"])
    data = write_yolo(tmp_path / "y")                          # `path:` written for another machine
    doc = yaml.safe_load(data.read_text()) | {"path": "../datasets/elsewhere", "train": "train/images"}
    data.write_text(yaml.safe_dump(doc))
    assert read_data_yaml(data).folder == data.parent.resolve() and len(YOLODataset(data, ["train"])) == 3
