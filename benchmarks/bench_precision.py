"""Training step at fp32 against train.amp auto (ssd_core/precision.py) on this CPU, per shipped model:
the SSD300-VGG16 of the paper, the BCCD model (experiments/configs/bccd_mobilenet_v2.yaml) and the demo
model (experiments/configs/demo_shapes.yaml), at their batch sizes.

    python -m benchmarks.bench_precision [--quick] [--threads 1] [--models vgg16,bccd,demo]

A step is what fit's Trainer does: normalise (+ channels_last), forward under the resolved autocast, the
MultiBox loss in fp32, backward, the config's optimizer. Random weights and images, 1-10 objects. The
reference is the same model at fp32 (train.amp off) in the same run, steps interleaved; figures are
medians of process CPU time with one thread. Prints the CPU's bf16 flags and what `auto` resolved to, and
ends each model with ``RESULT precision_<model> auto_ms fp32_ms ratio`` (ratio = fp32 / auto).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from ssd_core import precision  # noqa: E402
from ssd_core.build import build_model, build_optimizer  # noqa: E402
from ssd_core.config import apply_overrides, load_config  # noqa: E402
from ssd_core.inference import autocast, prepare  # noqa: E402
from ssd_core.loss import MultiBoxLoss  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
MODELS = {  # name -> (config, overrides, classes)
    "vgg16": ("ssd300_voc_vgg16.yaml", {"train.batch_size": 4, "model.pretrained": False}, 20),
    "bccd": ("bccd_mobilenet_v2.yaml", {}, 3),
    "demo": ("demo_shapes.yaml", {}, 4),
}


def batch(cfg, classes: int, gen: torch.Generator):
    B, S = cfg.train.batch_size, cfg.model.image_size
    images = torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8, generator=gen)
    n = torch.randint(1, 11, (B,), generator=gen)
    M = int(n.max())
    xy = torch.rand(B, M, 2, generator=gen) * 0.7
    boxes = torch.cat((xy, xy + torch.rand(B, M, 2, generator=gen) * 0.25 + 0.05), dim=-1)
    labels = torch.randint(1, classes + 1, (B, M), generator=gen)
    pad = torch.arange(M) >= n[:, None]
    return images, boxes.masked_fill(pad[..., None], 0.0), labels.masked_fill(pad, 0)


def stepper(cfg, classes: int, data):
    """One training step of `cfg`'s model as fit's Trainer takes it (train.compile: the forward compiled)."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg, classes + 1).train()
    if precision.resolve(cfg.train, device).channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt, criterion = build_optimizer(cfg, model), MultiBoxLoss()
    forward = torch.compile(model) if cfg.train.compile else model
    images, boxes, labels = data

    def step():
        x = prepare(model, images, cfg, device)
        with autocast(cfg, device, training=True):
            loc, conf = forward(x)
        loss = criterion(loc.float(), conf.float(), model.priors, boxes, labels).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def interleaved_medians(run: dict, reps: int, clock) -> dict[str, float]:
    """The median milliseconds of each of two steps, run alternately (A B, B A, ...) so that drift in the
    machine's load falls on both alike; keys in `run`'s order."""
    a, b = run
    times = {k: [] for k in run}
    for i in range(reps):
        for k in ((a, b) if i % 2 == 0 else (b, a)):
            t0 = clock()
            run[k]()
            times[k].append((clock() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 timed steps per model (default 5)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    reps = 2 if args.quick else 5
    flags = sorted(precision.cpu_flags())
    print(f"CPU bf16 flags: {', '.join(flags) or 'none'}; torch {torch.__version__}; "
          f"torch.set_num_threads({torch.get_num_threads()}); clock: {'process CPU' if args.threads == 1 else 'wall'}")
    for name in args.models.split(","):
        file, over, classes = MODELS[name]
        base = apply_overrides(load_config(CONFIGS / file), {**over, "train.device": "cpu"})
        fp32 = apply_overrides(base, {"train.amp": "off", "train.channels_last": False})
        auto = apply_overrides(base, {"train.amp": "auto"})
        plan = precision.resolve(auto.train, torch.device("cpu"))
        data = batch(base, classes, torch.Generator().manual_seed(0))
        run = {"auto": stepper(auto, classes, data), "fp32": stepper(fp32, classes, data)}
        for fn in run.values():
            fn()  # warm-up (oneDNN primitives, allocations)
        a, f = interleaved_medians(run, reps, clock).values()
        print(f"{name:6s} {base.model.backbone} {base.model.image_size} px, batch {base.train.batch_size}: "
              f"auto = {plan.describe()}: {a:9.1f} ms   fp32 {f:9.1f} ms   speed-up x{f / a:.2f} (median of {reps})")
        print(f"RESULT precision_{name} {a:.1f} {f:.1f} {f / a:.2f}", flush=True)


if __name__ == "__main__":
    main()
