"""VOC mAP on a VOC07-test-sized input: ssd_core.evaluate.evaluate_voc vs the loop reference.

    python -m benchmarks.bench_evaluate [--images 4952] [--ref-images 500] [--reps 3] [--full-reference]

Synthetic VOC07-test-sized input: 4,952 images, 20 classes, Poisson(2.4) objects per image (10%
difficult), 200 detections per image (a third jittered copies of objects, some with the wrong class,
the rest background boxes), integer 1-based boxes, scores rounded to 3 decimals (ties). The reference
is py-faster-rcnn's voc_eval written loop by loop (tests/unit/test_evaluate.py); it is timed on the first
--ref-images images and extrapolated linearly to the full set (its cost is one Python step per
detection), or on everything with --full-reference. Repetitions are interleaved so that load from
other processes hits both. Both run on one thread. Prints per-class agreement on the subset and
`RESULT voc_eval ours_s ref_s ratio` (wall-clock medians, ratio = ref_s / ours_s), and the same
from process CPU time, which load from other processes on a shared machine inflates less.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ssd_core.evaluate import evaluate_voc  # noqa: E402
from tests.support.voc_reference import reference_voc_eval  # noqa: E402


def voc07_sized(num_images=4952, num_classes=20, objects_per_image=2.4, dets_per_image=200, seed=0):
    """Flat arrays with 1-based inclusive integer boxes (as in the VOC XML and devkit files)."""
    rng = np.random.default_rng(seed)
    n_gt = rng.poisson(objects_per_image, num_images)
    gt_image = np.repeat(np.arange(num_images), n_gt)
    g = gt_image.size
    wh = rng.uniform(20, 300, (g, 2))
    xy = rng.uniform(1, np.array([500, 375]) - wh)
    gt_boxes = np.round(np.concatenate([xy, xy + wh], 1))
    gt_label = rng.integers(1, num_classes + 1, g)
    gt_difficult = rng.random(g) < 0.1

    det_image = np.repeat(np.arange(num_images), dets_per_image)
    n = det_image.size
    start = np.cumsum(n_gt) - n_gt
    has_gt = n_gt[det_image] > 0
    from_gt = has_gt & (rng.random(n) < 0.33)
    pick = start[det_image] + np.floor(rng.random(n) * n_gt[det_image]).astype(np.int64)
    pick = np.where(from_gt, pick, 0)
    wh = rng.uniform(10, 200, (n, 2))
    xy = rng.uniform(1, np.array([500, 375]) - wh)
    det_boxes = np.round(np.concatenate([xy, xy + wh], 1))
    jitter = rng.normal(0, 0.12, (n, 4)) * np.tile(gt_boxes[pick, 2:] - gt_boxes[pick, :2], 2)
    det_boxes[from_gt] = np.round(gt_boxes[pick[from_gt]] + jitter[from_gt])
    det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2])
    det_label = rng.integers(1, num_classes + 1, n)
    keep_label = from_gt & (rng.random(n) < 0.8)
    det_label[keep_label] = gt_label[pick[keep_label]]
    det_score = np.round(np.where(from_gt, rng.beta(4, 2, n), rng.beta(1, 6, n)), 3)
    return dict(det_image=det_image, det_label=det_label, det_score=det_score, det_boxes=det_boxes,
                gt_image=gt_image, gt_label=gt_label, gt_boxes=gt_boxes, gt_difficult=gt_difficult)


def subset(arrays, num_images):
    d, g = arrays["det_image"] < num_images, arrays["gt_image"] < num_images
    return {k: v[d] if k.startswith("det_") else v[g] for k, v in arrays.items()}


def ours(arrays, names):
    zero_based = dict(arrays, det_boxes=arrays["det_boxes"] - [1, 1, 0, 0], gt_boxes=arrays["gt_boxes"] - [1, 1, 0, 0])
    return evaluate_voc(**zero_based, class_names=names)


def as_reference_input(arrays, num_images):
    """What voc_eval reads from the devkit files and annotation cache (not timed)."""
    dets = list(zip(arrays["det_image"].tolist(), arrays["det_label"].tolist(), arrays["det_score"].tolist(),
                    arrays["det_boxes"].tolist()))
    gts = list(zip(arrays["gt_image"].tolist(), arrays["gt_label"].tolist(), arrays["gt_boxes"].tolist(),
                   arrays["gt_difficult"].tolist()))
    return dets, gts, list(range(num_images))


def reference(dets, gts, image_ids, num_classes):
    return [reference_voc_eval(dets, gts, image_ids, c) for c in range(1, num_classes + 1)]


def timed(fn, *args):
    """-> (wall s, this process's CPU s, result)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4952)
    p.add_argument("--ref-images", type=int, default=500)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--full-reference", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    names = [f"class{k}" for k in range(1, 21)]
    full = voc07_sized(args.images)
    ref_images = args.images if args.full_reference else min(args.ref_images, args.images)
    part = subset(full, ref_images)
    ref_input = as_reference_input(part, ref_images)
    print(f"input: {args.images} images, {full['gt_image'].size} objects "
          f"({int(full['gt_difficult'].sum())} difficult), {full['det_image'].size} detections, 20 classes; "
          f"reference on {ref_images} images ({part['det_image'].size} detections)")

    # Agreement on the subset, class by class.
    got = ours(part, names)
    expected = reference(*ref_input, 20)
    diffs = [max(abs(got["AP50"][n] - e[0]), abs(got["AP50_area"][n] - e[1])) for n, e in zip(names, expected)]
    print(f"max |ours - reference| over 20 classes, both APs: {max(diffs):.2e} (mAP50 {got['mAP50']:.4f})")

    t_ours, t_ref, c_ours, c_ref = [], [], [], []
    scale = args.images / ref_images
    for _ in range(args.reps):  # interleaved
        wall, cpu, result = timed(ours, full, names)
        t_ours.append(wall), c_ours.append(cpu)
        wall, cpu, _ = timed(reference, *ref_input, 20)
        t_ref.append(wall * scale), c_ref.append(cpu * scale)
    ours_s, ref_s = statistics.median(t_ours), statistics.median(t_ref)
    how = "full set" if ref_images == args.images else f"{ref_images} images x {scale:.2f}"
    print(f"ours (full set) wall: {', '.join(f'{t:.3f}' for t in t_ours)} s; "
          f"CPU: {', '.join(f'{t:.3f}' for t in c_ours)} s; full-set mAP50 {result['mAP50']:.4f}")
    print(f"reference ({how}) wall: {', '.join(f'{t:.2f}' for t in t_ref)} s; "
          f"CPU: {', '.join(f'{t:.2f}' for t in c_ref)} s")
    print(f"CPU-time medians: ours {statistics.median(c_ours):.3f} s, reference {statistics.median(c_ref):.2f} s, "
          f"ratio {statistics.median(c_ref) / statistics.median(c_ours):.1f}")
    print(f"RESULT voc_eval {ours_s:.3f} {ref_s:.3f} {ref_s / ours_s:.1f}")


if __name__ == "__main__":
    main()
