"""Part 2: SSD300-VGG16 training step, ours against torchvision's ssd300_vgg16.

bf16 autocast + channels_last + cudnn.benchmark (CUDA), SGD momentum 0.9 (lr 1e-4: from random weights on
random images 1e-3 diverges within a few steps), batch 32 and 64, ours (normalise + forward + MultiBoxLoss +
backward + step, as ssd_core.train.fit) against torchvision's `ssd300_vgg16` train-mode call
`model(images, targets)` on pre-resized 300x300 float images (its transform still normalises and re-runs the
no-op resize). images/s, ms/step, peak memory, TFLOP/s and the fraction of the GPU's dense bf16 peak; forward
FLOPs measured with FlopCounterMode (1 multiply-add = 2 FLOPs) and also the issue's constant (3 x 35e9 per
image and step). Ours with torch.compile runs LAST (part "2c", part2c_compiled) in whatever time is left.
Target: ours >= 1.3x torchvision.
"""
from __future__ import annotations

import contextlib
import math
import time
import traceback
from typing import Callable, Optional

from benchmarks.gpu_check.plan import Plan
from benchmarks.gpu_check.report import Report, one_line
from benchmarks.gpu_check.runtime import free_memory, gib, sync, time_cap, time_left
from benchmarks.inputs import NUM_CLASSES, padded_targets, torchvision_targets

PAPER_FWD_FLOPS = 35e9               # the issue's figure for SSD300-VGG16 forward per image
TRAIN_FLOPS_PER_FWD = 3              # forward + backward (~2x forward) per training step
LR = 1e-4   # both models: from random init on random images, 1e-3 diverges to inf/nan within a few steps
# Dense bf16 tensor-core peaks (FLOP/s, no sparsity), first match on torch.cuda.get_device_name().
BF16_PEAKS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
              ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A10G", 70e12), ("L40S", 362e12),
              ("L4", 121e12))


def bf16_peak(device: str) -> tuple[Optional[float], str]:
    import torch
    if torch.device(device).type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name()
    for key, peak in BF16_PEAKS:
        if key in name:
            return peak, name
    return None, name


def forward_flops(model: Callable, size: int, device: str) -> float:
    """FLOPs of one forward pass on one size x size image (FlopCounterMode: a multiply-add = 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.rand(1, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def ours_forward_flops(size: int, device: str) -> float:
    """forward_flops of ours (its normalisation included); the model is dropped on return."""
    from ssd_core.model import build_ssd
    model = build_ssd("vgg16", NUM_CLASSES, size).to(device).eval()
    return forward_flops(lambda x: model(model.normalize(x * 255)), size, device)


def torchvision_forward_flops(size: int, device: str) -> float:
    """forward_flops of torchvision's ssd300_vgg16 (backbone + head, without its transform); dropped on return."""
    from torchvision.models.detection import ssd300_vgg16
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).to(device).eval()
    return forward_flops(lambda x: model.head(list(model.backbone(x).values())), size, device)


