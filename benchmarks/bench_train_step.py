"""One SSD300-VGG16 training step, ms per step: ssd_core (build_ssd + MultiBoxLoss) against
torchvision's ``ssd300_vgg16`` (its own transform, matcher and loss) on the same batch.

    python -m benchmarks.bench_train_step [--quick] [--threads 1|2] [--batch 4] [--cases fp32,cl,bf16]

A step is: forward, loss, backward, SGD (lr 1e-3, momentum 0.9, weight decay 5e-4). Both models
start from random weights (nothing is downloaded), 21 classes, 300 x 300 images, 1-10 objects per
image. Ours gets uint8 images and normalises them inside the step (ssd_core.model.normalize);
torchvision gets float images in [0, 1] and normalises (and resizes, a no-op size) in its transform.

Cases (both models get the same treatment):
- ``fp32``: plain fp32, NCHW.
- ``cl``: fp32, models (and our input batch) in ``torch.channels_last``; torchvision's transform
  builds its own NCHW batch, which its first conv converts.
- ``bf16``: channels_last + ``torch.autocast("cpu", dtype=torch.bfloat16)`` around forward and
  loss (our loss reduces in fp32 whatever the head dtype).

Steps are interleaved (ours, reference, reference, ours, ...); figures are medians of process CPU
time with one thread (robust on a shared machine) or wall time with more threads.
Each case ends with ``RESULT train_step_<case> ours_ms ref_ms ratio`` (ratio = ref / ours).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torchvision.models.detection import ssd300_vgg16  # noqa: E402

from benchmarks.inputs import NUM_CLASSES, padded_targets  # noqa: E402
from ssd_core.loss import MultiBoxLoss  # noqa: E402
from ssd_core.model import build_ssd, normalize  # noqa: E402

SIZE = 300


def make_batch(B: int, gen: torch.Generator):
    images = torch.randint(0, 256, (B, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    return (images, *padded_targets(B, gen))


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)


def autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def ours_step(model, opt, criterion, images, boxes, labels, memory_format, bf16):
    x = normalize(images).contiguous(memory_format=memory_format)
    with autocast(bf16):
        loc, conf = model(x)
        loss = criterion(loc, conf, model.priors, boxes, labels).total
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def ref_step(model, opt, images, targets, bf16):
    x = list((images.float() / 255.0).unbind(0))       # its transform batches (and normalises) them itself
    with autocast(bf16):
        losses = model(x, targets)
        loss = losses["bbox_regression"] + losses["classification"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--cases", default="fp32,cl,bf16")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    reps = 2 if args.quick else 5
    torch.manual_seed(0)
    images, boxes, labels = make_batch(args.batch, torch.Generator().manual_seed(0))
    targets = [{"boxes": b[l > 0] * SIZE, "labels": l[l > 0]} for b, l in zip(boxes, labels)]
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(f"SSD300-VGG16 train step, batch {args.batch}, torch.set_num_threads({torch.get_num_threads()}), "
          f"clock: {'process CPU' if args.threads == 1 else 'wall'}; CPU avx512_bf16: {'avx512_bf16' in flags}, "
          f"amx_bf16: {'amx_bf16' in flags}; torch {torch.__version__}")

    for case in args.cases.split(","):
        memory_format = torch.contiguous_format if case == "fp32" else torch.channels_last
        bf16 = case == "bf16"
        ours = build_ssd("vgg16", NUM_CLASSES, SIZE).train().to(memory_format=memory_format)
        ref = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).train()
        ref = ref.to(memory_format=memory_format)
        criterion, opt_ours, opt_ref = MultiBoxLoss(), sgd(ours), sgd(ref)
        run_ours = lambda: ours_step(ours, opt_ours, criterion, images, boxes, labels, memory_format, bf16)  # noqa: E731
        run_ref = lambda: ref_step(ref, opt_ref, images, targets, bf16)  # noqa: E731
        first = (run_ours().item(), run_ref().item())          # warm-up step (allocations, oneDNN primitives)
        t_ours, t_ref = [], []
        for i in range(reps):
            order = ((t_ours, run_ours), (t_ref, run_ref)) if i % 2 == 0 else ((t_ref, run_ref), (t_ours, run_ours))
            for times, fn in order:
                t0 = clock()
                fn()
                times.append((clock() - t0) * 1e3)
        mo, mr = statistics.median(t_ours), statistics.median(t_ref)
        print(f"{case:5s} ours {mo:9.1f} ms  torchvision {mr:9.1f} ms  speed-up x{mr / mo:.2f}  "
              f"(median of {reps}; first losses {first[0]:.2f} / {first[1]:.2f})")
        print(f"RESULT train_step_{case} {mo:.1f} {mr:.1f} {mr / mo:.2f}", flush=True)


if __name__ == "__main__":
    main()
