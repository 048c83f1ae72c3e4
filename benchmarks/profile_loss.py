"""Where the time of ssd_core's MultiBox loss goes on a GPU (forward + backward, SSD300, batch 32):
torch.profiler's kernel table and the kernel count, to explain benchmarks/gpu_check/ part 1.

    python -m benchmarks.profile_loss [--device cuda] [--batch 32]
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.inputs import NUM_CLASSES, padded_targets
from ssd_core.loss import MultiBoxLoss
from ssd_core.model import build_ssd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    dev = args.device
    gen = torch.Generator().manual_seed(0)
    priors = build_ssd("vgg16", NUM_CLASSES, 300).priors.to(dev)
    boxes, labels = (t.to(dev) for t in padded_targets(args.batch, gen))
    loc = torch.randn(args.batch, len(priors), 4, generator=gen).to(dev).requires_grad_()
    conf = torch.randn(args.batch, len(priors), NUM_CLASSES, generator=gen).to(dev).requires_grad_()
    loss = MultiBoxLoss()

    def step():
        parts = loss(loc, conf, priors, boxes, labels)
        parts.total.backward()

    for _ in range(5):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(10):
            step()
        if dev == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if dev == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
    events = [e for e in prof.events() if dev == "cuda" and e.device_type == torch.autograd.DeviceType.CUDA]
    if events:
        gpu_us = sum(e.device_time for e in events) / 10
        print(f"RESULT loss_profile kernels_per_step={len(events) / 10:.0f} gpu_busy_ms_per_step={gpu_us / 1000:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
