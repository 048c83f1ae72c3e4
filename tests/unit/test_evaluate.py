"""ssd_core.evaluate against a straightforward, loop-based VOC reference (py-faster-rcnn's voc_eval).

The reference below is written from the algorithm: per class, detections sorted by score (stable),
each takes the highest-IoU box of its image (+1 pixel-inclusive IoU on 1-based boxes), IoU > 0.5
strictly, difficult -> ignored, first claim -> TP, later claims -> FP.
"""
from __future__ import annotations

import io
import math
from contextlib import redirect_stdout
from typing import NamedTuple

import numpy as np
import pytest
import torch

from ssd_core.evaluate import (
    DetectionAccumulator,
    evaluate_coco,
    evaluate_voc,
    ground_truth_from_dataset,
    to_coco_results,
    voc_ap,
)
from tests.support.voc_reference import reference_voc_ap, reference_voc_eval, tiny_coco


# ----------------------------------------------------------------------------------- helpers
def flat(dets, gts):
    """Reference tuples -> evaluate_voc keyword arrays (boxes still 1-based inclusive)."""
    return dict(
        det_image=np.array([d[0] for d in dets], dtype=np.int64),
        det_label=np.array([d[1] for d in dets], dtype=np.int64),
        det_score=np.array([d[2] for d in dets], dtype=np.float64),
        det_boxes=np.array([d[3] for d in dets], dtype=np.float64).reshape(-1, 4),
        gt_image=np.array([g[0] for g in gts], dtype=np.int64),
        gt_label=np.array([g[1] for g in gts], dtype=np.int64),
        gt_boxes=np.array([g[2] for g in gts], dtype=np.float64).reshape(-1, 4),
        gt_difficult=np.array([g[3] for g in gts], dtype=bool),
    )


def to_zero_based(arrays):
    """VOC 1-based inclusive (x1, y1, x2, y2) -> ssd_core.data's (x1 - 1, y1 - 1, x2, y2)."""
    out = dict(arrays)
    for key in ("det_boxes", "gt_boxes"):
        b = out[key].copy()
        b[:, :2] -= 1.0
        out[key] = b
    return out


def random_case(seed, num_images=30, num_classes=4, integer=True):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for img in range(num_images):
        for _ in range(rng.integers(0, 6)):
            x1, y1 = rng.integers(1, 80, size=2)
            w, h = rng.integers(0, 40, size=2)
            gts.append((img, int(rng.integers(1, num_classes + 1)), [x1, y1, x1 + w, y1 + h],
                        bool(rng.random() < 0.2)))
    for g in gts:  # jittered copies (some wrong class), duplicates, with coarse scores (ties)
        for _ in range(rng.integers(0, 4)):
            jitter = rng.integers(-4, 5, size=4) if integer else rng.normal(0, 3, size=4)
            box = np.array(g[2], dtype=np.float64) + jitter
            box[2:] = np.maximum(box[2:], box[:2])
            label = g[1] if rng.random() < 0.85 else int(rng.integers(1, num_classes + 1))
            dets.append((g[0], label, float(np.round(rng.random(), 1)), box.tolist()))
            if rng.random() < 0.2:
                dets.append(dets[-1])
    for _ in range(num_images * 2):  # background false positives, also on images without gt
        x1, y1 = rng.integers(1, 80, size=2)
        w, h = rng.integers(0, 40, size=2)
        dets.append((int(rng.integers(0, num_images + 3)), int(rng.integers(1, num_classes + 1)),
                     float(np.round(rng.random(), 2)), [x1, y1, x1 + w, y1 + h]))
    order = rng.permutation(len(dets))
    return [dets[k] for k in order], gts, list(range(num_images + 3)), num_classes


