"""Part 1: MultiBox loss (matching + encoding + hard negative mining; forward, and forward + backward) and
post-processing, SSD300 (8732 default boxes, 21 classes), batch 32, against torchvision's per-image matching
+ `SSD.compute_loss` and `SSD.postprocess_detections`. CUDA events, warm-up, interleaved repetitions,
medians. Target >= 10x (the worst-case post-processing: >= 1x).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

from benchmarks.gpu_check.plan import Plan
from benchmarks.gpu_check.report import Report
from benchmarks.gpu_check.runtime import sync
from benchmarks.inputs import (
    NUM_CLASSES,
    padded_targets,
    torchvision_loss,
    torchvision_ssd,
    torchvision_targets,
    trained_like,
)


def compare_ms(ours: Callable, ref: Callable, reps: int, device, warmup: int = 2) -> tuple[list, list]:
    """Interleaved repetitions (ours, ref, ref, ours, ...); ms per call (CUDA events on a GPU)."""
    import torch
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        ours(), ref()
    sync(device)

    def one(fn) -> float:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    t_ours, t_ref = [], []
    for i in range(reps):
        order = ((t_ours, ours), (t_ref, ref)) if i % 2 == 0 else ((t_ref, ref), (t_ours, ours))
        for times, fn in order:
            times.append(one(fn))
    return t_ours, t_ref


def part1_loss_postprocess(report: Report, section: dict, plan: Plan, device: str) -> None:
    import torch
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.ssd import SSD
    from torchvision.ops import box_convert

    from ssd_core.loss import MultiBoxLoss
    from ssd_core.model import build_ssd
    from ssd_core.postprocess import postprocess

    S, B = 300, plan.p1_batch
    gen = torch.Generator().manual_seed(0)
    priors = build_ssd("vgg16", NUM_CLASSES, S).priors.to(device)
    P = priors.shape[0]
    anchors01 = box_convert(priors, "cxcywh", "xyxy")
    anchors_px = anchors01 * S
    boxes, labels = (t.to(device) for t in padded_targets(B, gen))
    targets_px = torchvision_targets(boxes, labels, S)
    tv, matcher, criterion = torchvision_ssd(), det_utils.SSDMatcher(0.5), MultiBoxLoss()

    def tv_loss(loc, conf):
        return torchvision_loss(tv, matcher, loc, conf, anchors_px, targets_px)

    loc = torch.randn(B, P, 4, generator=gen).to(device)
    conf = torch.randn(B, P, NUM_CLASSES, generator=gen).to(device)
    ours_val = float(criterion(loc, conf, priors, boxes, labels).total)
    ref_val = float(tv_loss(loc, conf))
    section.update(batch=B, priors=P, classes=NUM_CLASSES, objects=int((labels > 0).sum()),
                   loss_value_ours=ours_val, loss_value_torchvision=ref_val, cases={})
    report.log(f"[1] SSD300 {P} default boxes, {NUM_CLASSES} classes, batch {B}, {section['objects']} objects, "
               f"{device}; loss ours {ours_val:.5f} torchvision {ref_val:.5f} (default-box ties may differ)")

    def record(case: str, t_ours: list, t_ref: list, target: float, note: str = "", **extra) -> None:
        mo, mr = statistics.median(t_ours), statistics.median(t_ref)
        section["cases"][case] = {"ours_ms": mo, "ref_ms": mr, "ours_min_ms": min(t_ours), "ref_min_ms": min(t_ref),
                                  "reps": len(t_ours), "speedup": mr / mo, **extra}
        report.result(f"{case}_b{B}_{device}", "1", mo, mr, "ms", False, target, note=note,
                      ref_label="torchvision")

    reps = plan.p1_reps
    t_o, t_r = compare_ms(lambda: criterion(loc, conf, priors, boxes, labels), lambda: tv_loss(loc, conf), reps, device)
    record("loss", t_o, t_r, 10.0, "matching + encoding + hard negative mining (forward)")
    loc_g, conf_g = loc.clone().requires_grad_(), conf.clone().requires_grad_()
    t_o, t_r = compare_ms(lambda: criterion(loc_g, conf_g, priors, boxes, labels).total.backward(),
                          lambda: tv_loss(loc_g, conf_g).backward(), reps, device)
    record("loss_fwd_bwd", t_o, t_r, 10.0, "forward + backward")

    shapes = [(1, 1)] * B            # boxes stay in [0, 1] for both
    for case, logits, target, note in (
            ("post_trained", trained_like(B, P, gen), 10.0, "trained-like logits (~175 candidates/image)"),
            ("post_random", torch.randn(B, P, NUM_CLASSES, generator=gen), 1.0,
             "random logits: 400 candidates per class, NMS-bound worst case")):
        logits = logits.to(device)
        heads = {"bbox_regression": loc, "cls_logits": logits}
        det = postprocess(loc, logits, priors)
        ref = SSD.postprocess_detections(tv, heads, [anchors01] * B, shapes)
        same = all(int(det.counts[i]) == len(r["scores"]) and
                   torch.allclose(det.scores[i, :len(r["scores"])], r["scores"], atol=1e-5)
                   for i, r in enumerate(ref))
        n_reps = max(3, reps // 2) if case == "post_random" else reps
        t_o, t_r = compare_ms(lambda: postprocess(loc, logits, priors),
                              lambda: SSD.postprocess_detections(tv, heads, [anchors01] * B, shapes), n_reps, device)
        record(case, t_o, t_r, target, note, detections_per_image=float(det.counts.float().mean()),
               same_as_torchvision=bool(same))
        report.log(f"[1] {case}: {det.counts.float().mean():.1f} detections per image; same as torchvision: {same}")
