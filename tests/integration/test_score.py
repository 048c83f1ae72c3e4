"""`ssdlab score` on tiny VOC-layout roots / COCO files written in tmp_path, against the references."""
from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from ssd_core.errors import DataError
from ssdlab import cli
from ssdlab.commands.score import score_coco, score_voc
from tests.support.voc_reference import reference_voc_eval, tiny_coco

CLASSES = ["cat", "dog", "bird"]


def write_voc(root: Path, gts, image_ids, subdir="TINY", split="test", size=(200, 160)):
    """gts: (image index, label 1..C, [x1, y1, x2, y2] 1-based inclusive, difficult)."""
    base = root / subdir
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i:06d}\n" for i in image_ids))
    for i in image_ids:
        objects = "".join(
            f"<object><name>{CLASSES[g[1] - 1]}</name><difficult>{int(g[3])}</difficult><bndbox>"
            f"<xmin>{g[2][0]}</xmin><ymin>{g[2][1]}</ymin><xmax>{g[2][2]}</xmax><ymax>{g[2][3]}</ymax>"
            f"</bndbox></object>" for g in gts if g[0] == i)
        (base / "Annotations" / f"{i:06d}.xml").write_text(
            f"<annotation><filename>{i:06d}.jpg</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{objects}</annotation>")


def write_results(folder: Path, dets, split="test", classes=CLASSES):
    folder.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(classes, start=1):
        lines = [f"{d[0]:06d} {d[2]:.3f} {' '.join(f'{v:.1f}' for v in d[3])}\n" for d in dets if d[1] == c]
        (folder / f"comp4_det_{split}_{name}.txt").write_text("".join(lines))


def random_voc(seed, num_images=25):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for img in range(num_images):
        for _ in range(rng.integers(0, 5)):
            x1, y1 = rng.integers(1, 100, size=2)
            w, h = rng.integers(1, 50, size=2)  # data.py drops boxes with no extent (xmax <= xmin)
            gts.append((img, int(rng.integers(1, 4)), [int(x1), int(y1), int(x1 + w), int(y1 + h)],
                        bool(rng.random() < 0.15)))
    for g in gts:
        for _ in range(rng.integers(0, 3)):
            box = (np.array(g[2]) + rng.integers(-5, 6, size=4)).astype(float)
            box[2:] = np.maximum(box[2:], box[:2])
            dets.append((g[0], g[1], float(np.round(rng.random(), 3)), box.tolist()))
    for _ in range(num_images):
        x1, y1 = rng.integers(1, 100, size=2)
        dets.append((int(rng.integers(0, num_images)), int(rng.integers(1, 4)), float(np.round(rng.random(), 3)),
                     [float(x1), float(y1), float(x1 + 20), float(y1 + 30)]))
    return gts, dets, list(range(num_images))