def check_against_reference(dets, gts, image_ids, num_classes):
    names = [f"c{k}" for k in range(1, num_classes + 1)]
    arrays = flat(dets, gts)
    ours = evaluate_voc(**to_zero_based(arrays), class_names=names)
    ours_inclusive = evaluate_voc(**arrays, class_names=names, pixel_inclusive=True)
    ref07, ref_area = [], []
    for c, name in enumerate(names, start=1):
        ap07, area, npos = reference_voc_eval(dets, gts, image_ids, c)
        assert ours["num_gt"][name] == npos
        if npos == 0:  # documented deviation: nan, left out of the mean (reference: 0 / nan)
            assert math.isnan(ours["AP50"][name]) and math.isnan(ours["AP50_area"][name])
            continue
        for result in (ours, ours_inclusive):
            assert result["AP50"][name] == pytest.approx(ap07, abs=1e-6), name
            assert result["AP50_area"][name] == pytest.approx(area, abs=1e-6), name
        ref07.append(ap07)
        ref_area.append(area)
    assert ours["mAP50"] == pytest.approx(np.mean(ref07), abs=1e-6)
    assert ours["mAP50_area"] == pytest.approx(np.mean(ref_area), abs=1e-6)
    return ours


# ----------------------------------------------------------------------------------- VOC: reference
@pytest.mark.parametrize("seed", range(12))
def test_matches_reference_on_random_integer_boxes(seed):
    check_against_reference(*random_case(seed, num_classes=3 + seed % 4))


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_on_random_float_boxes(seed):
    check_against_reference(*random_case(100 + seed, integer=False))


def test_matches_reference_on_a_larger_case():
    result = check_against_reference(*random_case(7, num_images=150, num_classes=6))
    assert 0.0 < result["mAP50"] < 1.0


def test_voc_ap_matches_reference_on_random_curves():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 7, 50):
        rec = np.sort(rng.random(n))
        prec = rng.random(n)
        for use07 in (True, False):
            assert voc_ap(rec, prec, use07) == pytest.approx(reference_voc_ap(rec, prec, use07), abs=1e-12)


# ----------------------------------------------------------------------------------- VOC: by hand
BOX = [10, 10, 49, 49]  # 1-based inclusive, 40 x 40 pixels


def run(dets, gts, num_classes=1, **kw):
    arrays = to_zero_based(flat(dets, gts))
    return evaluate_voc(**arrays, class_names=[f"c{k}" for k in range(1, num_classes + 1)], **kw)


def test_perfect_detections_give_ap_one():
    gts = [(i, 1 + i % 2, [5 * i + 1, 3, 5 * i + 30, 40], False) for i in range(6)]
    dets = [(g[0], g[1], 0.9 - 0.1 * k, g[2]) for k, g in enumerate(gts)]
    r = run(dets, gts, num_classes=2)
    assert r["AP50"] == pytest.approx({"c1": 1.0, "c2": 1.0}) and r["AP50_area"] == {"c1": 1.0, "c2": 1.0}
    assert r["mAP50"] == pytest.approx(1.0) and r["num_gt"] == {"c1": 3, "c2": 3} and r["num_det"] == {"c1": 3, "c2": 3}


def test_no_detections_give_ap_zero():
    r = run([], [(0, 1, BOX, False)])
    assert r["AP50"]["c1"] == 0.0 and r["AP50_area"]["c1"] == 0.0 and r["mAP50"] == 0.0


def test_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    gts = [(0, 1, BOX, False), (1, 2, BOX, True)]  # class 2 only difficult, class 3 nothing
    dets = [(0, 1, 0.9, BOX), (0, 2, 0.8, BOX), (1, 3, 0.7, BOX)]
    r = run(dets, gts, num_classes=3)
    assert r["AP50"]["c1"] == pytest.approx(1.0)
    assert math.isnan(r["AP50"]["c2"]) and math.isnan(r["AP50"]["c3"]) and math.isnan(r["AP50_area"]["c3"])
    assert r["mAP50"] == pytest.approx(1.0) and r["mAP50_area"] == 1.0 and r["num_gt"] == {"c1": 1, "c2": 0, "c3": 0}
    assert math.isnan(run([], [], num_classes=1)["mAP50"])


def test_duplicates_are_false_positives_hand_computed():
    other = [60, 10, 99, 49]
    gts = [(0, 1, BOX, False), (0, 1, other, False)]
    dets = [(0, 1, 0.9, BOX), (0, 1, 0.8, BOX), (0, 1, 0.7, other)]
    # tp 1 0 1, rec .5 .5 1, prec 1 .5 2/3 -> 11-point 6/11 * 1 + 5/11 * 2/3; area .5 * 1 + .5 * 2/3
    r = run(dets, gts)
    assert r["AP50"]["c1"] == pytest.approx(28 / 33, abs=1e-12)
    assert r["AP50_area"]["c1"] == pytest.approx(5 / 6, abs=1e-12)


