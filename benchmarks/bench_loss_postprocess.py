"""MultiBox loss and post-processing, per-call ms: ssd_core against torchvision's SSD code path.

    python -m benchmarks.bench_loss_postprocess [--quick] [--threads 1|2] [--batch 32] [--cases loss,post_random]

SSD300: 8732 default boxes (ssd_core.priors, VOC scales), 21 classes, batch 32, 1-10 objects per
image (padded targets for ours, per-image target dicts in pixels for torchvision).

Cases
- ``loss``: matching + encoding + hard negative mining + loss reduction on random head outputs.
  Reference: per image ``box_iou`` + ``SSDMatcher(0.5)`` (as ``SSD.forward``), then
  ``SSD.compute_loss``. ``loss_fwd_bwd`` adds the backward pass to both.
- ``post_trained``: trained-like logits (N(0,1), background +12, 2% of priors +14 on a random
  class: ~175 candidates per image above 0.01). Reference: ``SSD.postprocess_detections``.
- ``post_random``: N(0,1) logits, the worst case (400 candidates per class, NMS-bound).

Repetitions are interleaved (ours, reference, reference, ours, ...) so load from other processes
hits both; figures are medians of process CPU time with one thread (the machine is shared: CPU
time is what the code costs, wall time also counts other people's processes) or of wall time
(``--clock wall``, and the default with ``--threads 2``). Each case ends with ``RESULT name ours_ms ref_ms ratio`` where
ratio = ref_ms / ours_ms (> 1: ours is faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torchvision.models.detection import _utils as det_utils  # noqa: E402
from torchvision.models.detection.ssd import SSD  # noqa: E402

from benchmarks.inputs import NUM_CLASSES, padded_targets, torchvision_loss, torchvision_ssd, trained_like  # noqa: E402
from ssd_core.boxes import cxcywh_to_xyxy  # noqa: E402
from ssd_core.loss import MultiBoxLoss  # noqa: E402
from ssd_core.postprocess import postprocess  # noqa: E402
from ssd_core.priors import default_boxes, paper_prior_spec  # noqa: E402

SIZE = 300


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCK["cpu"]


def timed(fn) -> float:
    t0 = clock()
    fn()
    return (clock() - t0) * 1e3


def compare(name: str, ours, ref, reps: int) -> None:
    ours(), ref()                                                       # warm up
    t_ours, t_ref = [], []
    for i in range(reps):
        pair = ((t_ours, ours), (t_ref, ref)) if i % 2 == 0 else ((t_ref, ref), (t_ours, ours))
        for times, fn in pair:
            times.append(timed(fn))
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    print(f"{name:14s} ours {mo:8.2f} ms  torchvision {mr:8.2f} ms  speed-up x{mr / mo:.2f}  "
          f"(median of {reps}, min {min(t_ours):.2f} / {min(t_ref):.2f})")
    print(f"RESULT {name} {mo:.2f} {mr:.2f} {mr / mo:.2f}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cases", default="loss,loss_fwd_bwd,post_trained,post_random")
    ap.add_argument("--clock", choices=("cpu", "wall", "auto"), default="auto",
                    help="process CPU time (robust when colleagues load the cores; default with 1 thread) "
                         "or wall-clock time (default with more threads)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    global clock
    which = args.clock if args.clock != "auto" else ("cpu" if args.threads == 1 else "wall")
    clock = CLOCK[which]
    reps = 5 if args.quick else 25
    gen = torch.Generator().manual_seed(0)
    B = args.batch

    priors = default_boxes(paper_prior_spec(SIZE, (38, 19, 10, 5, 3, 1)))
    P = priors.shape[0]
    anchors_px = cxcywh_to_xyxy(priors) * SIZE
    boxes, labels = padded_targets(B, gen)
    targets_px = [{"boxes": b[l > 0] * SIZE, "labels": l[l > 0]} for b, l in zip(boxes, labels)]
    ssd, matcher, criterion = torchvision_ssd(), det_utils.SSDMatcher(0.5), MultiBoxLoss()
    print(f"SSD300: {P} default boxes, {NUM_CLASSES} classes, batch {B}, "
          f"{int((labels > 0).sum())} objects; torch.set_num_threads({torch.get_num_threads()}); "
          f"clock: {which} (ms per call); torch {torch.__version__}")

    loc = torch.randn(B, P, 4, generator=gen)
    conf = torch.randn(B, P, NUM_CLASSES, generator=gen)
    ours_loss = criterion(loc, conf, priors, boxes, labels).total
    ref_loss = torchvision_loss(ssd, matcher, loc, conf, anchors_px, targets_px)
    print(f"loss ours {ours_loss.item():.5f}  torchvision {ref_loss.item():.5f} (default-box ties may differ)")
    cases = args.cases.split(",")
    if "loss" in cases:
        compare("loss", lambda: criterion(loc, conf, priors, boxes, labels),
                lambda: torchvision_loss(ssd, matcher, loc, conf, anchors_px, targets_px), reps)

    loc_g, conf_g = loc.clone().requires_grad_(), conf.clone().requires_grad_()
    if "loss_fwd_bwd" in cases:
        compare("loss_fwd_bwd", lambda: criterion(loc_g, conf_g, priors, boxes, labels).total.backward(),
                lambda: torchvision_loss(ssd, matcher, loc_g, conf_g, anchors_px, targets_px).backward(), reps)

    anchors01 = [cxcywh_to_xyxy(priors)] * B
    shapes = [(1, 1)] * B                      # boxes stay in [0, 1] for both
    for case, conf in (("post_trained", trained_like(B, P, gen)),
                       ("post_random", torch.randn(B, P, NUM_CLASSES, generator=gen))):
        if case not in cases:
            continue
        heads = {"bbox_regression": loc, "cls_logits": conf}
        det = postprocess(loc, conf, priors)
        ref = SSD.postprocess_detections(ssd, heads, anchors01, shapes)
        same = all(int(det.counts[i]) == len(r["scores"]) and torch.allclose(det.scores[i, :len(r["scores"])],
                                                                              r["scores"], atol=1e-6)
                   for i, r in enumerate(ref))
        print(f"{case}: {det.counts.float().mean():.1f} detections per image; same as torchvision: {same}")
        compare(case, lambda: postprocess(loc, conf, priors),
                lambda: SSD.postprocess_detections(ssd, heads, anchors01, shapes), max(3, reps // 3)
                if case == "post_random" else reps)


if __name__ == "__main__":
    main()