@pytest.fixture(autouse=True)
def only_score_command(monkeypatch):
    """The real `ssdlab` main (UserError -> exit 2), without importing the other areas (mlflow: seconds)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("ssdlab.commands.score",))


def main(argv):
    return cli.main(argv)


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- VOC


@pytest.mark.parametrize("seed", range(3))
def test_voc_results_match_the_reference(tmp_path, capsys, seed):
    gts, dets, ids = random_voc(seed)
    write_voc(tmp_path / "voc", gts, ids)
    write_results(tmp_path / "res", dets)
    out_json = tmp_path / "out" / "m.json"
    code, out, _ = run_cli(["score", "--voc-root", str(tmp_path / "voc"), "--image-set", "TINY/test",
                            "--results", str(tmp_path / "res"), "--classes", ",".join(CLASSES),
                            "--json", str(out_json)], capsys)
    assert code == 0
    m = json.loads(out_json.read_text())
    dets = [(d[0], d[1], round(d[2], 3), [round(v, 1) for v in d[3]]) for d in dets]  # as written
    ref07, ref_area = [], []
    for c, name in enumerate(CLASSES, start=1):
        ap07, area, npos = reference_voc_eval(dets, gts, ids, c)
        assert m["num_gt"][name] == npos
        assert m["AP"][name] == pytest.approx(ap07, abs=1e-6) and m["AP_area"][name] == pytest.approx(area, abs=1e-6)
        ref07.append(ap07), ref_area.append(area)
    assert m["mAP"] == m["mAP50"] == pytest.approx(np.mean(ref07), abs=1e-6)
    assert m["mAP50_area"] == pytest.approx(np.mean(ref_area), abs=1e-6)
    assert m["num_images"] == len(ids) and sum(m["num_det"].values()) == len(dets)
    assert f"{m['AP']['dog']:5.3f}" in out and "mAP" in out  # fractions, one convention


def test_voc_perfect_results_inferred_classes_and_missing_file(tmp_path, capsys):
    gts = [(0, 1, [10, 10, 50, 60], False), (1, 2, [5, 5, 30, 30], False), (1, 1, [40, 40, 90, 90], True)]
    write_voc(tmp_path / "voc", gts, [0, 1, 2])
    dets = [(g[0], g[1], 0.9, [float(v) for v in g[2]]) for g in gts[:2]]
    write_results(tmp_path / "res", dets, classes=CLASSES[:2])  # no bird file; bird has no gt anyway
    metrics, table = score_voc(tmp_path / "voc", "TINY/test", tmp_path / "res")  # classes from file names
    assert list(metrics["AP"]) == ["cat", "dog"]
    assert metrics["AP"] == pytest.approx({"cat": 1.0, "dog": 1.0}) and metrics["num_gt"] == {"cat": 1, "dog": 1}
    metrics, _ = score_voc(tmp_path / "voc", "TINY/test", tmp_path / "res", CLASSES)
    assert math.isnan(metrics["AP"]["bird"]) and metrics["mAP"] == pytest.approx(1.0)
    assert "no results file for bird" in capsys.readouterr().err
    code, out, _ = run_cli(["score", "--voc-root", str(tmp_path / "voc"), "--image-set", "TINY/test",
                            "--results", str(tmp_path / "res"), "--classes", "cat,dog,bird",
                            "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0 and json.loads((tmp_path / "m.json").read_text())["AP"]["bird"] is None
    assert "  n/a" in out


@pytest.mark.parametrize("line, message", [
    ("000001 0.5 1 2 3\n", "line 2: expected 'image_id score x1 y1 x2 y2', got 5 fields"),
    ("000001 high 1 2 3 4\n", "line 2: non-numeric value"),
    ("000001 nan 1 2 3 4\n", "line 2: score and box must be finite"),
    ("000001 0.5 10 2 3 4\n", "line 2: score and box must be finite with x1 <= x2"),
    ("000099 0.5 1 2 3 4\n", "line 2: image '000099' is not in the image set"),
])
def test_voc_malformed_lines_name_file_and_line(tmp_path, capsys, line, message):
    write_voc(tmp_path / "voc", [(0, 1, [10, 10, 50, 60], False)], [0, 1])
    res = tmp_path / "res"
    res.mkdir()
    (res / "comp4_det_test_cat.txt").write_text("000000 0.9 10 10 50 60\n" + line)
    with pytest.raises(DataError, match=message) as info:
        score_voc(tmp_path / "voc", "TINY/test", res, ["cat"])
    assert "comp4_det_test_cat.txt" in str(info.value)
    code, _, err = run_cli(["score", "--voc-root", str(tmp_path / "voc"), "--image-set", "TINY/test",
                            "--results", str(res), "--classes", "cat"], capsys)
    assert code == 2 and "comp4_det_test_cat.txt: line 2" in err


def test_voc_bad_folders_and_classes(tmp_path):
    write_voc(tmp_path / "voc", [(0, 1, [10, 10, 50, 60], False)], [0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no results files named comp4_det_test_<class>.txt"):
        score_voc(tmp_path / "voc", "TINY/test", tmp_path / "empty", ["cat"])
    with pytest.raises(DataError, match="results folder not found"):
        score_voc(tmp_path / "voc", "TINY/test", tmp_path / "nope", ["cat"])
    write_results(tmp_path / "res", [], classes=["cat", "zebra"])
    with pytest.raises(DataError, match="comp4_det_test_zebra.txt: class 'zebra' is not one of"):
        score_voc(tmp_path / "voc", "TINY/test", tmp_path / "res", ["cat"])
    with pytest.raises(DataError, match="image set 'TINY/val' not found"):
        score_voc(tmp_path / "voc", "TINY/val", tmp_path / "res", ["cat"])


def test_voc_on_bccd_test_matches_the_reference(bccd_root, tmp_path):
    import xml.etree.ElementTree as ET
    names = ["Platelets", "RBC", "WBC"]
    ids = (bccd_root / "BCCD" / "ImageSets" / "Main" / "test.txt").read_text().split()
    gts = []
    for i in ids:
        for obj in ET.parse(bccd_root / "BCCD" / "Annotations" / f"{i}.xml").getroot().iter("object"):
            box = [float(obj.find(f"bndbox/{t}").text) for t in ("xmin", "ymin", "xmax", "ymax")]
            gts.append((i, names.index(obj.find("name").text) + 1, box, obj.findtext("difficult", "0") != "0"))
    rng = np.random.default_rng(0)
    dets = [(g[0], g[1], float(np.round(rng.random(), 3)), (np.array(g[2]) + rng.integers(-12, 13, 4)).tolist())
            for g in gts if rng.random() < 0.8]
    folder = tmp_path / "res"
    folder.mkdir()
    for c, name in enumerate(names, start=1):
        (folder / f"comp4_det_test_{name}.txt").write_text("".join(
            f"{d[0]} {d[2]} {' '.join(str(v) for v in d[3])}\n" for d in dets if d[1] == c))
    metrics, _ = score_voc(bccd_root, "BCCD/test", folder)
    assert list(metrics["AP"]) == names and metrics["num_images"] == len(ids)
    for c, name in enumerate(names, start=1):
        ap07, area, npos = reference_voc_eval(dets, gts, ids, c)
        assert metrics["num_gt"][name] == npos
        assert metrics["AP"][name] == pytest.approx(ap07, abs=1e-6)
        assert metrics["AP_area"][name] == pytest.approx(area, abs=1e-6)
    assert 0.3 < metrics["mAP"] < 0.95


# ---------------------------------------------------------------- COCO


def test_coco_results_match_direct_cocoeval(tmp_path, capsys):
    from pycocotools.cocoeval import COCOeval
    coco, results = tiny_coco(tmp_path)
    res_path = tmp_path / "dets.json"
    res_path.write_text(json.dumps(results))
    code, out, _ = run_cli(["score", "--coco-gt", str(tmp_path / "instances.json"), "--results", str(res_path),
                            "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0
    assert "loading annotations" not in out and "Average Precision" not in out  # pycocotools silenced
    m = json.loads((tmp_path / "m.json").read_text())
    with redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(str(res_path)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert m["mAP"] == pytest.approx(ev.stats[0]) and m["AP50"] == pytest.approx(ev.stats[1])
    assert m["AP75"] == pytest.approx(ev.stats[2]) and m["AR100"] == pytest.approx(ev.stats[8])
    for k, cat in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        name = coco.cats[cat]["name"]
        assert m["AP"][name] == (pytest.approx(p[p > -1].mean()) if (p > -1).any() else None)
    assert m["num_results"] == len(results) and "cell" in out


@pytest.mark.parametrize("edit, message", [
    (lambda r: r[1].pop("score"), "detection 1: expected {image_id, category_id, bbox, score}"),
    (lambda r: r[2].update(bbox=[1, 2, 3]), "detection 2: bbox must be 4 finite numbers"),
    (lambda r: r[0].update(image_id=999), "detection 0: image_id 999 is not in the ground truth"),
    (lambda r: r[0].update(category_id=5), "detection 0: category_id 5 is not in the ground truth"),
])
def test_coco_bad_results_name_file_and_detection(tmp_path, edit, message):
    _, results = tiny_coco(tmp_path)
    edit(results)
    (tmp_path / "dets.json").write_text(json.dumps(results))
    with pytest.raises(DataError, match=message) as info:
        score_coco(tmp_path / "instances.json", tmp_path / "dets.json")
    assert "dets.json" in str(info.value)


def test_coco_unreadable_files(tmp_path):
    tiny_coco(tmp_path)
    (tmp_path / "dets.json").write_text("[{")
    with pytest.raises(DataError, match="dets.json: cannot read results json"):
        score_coco(tmp_path / "instances.json", tmp_path / "dets.json")
    with pytest.raises(DataError, match="missing.json: file not found"):
        score_coco(tmp_path / "missing.json", tmp_path / "dets.json")


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["score", "--results", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["score", "--results", str(tmp_path), "--voc-root", str(tmp_path)])
    assert "--image-set" in capsys.readouterr().err