def test_detection_on_difficult_object_is_ignored():
    gts = [(0, 1, BOX, False), (1, 1, BOX, True)]  # image 1 holds only a difficult object
    dets = [(1, 1, 0.9, BOX), (1, 1, 0.85, BOX), (0, 1, 0.5, BOX)]  # would be FP, FP, TP if counted
    r = run(dets, gts)
    assert r["AP50"]["c1"] == pytest.approx(1.0) and r["AP50_area"]["c1"] == 1.0 and r["num_gt"]["c1"] == 1


def test_iou_exactly_half_is_not_a_match():
    # 1-based inclusive: gt 10 x 10 = 100 px, detection 10 x 5 = 50 px inside it -> IoU 0.5 exactly
    gts = [(0, 1, [1, 1, 10, 10], False)]
    assert run([(0, 1, 0.9, [1, 1, 10, 5])], gts)["AP50"]["c1"] == 0.0
    assert run([(0, 1, 0.9, [1, 1, 10, 6])], gts)["AP50"]["c1"] == pytest.approx(1.0)  # 60 / 100
    assert run([(0, 1, 0.9, [1, 1, 10, 5])], gts, iou_threshold=0.49)["AP50"]["c1"] == pytest.approx(1.0)


def test_best_box_already_taken_makes_a_false_positive_like_the_reference():
    # The second detection overlaps box A best (taken) and box B by > 0.5: the reference says FP.
    a, b = [1, 1, 100, 100], [1, 11, 100, 110]
    gts = [(0, 1, a, False), (0, 1, b, False)]
    dets = [(0, 1, 0.9, a), (0, 1, 0.8, [1, 4, 100, 103])]
    r = run(dets, gts)
    assert r["AP50"]["c1"] == pytest.approx(reference_voc_eval(dets, gts, [0], 1)[0], abs=1e-12)
    assert r["AP50_area"]["c1"] == pytest.approx(0.5, abs=1e-12)  # rec .5 .5: only the first counts


def test_recall_exactly_at_a_threshold_uses_the_reference_floats():
    # 10 objects; recall reaches exactly 0.3 and 0.7, just below the reference's thresholds
    # 0.30000000000000004 and 0.7000000000000001 (np.arange(0, 1.1, 0.1)), so those do not count.
    gts = [(i, 1, BOX, False) for i in range(10)]
    scores = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6]
    dets = [(i, 1, s, BOX) for i, s in zip([0, 1, 2], scores[:3])] + [(20, 1, scores[3], BOX)] \
        + [(i, 1, s, BOX) for i, s in zip([3, 4, 5, 6], scores[4:])] + [(30, 1, 0.5, BOX)]
    r = check_against_reference(dets, gts, list(range(31)), 1)
    # t = 0, .1, .2: precision 1; t = .3+eps, .4, .5, .6+eps: 7/8 (rec .4 .. .7); t = .7+eps and up: 0.
    # Exact thresholds would give (4 * 1 + 4 * 7/8) / 11 instead.
    assert r["AP50"]["c1"] == pytest.approx((3 * 1.0 + 4 * 7 / 8) / 11, abs=1e-12)


def test_score_ties_keep_input_order():
    gts = [(0, 1, BOX, False)]
    miss, hit = (0, 1, 0.5, [60, 60, 70, 70]), (0, 1, 0.5, BOX)
    assert run([miss, hit], gts)["AP50"]["c1"] == pytest.approx(0.5)  # FP then TP: precision .5
    assert run([hit, miss], gts)["AP50"]["c1"] == pytest.approx(1.0)


def test_accepts_torch_tensors_and_string_image_ids():
    dets, gts, ids, c = random_case(3)
    arrays = to_zero_based(flat(dets, gts))
    expected = evaluate_voc(**arrays, class_names=["a", "b", "c", "d"])
    as_str = dict(arrays, det_image=np.array([f"{i:06d}" for i in arrays["det_image"]]),
                  gt_image=np.array([f"{i:06d}" for i in arrays["gt_image"]]))
    as_torch = {k: torch.as_tensor(v) for k, v in arrays.items()}
    for variant in (as_str, as_torch):
        got = evaluate_voc(**variant, class_names=["a", "b", "c", "d"])
        assert got["AP50"] == pytest.approx(expected["AP50"], nan_ok=True)