class TrainBench:
    """Builds the batch and the two models' steps for part 2 (and 2c, compiled)."""

    def __init__(self, plan: Plan, device: str):
        import torch
        self.plan, self.device = plan, device
        self.cuda = torch.device(device).type == "cuda"
        self.size = plan.p2_size
        self.peak, self.device_name = bf16_peak(device)
        self.batches: dict[int, tuple] = {}

    def autocast(self):
        import torch
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def batch(self, B: int):
        import torch
        if B not in self.batches:
            gen = torch.Generator().manual_seed(B)
            images = torch.randint(0, 256, (B, 3, self.size, self.size), dtype=torch.uint8, generator=gen)
            boxes, labels = padded_targets(B, gen)
            images, boxes, labels = images.to(self.device), boxes.to(self.device), labels.to(self.device)
            targets = torchvision_targets(boxes, labels, self.size)
            floats = [im.float() / 255.0 for im in images]       # pre-resized: torchvision's resize is a no-op
            self.batches = {B: (images, boxes, labels, targets, floats)}  # one batch size at a time
        return self.batches[B]

    def ours(self, compile_backend: Optional[str] = None):
        """(step, model): normalise + forward (bf16) + MultiBoxLoss (fp32) + backward + SGD, as fit does."""
        import torch

        from ssd_core.loss import MultiBoxLoss
        from ssd_core.model import build_ssd
        model = build_ssd("vgg16", NUM_CLASSES, self.size).to(self.device).train()
        model = model.to(memory_format=torch.channels_last)
        forward = torch.compile(model, backend=compile_backend, dynamic=False) if compile_backend else model
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
        criterion = MultiBoxLoss()

        def step(B: int):
            images, boxes, labels, _, _ = self.batch(B)
            x = model.normalize(images).contiguous(memory_format=torch.channels_last)
            with self.autocast():
                loc, conf = forward(x)
            loss = criterion(loc.float(), conf.float(), model.priors, boxes, labels).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        return step, model

    def torchvision(self):
        """(step, model): torchvision's train-mode call model(images, targets) on 300x300 floats."""
        import torch
        from torchvision.models.detection import ssd300_vgg16
        model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).to(self.device).train()
        if self.size != 300:   # the quick CPU path: torchvision's transform resizes to fixed_size
            model.transform.fixed_size = (self.size, self.size)
            model.transform.min_size, model.transform.max_size = (self.size,), self.size
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)

        def step(B: int):
            _, _, _, targets, floats = self.batch(B)
            with self.autocast():
                losses = model(floats, targets)
                loss = losses["bbox_regression"] + losses["classification"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        return step, model

    def measure(self, step: Callable, B: int, warmup: int, iters: int) -> dict:
        """Warm-up steps, then `iters` timed steps (CUDA events); peak memory since the caller's reset."""
        import torch
        self.batch(B)
        t0 = time.perf_counter()
        for _ in range(warmup):
            loss = step(B)
        sync(self.device)
        warm_s = time.perf_counter() - t0
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for _ in range(iters):
            loss = step(B)
        if self.cuda:
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end) / iters
        else:
            ms = (time.perf_counter() - t0) * 1e3 / iters
        last = float(loss)
        out = {"batch": B, "ms_per_step": ms, "img_s": B * 1e3 / ms, "warmup_steps": warmup,
               "warmup_s": warm_s, "timed_steps": iters, "last_loss": last, "loss_finite": math.isfinite(last)}
        if self.cuda:
            out["peak_mem_gib"] = gib(torch.cuda.max_memory_allocated())
            out["peak_reserved_gib"] = gib(torch.cuda.max_memory_reserved())
        return out

    def flops_fields(self, img_s: float, fwd_flops: float) -> dict:
        achieved = img_s * TRAIN_FLOPS_PER_FWD * fwd_flops
        achieved_const = img_s * TRAIN_FLOPS_PER_FWD * PAPER_FWD_FLOPS
        out = {"tflop_s": achieved / 1e12, "tflop_s_35gflop_constant": achieved_const / 1e12}
        if self.peak:
            out["peak_fraction"] = achieved / self.peak
            out["peak_fraction_35gflop_constant"] = achieved_const / self.peak
        return out

    def run_config(self, which: str, B: int, compile_backend: Optional[str] = None) -> dict:
        """A fresh model and optimizer, measured; cudnn.benchmark on for both models, off again after
        (part 5's fit runs with the process default)."""
        import torch
        free_memory()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        step, model = self.ours(compile_backend) if which == "ours" else self.torchvision()
        try:
            warmup = self.plan.p2_warmup + (2 if compile_backend else 0)
            return self.measure(step, B, warmup, self.plan.p2_iters)
        finally:
            torch.backends.cudnn.benchmark = benchmark
            del step, model
            free_memory()