def test_bad_labels_and_shapes_are_clear_errors():
    good = to_zero_based(flat([(0, 1, 0.5, BOX)], [(0, 1, BOX, False)]))
    with pytest.raises(ValueError, match="det_label contains 0"):
        evaluate_voc(**dict(good, det_label=np.array([0])), class_names=["a"])
    with pytest.raises(ValueError, match="gt_label contains 3"):
        evaluate_voc(**dict(good, gt_label=np.array([3])), class_names=["a"])
    with pytest.raises(ValueError, match="det_score has 2 rows"):
        evaluate_voc(**dict(good, det_score=np.array([0.5, 0.4])), class_names=["a"])


# ----------------------------------------------------------------------------------- accumulator
from ssd_core.postprocess import Detections as FakeDetections  # noqa: E402


class Target(NamedTuple):
    boxes: torch.Tensor
    labels: torch.Tensor
    difficult: torch.Tensor


class FakeDataset:
    class_names = ["cat", "dog"]
    sizes = [(200, 100), (50, 400), (300, 300)]
    targets = [Target(torch.tensor([[20.0, 10.0, 120.0, 60.0]]), torch.tensor([1]), torch.tensor([False])),
               Target(torch.tensor([[0.0, 0.0, 25.0, 200.0], [5.0, 5.0, 45.0, 45.0]]), torch.tensor([2, 1]),
                      torch.tensor([False, True])),
               Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool))]

    def __len__(self):
        return 3

    def annotation(self, i):
        return self.targets[i]

    def image_size(self, i):
        return self.sizes[i]


def test_accumulator_scales_drops_padding_and_evaluates():
    acc = DetectionAccumulator.for_dataset(FakeDataset())
    assert acc.ground_truth["gt_image"].tolist() == [0, 1, 1]
    # batch of images 2 and 0 (shuffled), D = 3 slots; image 2 has one detection, image 0 two
    boxes = torch.tensor([[[0.1, 0.1, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
                          [[0.1, 0.1, 0.6, 0.6], [0.5, 0.5, 0.9, 0.9], [0.0, 0.0, 0.0, 0.0]]])
    acc.add(FakeDetections(boxes, torch.tensor([[0.3, 0.0, 0.0], [0.9, 0.2, 0.0]]),
                           torch.tensor([[2, 0, 0], [1, 2, 0]]), torch.tensor([1, 2])), torch.tensor([2, 0]))
    acc.add(FakeDetections(torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.1, 0.0125, 0.9, 0.1125]]]),
                           torch.tensor([[0.8, 0.7]]), torch.tensor([[2, 1]]), torch.tensor([2])),
            [1], image_sizes=[[50, 400]])
    a = acc.arrays()
    assert a["det_image"].tolist() == [2, 0, 0, 1, 1]
    assert a["det_label"].tolist() == [2, 1, 2, 2, 1]
    np.testing.assert_allclose(a["det_boxes"][1], [20.0, 10.0, 120.0, 60.0])
    np.testing.assert_allclose(a["det_boxes"][4], [5.0, 5.0, 45.0, 45.0])
    r = acc.evaluate()
    # cat: TP 0.9 (image 0), 0.7 ignored (difficult, image 1) -> 1; dog: TP 0.8 (image 1, exact),
    # then FP 0.3 (image 2, no gt), FP 0.2 (image 0) -> 1 (11-point), 1 (area)
    assert r["AP50"] == pytest.approx({"cat": 1.0, "dog": 1.0}) and r["num_gt"] == {"cat": 1, "dog": 1}