def part2_train_step(report: Report, section: dict, plan: Plan, device: str, bench: TrainBench) -> None:
    S = bench.size
    fwd_ours = ours_forward_flops(S, device)       # one model at a time, each dropped before the next
    fwd_ref = torchvision_forward_flops(S, device)
    free_memory()
    section.update(image_size=S, device_name=bench.device_name, bf16_peak_flop_s=bench.peak,
                   fwd_gflops_ours=fwd_ours / 1e9, fwd_gflops_torchvision=fwd_ref / 1e9,
                   fwd_gflops_issue_constant=PAPER_FWD_FLOPS / 1e9, train_flops_per_image_factor=TRAIN_FLOPS_PER_FWD,
                   settings=("bf16 autocast + channels_last + cudnn.benchmark" if bench.cuda else
                             "CPU: fp32 (autocast is CUDA-only, as in fit) + channels_last"),
                   torchvision_input="list of pre-resized 300x300 float images in [0, 1]; its transform "
                                     "normalises and re-runs the (no-op) resize inside the timed step",
                   optimizer=f"SGD lr {LR:g} momentum 0.9 wd 5e-4 (both; lr 1e-3 diverges from random init "
                             f"on random images)", eager={})
    peak = f"{bench.peak / 1e12:.0f} TFLOP/s" if bench.peak else "unknown"
    report.log(f"[2] device {bench.device_name}; dense bf16 peak {peak}; forward at {S} px: ours "
               f"{fwd_ours / 1e9:.1f} GFLOP, torchvision {fwd_ref / 1e9:.1f} GFLOP (FlopCounterMode, 2 FLOPs per "
               f"multiply-add; the issue's constant: {PAPER_FWD_FLOPS / 1e9:.0f} GFLOP, likely multiply-adds)")
    for B in plan.p2_batches:
        ours = bench.run_config("ours", B)
        ours.update(bench.flops_fields(ours["img_s"], fwd_ours))
        ref = bench.run_config("torchvision", B)
        ref.update(bench.flops_fields(ref["img_s"], fwd_ref))
        section["eager"][f"b{B}"] = {"ours": ours, "torchvision": ref}
        report.save()
        for name, r in (("ours", ours), ("torchvision", ref)):
            mem = f", peak {r['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in r else ""
            frac = (f", {100 * r['peak_fraction']:.1f}% of bf16 peak ({100 * r['peak_fraction_35gflop_constant']:.1f}% "
                    f"with 3x35 GFLOP)") if "peak_fraction" in r else ""
            report.log(f"[2] batch {B} {name:11s} {r['ms_per_step']:8.2f} ms/step {r['img_s']:8.1f} img/s "
                       f"{r['tflop_s']:7.1f} TFLOP/s{frac}{mem}")
        report.result(f"train_step_b{B}_{device}", "2", ours["img_s"], ref["img_s"], "img/s", True, 1.3,
                      ref_label="torchvision ssd300_vgg16")
        if "peak_fraction" in ours:
            report.value(f"train_step_b{B}_ours_peak_fraction", "2", ours["peak_fraction"], "fraction",
                         f"of {bench.device_name} dense bf16 peak, measured FLOPs; "
                         f"{ours['peak_fraction_35gflop_constant']:.3f} with 3x35 GFLOP")
        if "peak_mem_gib" in ours:
            report.value(f"train_step_b{B}_peak_mem_ratio", "2", ref["peak_mem_gib"] / ours["peak_mem_gib"],
                         "x", f"torchvision {ref['peak_mem_gib']:.2f} GiB / ours {ours['peak_mem_gib']:.2f} GiB")


def part2c_compiled(report: Report, section: dict, plan: Plan, device: str, bench: TrainBench) -> None:
    """Ours with torch.compile (the model, as fit's train.compile), largest batch first, while time lasts."""
    comp = section.setdefault("compiled", {})
    comp["backend"] = plan.compile_backend
    fwd = section.get("fwd_gflops_ours", PAPER_FWD_FLOPS * 2 / 1e9) * 1e9
    for B in plan.compile_batches:
        if B not in plan.p2_batches and not plan.quick:
            continue
        left = time_left(plan)
        if left < plan.compile_min_s:
            comp[f"b{B}"] = {"skipped": f"only {left:.0f} s left"}
            report.log(f"[2c] batch {B}: skipped, only {left:.0f} s left before the deadline")
            continue
        t0 = time.perf_counter()
        try:
            with time_cap(min(plan.compile_cap_s, left - 5)):
                r = bench.run_config("ours", B, compile_backend=plan.compile_backend)
        except Exception as exc:  # noqa: BLE001 - a time cap or a compiler error: record it, stop compiling
            comp[f"b{B}"] = {"failed": one_line(exc), "seconds": time.perf_counter() - t0,
                             "traceback": traceback.format_exc()[-4000:]}
            report.failed(f"2c_compile_b{B}", exc)
            report.save()
            break
        r.update(bench.flops_fields(r["img_s"], fwd))
        r["compile_and_warmup_s"] = r["warmup_s"]
        comp[f"b{B}"] = r
        frac = f", {100 * r['peak_fraction']:.1f}% of bf16 peak" if "peak_fraction" in r else ""
        report.log(f"[2c] batch {B} ours+compile({plan.compile_backend}) {r['ms_per_step']:8.2f} ms/step "
                   f"{r['img_s']:8.1f} img/s{frac}; compile + warm-up {r['warmup_s']:.1f} s")
        eager = section.get("eager", {}).get(f"b{B}", {})
        if "torchvision" in eager:
            report.result(f"train_step_b{B}_compiled_{device}", "2", r["img_s"], eager["torchvision"]["img_s"],
                          "img/s", True, 1.3, note=f"ours with torch.compile({plan.compile_backend})",
                          ref_label="torchvision ssd300_vgg16 (eager)")
        if "ours" in eager:
            report.result(f"train_step_b{B}_compile_gain_{device}", "2", r["img_s"], eager["ours"]["img_s"],
                          "img/s", True, None, note="ours compiled vs ours eager", ref_label="ours eager")
        if "peak_fraction" in r:
            report.value(f"train_step_b{B}_compiled_peak_fraction", "2", r["peak_fraction"], "fraction",
                         f"of {bench.device_name} dense bf16 peak, measured FLOPs")
        report.save()