def test_empty_accumulator_and_coco_results_format():
    acc = DetectionAccumulator(["cat"], ground_truth=ground_truth_from_dataset(FakeDataset()))
    assert acc.arrays()["det_boxes"].shape == (0, 4)
    assert acc.coco_results({1: 17}) == []
    res = to_coco_results([0, 1], [1, 2], [0.5, 0.25], [[10, 20, 40, 60], [0, 0, 1, 1]], {1: 17, 2: 3},
                          image_id_map=[101, 202])
    assert res == [{"image_id": 101, "category_id": 17, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.5},
                   {"image_id": 202, "category_id": 3, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.25}]


# ----------------------------------------------------------------------------------- COCO
def test_evaluate_coco_matches_direct_cocoeval_and_is_quiet(tmp_path, capsys):
    from pycocotools.cocoeval import COCOeval
    coco, results = tiny_coco(tmp_path)
    ours = evaluate_coco(coco, results)
    assert capsys.readouterr().out == ""
    with redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes([dict(r) for r in results]), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    for k, i in (("AP", 0), ("AP50", 1), ("AP75", 2), ("APs", 3), ("APm", 4), ("APl", 5), ("AR100", 8)):
        expected = ev.stats[i] if ev.stats[i] > -1 else math.nan
        assert ours[k] == pytest.approx(expected, nan_ok=True), k
    assert 0.0 < ours["AP"] < 1.0
    p = ev.eval["precision"][:, :, 0, 0, -1]
    assert ours["AP_per_class"]["cell"] == pytest.approx(p[p > -1].mean())
    assert math.isnan(ours["AP_per_class"]["never"])
    assert set(ours["AP_per_class"]) == {"cell", "blob", "never"}
    assert evaluate_coco(coco, [])["AP"] == 0.0


def test_weighted_scoring_equals_repeating_the_images():
    """weighted_voc with image weights k_i == evaluate_voc on the images repeated k_i times (new ids),
    the identity the paired bootstrap relies on; random detections and ground truth, 3 classes."""
    from ssd_core.evaluate import evaluate_voc, voc_matches, weighted_voc
    rng = np.random.default_rng(5)
    n_img, names = 12, ["a", "b", "c"]
    gt_image = np.repeat(np.arange(n_img), rng.integers(0, 4, n_img))
    g = gt_image.size
    xy = rng.uniform(0, 80, (g, 2))
    gt_boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (g, 2))], 1)
    gt_label, gt_difficult = rng.integers(1, 4, g), rng.random(g) < 0.15
    pick = rng.integers(0, g, 40)
    det_boxes = np.concatenate([gt_boxes[pick] + rng.normal(0, 3, (40, 4)), rng.uniform(0, 100, (15, 4))])
    det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
    det_image = np.concatenate([gt_image[pick], rng.integers(0, n_img, 15)])
    det_label = np.concatenate([gt_label[pick], rng.integers(1, 4, 15)])
    det_score = rng.random(55)
    m = voc_matches(det_image, det_label, det_score, det_boxes, gt_image, gt_label, gt_boxes, gt_difficult, names)
    plain = evaluate_voc(det_image, det_label, det_score, det_boxes, gt_image, gt_label, gt_boxes, gt_difficult, names)
    assert weighted_voc(m)["mAP50"] == plain["mAP50"] and weighted_voc(m)["mAP50_area"] == plain["mAP50_area"]
    for _ in range(20):
        w = np.bincount(rng.integers(0, n_img, n_img), minlength=n_img)
        copies = [(i, c) for i in range(n_img) for c in range(w[i])]
        new = {ic: k for k, ic in enumerate(copies)}

        def repeat(image, *cols):
            rows = [(j, new[(i, c)]) for j, i in enumerate(image) for c in range(w[i])]
            idx = np.array([j for j, _ in rows], dtype=int)
            return [np.array([k for _, k in rows], dtype=int)] + [np.asarray(col)[idx] for col in cols]

        di, dl, ds, db = repeat(det_image, det_label, det_score, det_boxes)
        gi, gl, gb, gd = repeat(gt_image, gt_label, gt_boxes, gt_difficult)
        want = evaluate_voc(di, dl, ds, db, gi, gl, gb, gd, names)
        got = weighted_voc(m, w)
        assert got["mAP50"] == pytest.approx(want["mAP50"], abs=1e-12, nan_ok=True)
        assert got["mAP50_area"] == pytest.approx(want["mAP50_area"], abs=1e-12, nan_ok=True)
