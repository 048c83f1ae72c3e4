"""GPU check (issue 17): every GPU figure the project needs, each against its reference, in one short run.

On the lent GPU machine (one H100/H200, <= 8 minutes in all, torch.compile warm-up and the 2-minute
training included), from the repository root, with `carry: [".whl", ".data"]` and `timeout_s: 570`:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH; python3 -m benchmarks.gpu_check --device cuda --data .data/bccd --out $OUT

`.whl/` holds the wheels the device image lacks (pydantic, pydantic-core, annotated-types,
typing-inspection, typing-extensions >= 4.16 which pydantic needs, defusedxml); `.data/bccd` is a copy of
../shared/data/bccd (both git-ignored, so they travel only when named in `carry`). Nothing here imports
Ray, MLflow, Optuna or pycocotools. On this CPU machine the same code runs on tiny sizes (~40 s):

    python -m benchmarks.gpu_check --device cpu --quick            (tests/integration/test_gpu_check.py runs it)

Parts (select with --parts 1,2,3,4,5):
  1. MultiBox loss (matching + encoding + hard negative mining; forward, and forward + backward) and
     post-processing, SSD300 (8732 default boxes, 21 classes), batch 32, against torchvision's
     per-image matching + `SSD.compute_loss` and `SSD.postprocess_detections`. CUDA events, warm-up,
     interleaved repetitions, medians. Target >= 10x (the worst-case post-processing: >= 1x).
  2. SSD300-VGG16 training step, bf16 autocast + channels_last + cudnn.benchmark (CUDA), SGD momentum 0.9
     (lr 1e-4: from random weights on random images 1e-3 diverges within a few steps), batch 32 and 64,
     ours (normalise + forward + MultiBoxLoss + backward + step, as ssd_core.train.fit) against
     torchvision's `ssd300_vgg16` train-mode call `model(images, targets)` on pre-resized 300x300 float
     images (its transform still normalises and re-runs the no-op resize). images/s, ms/step, peak memory,
     TFLOP/s and the fraction of the GPU's dense bf16 peak; forward FLOPs measured with FlopCounterMode
     (1 multiply-add = 2 FLOPs) and also the issue's constant (3 x 35e9 per image and step). Ours with
     torch.compile runs LAST (part "2c") in whatever time is left. Target: ours >= 1.3x torchvision.
  3. Input pipeline alone: JPEG decode + the paper's augmentation + collate (ssd_core VOCDataset,
     SSDAugmentation, make_loader) on BCCD at 300 px with 1, 8, 16 DataLoader workers, images/s, and
     the ratio to part 2's best training rate (>= 1: the loader feeds the GPU).
  4. Packing: 1, 2, 4 concurrent training processes (experiments/configs/bccd_mobilenet_v2.yaml, batch 16,
     bf16, 3 loader workers each) on the one GPU, each capped to 1/n of its memory the way the sweep caps
     fractional-GPU trials (ssd_core/build.py `cap_gpu_memory`: set_per_process_memory_fraction),
     started together through a start-time file, each training a fixed number of seconds. Aggregate
     images/s, per-trial slowdown. Target: 4 packed trials >= 2.5x the throughput of one.
  5. Real training: ssd_core.train.fit on bccd_mobilenet_v2 from scratch, bf16, 8 loader workers,
     train.time_budget_s = --budget-s (120) on a time schedule; BCCD/val is the selection split and fit
     evaluates it once, at the end (eval.every_epochs is huge), so the selected checkpoint is the final
     one; fit then scores BCCD/test on it (data.test_sets; a fit without that gets last.pt scored here
     by evaluate_checkpoint). VOC07 mAP@0.5 on val and test. Nothing is chosen on test.

Robustness: every part runs under its own time cap (SIGALRM) inside a global deadline
(--deadline-s, 465 s on CUDA) and inside try/except: a failing part prints
`RESULT <part> FAILED: <one-line error>`, records the error and the rest still run. The JSON
($OUT/gpu_check.json, or --out DIR, default $OUT or ./gpu_check_out) is rewritten after every part, so a
killed run still leaves its results (SIGTERM: the pack workers are killed, the JSON and the summary
written, exit 143); $OUT/gpu_check.log repeats what was printed. Every RESULT line is
`RESULT <name> ours=<x> ref=<y> unit=<u> ratio=<r> target=<t> met=<yes|NO|n/a>`; ratio is always the
speed-up of ours: ours/ref for rates (images/s), ref/ours for times (ms). CUDA targets read "n/a" on a CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from benchmarks.inputs import NUM_CLASSES, padded_targets, torchvision_loss, torchvision_ssd, trained_like

T_START = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
BCCD_CONFIG = REPO / "experiments" / "configs" / "bccd_mobilenet_v2.yaml"
PAPER_FWD_FLOPS = 35e9               # the issue's figure for SSD300-VGG16 forward per image
TRAIN_FLOPS_PER_FWD = 3              # forward + backward (~2x forward) per training step
LR = 1e-4   # part 2, both models: from random init on random images, 1e-3 diverges to inf/nan in ~4 steps
# Dense bf16 tensor-core peaks (FLOP/s, no sparsity), first match on torch.cuda.get_device_name().
BF16_PEAKS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
              ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A10G", 70e12), ("L40S", 362e12),
              ("L4", 121e12))
CHILDREN: list = []                  # the pack workers running now (killed on SIGTERM)
PART_NAMES = {"1": "1_loss_postprocess", "2": "2_train_step", "3": "3_input_pipeline", "4": "4_packing",
              "5": "5_bccd_training"}


# ==================================================================================================
# Plan: the sizes of a full CUDA run and of the quick CPU run
# ==================================================================================================
@dataclasses.dataclass
class Plan:
    device: str = "cuda"
    quick: bool = False
    deadline_s: float = 465.0          # whole script, from the start of the process
    # part 1
    p1_batch: int = 32
    p1_reps: int = 20
    p1_cap_s: float = 60.0
    # part 2
    p2_size: int = 300                 # torchvision's VGG16 SSD takes >= 268 px
    p2_batches: tuple = (32, 64)
    p2_warmup: int = 5
    p2_iters: int = 20
    p2_cap_s: float = 120.0
    compile_backend: str = "inductor"
    compile_batches: tuple = (64, 32)  # largest first: the most telling figure if time runs short
    compile_min_s: float = 45.0        # do not start a compile with less time than this left
    compile_cap_s: float = 200.0
    # part 3
    p3_size: int = 300
    p3_workers: tuple = (1, 8, 16)
    p3_batch: int = 32
    p3_seconds: float = 5.0
    p3_cap_s: float = 75.0
    # part 4
    p4_procs: tuple = (1, 2, 4)
    p4_batch: int = 16
    p4_seconds: float = 15.0
    p4_warmup: int = 5
    p4_loader_workers: int = 3
    p4_threads: int = 2
    p4_image_size: Optional[int] = None   # None: the config's 320
    p4_cap_s: float = 160.0
    p4_ready_timeout_s: float = 120.0
    # part 5
    p5_budget_s: float = 120.0
    p5_workers: int = 8
    p5_batch: Optional[int] = None        # None: the config's 8
    p5_image_size: Optional[int] = None
    p5_extra_s: float = 90.0             # setup + final val evaluation + test evaluation
    synth_images: int = 300

    @classmethod
    def make(cls, device: str, quick: bool) -> "Plan":
        if not quick:
            return cls(device=device)
        return cls(device=device, quick=True, deadline_s=300.0,
                   p1_batch=2, p1_reps=3, p1_cap_s=30.0,
                   # torchvision's VGG16 SSD needs >= 268 px, where a CPU step costs ~1 s per image: batch 1
                   p2_size=268, p2_batches=(1,), p2_warmup=0, p2_iters=1, p2_cap_s=60.0,
                   compile_backend="aot_eager" if device == "cpu" else "inductor", compile_batches=(1,),
                   compile_min_s=5.0, compile_cap_s=60.0,
                   p3_size=128, p3_workers=(1, 2), p3_batch=2, p3_seconds=0.5, p3_cap_s=30.0,
                   p4_procs=(1, 2), p4_batch=2, p4_seconds=1.0, p4_warmup=1, p4_loader_workers=1, p4_threads=1,
                   p4_image_size=96, p4_cap_s=60.0, p4_ready_timeout_s=60.0,
                   p5_budget_s=3.0, p5_workers=1, p5_batch=2, p5_image_size=96, p5_extra_s=40.0,
                   synth_images=40)


# ==================================================================================================
# Report: RESULT lines, a log file and the JSON, rewritten after every part
# ==================================================================================================
class Report:
    def __init__(self, out: Path, meta: dict):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.json_path = out / "gpu_check.json"
        self.log_path = out / "gpu_check.log"
        self.log_path.write_text("")
        self.data: dict[str, Any] = {"meta": meta, "parts": {}, "results": []}

    def log(self, msg: str = "") -> None:
        print(msg, flush=True)
        with open(self.log_path, "a") as f:
            f.write(msg + "\n")

    def result(self, name: str, part: str, ours: float, ref: float, unit: str, higher_is_better: bool,
               target: Optional[float], cuda_target: bool = True, note: str = "", ours_label: str = "ours",
               ref_label: str = "reference") -> dict:
        """One comparison: ratio = speed-up of ours (ours/ref for rates, ref/ours for times)."""
        ratio = (ours / ref if higher_is_better else ref / ours) if ours > 0 and ref > 0 else float("nan")
        applies = target is not None and (not cuda_target or self.data["meta"]["device"] == "cuda")
        met = (ratio >= target) if applies else None
        entry = {"name": name, "part": part, "ours": ours, "ref": ref, "unit": unit,
                 "higher_is_better": higher_is_better, "ratio": ratio, "target": target,
                 "target_applies": applies, "met": met, "ours_label": ours_label, "ref_label": ref_label,
                 "note": note}
        self.data["results"].append(entry)
        tgt = f">={target:g}" if target is not None else "report"
        flag = "n/a" if met is None else ("yes" if met else "NO")
        self.log(f"RESULT {name} ours={_fmt(ours)} ref={_fmt(ref)} unit={unit} ratio={ratio:.2f} "
                 f"target={tgt} met={flag}" + (f"  # {note}" if note else ""))
        self.save()
        return entry

    def value(self, name: str, part: str, value: float, unit: str, note: str = "") -> dict:
        """A figure without a reference (e.g. mAP, TFLOP/s)."""
        entry = {"name": name, "part": part, "value": value, "unit": unit, "note": note}
        self.data["results"].append(entry)
        self.log(f"RESULT {name} value={_fmt(value)} unit={unit}" + (f"  # {note}" if note else ""))
        self.save()
        return entry

    def failed(self, part_key: str, exc: BaseException) -> None:
        msg = one_line(exc)
        self.data["results"].append({"name": part_key, "failed": True, "error": msg})
        self.log(f"RESULT {part_key} FAILED: {msg}")

    def save(self) -> None:
        self.data["meta"]["elapsed_s"] = round(time.perf_counter() - T_START, 2)
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_json_default, allow_nan=True))
        os.replace(tmp, self.json_path)


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return str(x)
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


class PartTimeout(Exception):
    """A part ran past its time cap."""


@contextlib.contextmanager
def time_cap(seconds: float):
    """Raise PartTimeout in the main thread after `seconds`, and again every 10 s should one be swallowed
    (an exception raised inside a __del__ is only printed). SIGALRM; a no-op where it is missing."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise PartTimeout(f"time cap of {seconds:.0f} s reached")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds), 10.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def time_left(plan: Plan) -> float:
    return plan.deadline_s - (time.perf_counter() - T_START)


def sync(device) -> None:
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def free_memory() -> None:
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gib(n: float) -> float:
    return n / 2**30


# ==================================================================================================
# Data: BCCD when present, else the synthetic shapes set (ssd_core.synth)
# ==================================================================================================
@dataclasses.dataclass
class DataSpec:
    root: Path
    subdir: str                 # BCCD or SHAPES
    class_names: list
    source: str                 # "BCCD" or "synthetic"

    def split(self, name: str) -> str:
        return f"{self.subdir}/{name}"

    def overrides(self) -> list[str]:
        """Config overrides that point bccd_mobilenet_v2.yaml at this data (val = the selection split)."""
        out = [f"data.root={self.root}", f"data.train_sets=[{self.split('train')}]",
               f"data.val_sets=[{self.split('val')}]"]
        if "test_sets" in CONFIG_DATA_KEYS:   # the reported split, scored by fit itself
            out.append(f"data.test_sets=[{self.split('test')}]")
        if self.source != "BCCD":
            out.append(f"data.class_names=[{','.join(self.class_names)}]")
        return out


def default_data_arg() -> str:
    shared = REPO.parent / "shared" / "data" / "bccd"
    return str(shared) if shared.is_dir() else ".data/bccd"


def resolve_data(arg: str, scratch: Path, plan: Plan, report: Optional[Report]) -> DataSpec:
    root = Path(arg)
    if not root.is_absolute():
        root = (Path.cwd() / root) if (Path.cwd() / root).exists() else (REPO / root)
    if (root / "BCCD" / "ImageSets" / "Main" / "train.txt").is_file():
        import yaml
        names = yaml.safe_load(BCCD_CONFIG.read_text())["data"]["class_names"]
        return DataSpec(root.resolve(), "BCCD", list(names), "BCCD")
    from ssd_core.synth import SUBDIR, SYNTH_CLASSES, ensure_synthetic
    synth = scratch / "synth"
    if report is not None:
        report.log(f"WARNING: no BCCD at {root} (expected BCCD/ImageSets/Main/train.txt): using the synthetic "
                   f"shapes set ({plan.synth_images} images) in {synth}; the part 5 mAP is NOT a BCCD figure")
    ensure_synthetic(synth, images=plan.synth_images, seed=0, image_size=160)
    return DataSpec(synth.resolve(), SUBDIR, list(SYNTH_CLASSES), "synthetic")


def _config_data_keys() -> set:
    import yaml
    return set((yaml.safe_load(BCCD_CONFIG.read_text()) or {}).get("data") or {})


CONFIG_DATA_KEYS = _config_data_keys() if BCCD_CONFIG.is_file() else set()


class Repeat:
    """A dataset seen `times` times over (long DataLoader runs without epoch restarts)."""

    def __init__(self, dataset, min_len: int = 50_000):
        self.dataset = dataset
        self.times = max(1, math.ceil(min_len / max(1, len(dataset))))

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, i: int):
        return self.dataset[i % len(self.dataset)]


def model_from_config(cfg, num_classes: int):
    """The network ssd_core.train.fit builds for cfg: its model section, default boxes fitted first when
    model.prior_scales is auto (ssd_core.prior_fit.resolve_priors)."""
    from ssd_core.model import build_ssd
    from ssd_core.prior_fit import resolve_priors
    return build_ssd(resolve_priors(cfg).model, num_classes)


# ==================================================================================================
# Part 1: MultiBox loss and post-processing against torchvision's SSD code path
# ==================================================================================================
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
    targets_px = [{"boxes": b[lb > 0] * S, "labels": lb[lb > 0]} for b, lb in zip(boxes, labels)]
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


# ==================================================================================================
# Part 2: SSD300-VGG16 training step, ours vs torchvision's ssd300_vgg16
# ==================================================================================================
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
            targets = [{"boxes": b[lb > 0] * self.size, "labels": lb[lb > 0]} for b, lb in zip(boxes, labels)]
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
    from torchvision.models.detection import ssd300_vgg16

    from ssd_core.model import build_ssd

    S = bench.size
    ours_model = build_ssd("vgg16", NUM_CLASSES, S).to(device).eval()
    fwd_ours = forward_flops(lambda x: ours_model(ours_model.normalize(x * 255)), S, device)
    del ours_model
    ref_model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).to(device).eval()
    fwd_ref = forward_flops(lambda x: ref_model.head(list(ref_model.backbone(x).values())), S, device)
    del ref_model
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


# ==================================================================================================
# Part 3: the input pipeline alone
# ==================================================================================================
def loader_rate(dataset, batch: int, workers: int, seconds: float, seed: int = 0) -> dict:
    """images/s of make_loader over `dataset` after 2 x workers warm-up batches (queue at steady state)."""
    from ssd_core.data import make_loader
    loader = make_loader(Repeat(dataset), batch_size=batch, shuffle=True, num_workers=workers, seed=seed,
                         drop_last=True)
    it = iter(loader)
    try:
        t_start = time.perf_counter()
        warm = max(2, 2 * workers)
        for _ in range(warm):
            next(it)
        startup_s = time.perf_counter() - t_start
        t0, n, batches = time.perf_counter(), 0, 0
        while time.perf_counter() - t0 < seconds:
            b = next(it)
            n += b.images.shape[0]
            batches += 1
        el = time.perf_counter() - t0
        return {"workers": workers, "img_s": n / el, "images": n, "batches": batches, "seconds": el,
                "warmup_batches": warm, "startup_s": startup_s}
    finally:
        del it, loader
        gc.collect()


def part3_input_pipeline(report: Report, section: dict, plan: Plan, data: DataSpec) -> None:
    from ssd_core.augment import build_transform
    from ssd_core.data import VOCDataset
    S = plan.p3_size
    dataset = VOCDataset(data.root, [data.split("train")], class_names=data.class_names,
                         transform=build_transform(None, S, train=True))   # None: the paper's augmentation
    section.update(data=data.source, images=len(dataset), size=S, batch=plan.p3_batch, cpu_count=os.cpu_count(),
                   pipeline="JPEG decode + SSDAugmentation (paper defaults: photometric, zoom out, sample "
                            "patch, flip, resize) + collate, ssd_core.data.make_loader", rates={})
    report.log(f"[3] {data.source} {data.split('train')}: {len(dataset)} images, {S} px, batch {plan.p3_batch}, "
               f"{os.cpu_count()} CPUs")
    for w in plan.p3_workers:
        r = loader_rate(dataset, plan.p3_batch, w, plan.p3_seconds)
        section["rates"][f"w{w}"] = r
        report.log(f"[3] {w:2d} workers: {r['img_s']:8.1f} img/s ({r['images']} images in {r['seconds']:.1f} s; "
                   f"start-up {r['startup_s']:.1f} s)")
        report.value(f"input_pipeline_w{w}", "3", r["img_s"], "img/s", f"{S} px, {data.source}")
        report.save()
    feed_check(report, section)


def feed_check(report: Report, section3: dict) -> None:
    """Does the best loader rate feed part 2's best training rate of ours? ratio >= 1: yes."""
    rates = section3.get("rates", {})
    s2 = report.data["parts"].get(PART_NAMES["2"], {})
    train = {}
    for key, pair in s2.get("eager", {}).items():
        if "ours" in pair:
            train[f"ours eager {key}"] = pair["ours"]["img_s"]
    for key, r in s2.get("compiled", {}).items():
        if isinstance(r, dict) and "img_s" in r:
            train[f"ours compiled {key}"] = r["img_s"]
    if not rates or not train:
        return
    best_w = max(rates, key=lambda k: rates[k]["img_s"])
    best_train = max(train, key=train.get)
    loader_img_s, train_img_s = rates[best_w]["img_s"], train[best_train]
    ratio = loader_img_s / train_img_s
    section3["feeds"] = {"loader": best_w, "loader_img_s": loader_img_s, "train": best_train,
                         "train_img_s": train_img_s, "ratio": ratio, "feeds": ratio >= 1.0}
    verdict = "feeds it" if ratio >= 1 else f"falls short by {train_img_s / loader_img_s:.2f}x"
    report.log(f"[3] loader {best_w} {loader_img_s:.1f} img/s vs training ({best_train}) {train_img_s:.1f} img/s: "
               f"ratio {ratio:.2f}, the input pipeline {verdict}")
    report.result(f"input_feeds_train_{best_w}", "3", loader_img_s, train_img_s, "img/s", True, 1.0,
                  note=f"loader {best_w} vs training {best_train}; < 1: the GPU waits for data",
                  ours_label="input pipeline", ref_label="training step")


# ==================================================================================================
# Part 4: packing trials on one GPU (parent side; the worker is pack_worker below)
# ==================================================================================================
def part4_packing(report: Report, section: dict, plan: Plan, device: str, data: DataSpec, scratch: Path) -> None:
    base = report.out / "pack"
    shutil.rmtree(base, ignore_errors=True)
    section.update(config=str(BCCD_CONFIG.relative_to(REPO)), data=data.source, batch=plan.p4_batch,
                   trial_seconds=plan.p4_seconds, loader_workers_per_trial=plan.p4_loader_workers,
                   threads_per_trial=plan.p4_threads, image_size=plan.p4_image_size or "config",
                   memory_cap="torch.cuda.set_per_process_memory_fraction(1/n) when n > 1, as "
                              "ssd_core.build.cap_gpu_memory does for fractional GPUs", rounds={})
    single = None
    for n in plan.p4_procs:
        rdir = base / f"n{n}"
        rdir.mkdir(parents=True)
        spec = {"device": device, "n": n, "fraction": 1.0 / n, "batch": plan.p4_batch, "seconds": plan.p4_seconds,
                "warmup": plan.p4_warmup, "loader_workers": plan.p4_loader_workers, "threads": plan.p4_threads,
                "image_size": plan.p4_image_size, "amp": "bf16" if device == "cuda" else "off",
                "overrides": data.overrides(), "root": str(data.root), "dir": str(rdir),
                "ready_timeout_s": plan.p4_ready_timeout_s + 30}
        (rdir / "spec.json").write_text(json.dumps(spec))
        results = run_pack_round(rdir, n, plan)
        per = [r["img_s"] for r in results]
        agg = sum(per)
        single = agg if n == 1 else single
        rnd = {"n": n, "aggregate_img_s": agg, "per_trial_img_s": per, "trials": results}
        if single:
            rnd["throughput_vs_one"] = agg / single
            rnd["per_trial_slowdown"] = single / statistics.mean(per)
        section["rounds"][f"n{n}"] = rnd
        report.save()
        mem = ", ".join(f"{r['peak_mem_gib']:.2f}" for r in results if r.get("peak_mem_gib") is not None)
        report.log(f"[4] {n} packed trial(s): aggregate {agg:.1f} img/s, per trial "
                   f"{', '.join(f'{p:.1f}' for p in per)} img/s" + (f", peak GiB {mem}" if mem else "")
                   + (f"; x{agg / single:.2f} the throughput of one, each trial {single / statistics.mean(per):.2f}x "
                      f"slower" if single and n > 1 else ""))
        if n > 1 and single:
            report.result(f"packing_{n}_trials_{device}", "4", agg, single, "img/s", True, 2.5 if n == 4 else None,
                          note=f"aggregate of {n} packed trials vs one trial alone; per-trial slowdown "
                               f"{single / statistics.mean(per):.2f}x", ours_label=f"{n} packed", ref_label="1 trial")


def run_pack_round(rdir: Path, n: int, plan: Plan) -> list[dict]:
    """Start n workers, wait until all are ready, write the start time, collect their results."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(plan.p4_threads)
    env["PYTHONUNBUFFERED"] = "1"
    procs, logs = [], []
    try:
        for rank in range(n):
            log = open(rdir / f"worker{rank}.log", "w")
            logs.append(log)
            cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--worker", "pack", "--worker-dir", str(rdir),
                   "--rank", str(rank)]
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
            CHILDREN.append(procs[-1])
        deadline = time.perf_counter() + plan.p4_ready_timeout_s
        while not all((rdir / f"ready{r}").exists() for r in range(n)):
            for r, p in enumerate(procs):
                if p.poll() is not None:
                    raise RuntimeError(f"pack worker {r}/{n} exited with {p.returncode} before the start: "
                                       f"{_tail(rdir / f'worker{r}.log')}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"pack workers not ready after {plan.p4_ready_timeout_s:.0f} s")
            time.sleep(0.05)
        start_at = time.time() + 0.5
        tmp = rdir / "start.tmp"
        tmp.write_text(json.dumps({"start": start_at}))
        os.replace(tmp, rdir / "start")
        for r, p in enumerate(procs):
            p.wait(timeout=max(5.0, start_at - time.time()) + plan.p4_seconds + 60)
            if p.returncode != 0:
                raise RuntimeError(f"pack worker {r}/{n} exited with {p.returncode}: {_tail(rdir / f'worker{r}.log')}")
        return [json.loads((rdir / f"result{r}.json").read_text()) for r in range(n)]
    finally:
        for p in procs:                      # only the workers this round started
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            CHILDREN.remove(p)
        for log in logs:
            log.close()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text().strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def pack_worker(worker_dir: Path, rank: int) -> int:
    """One packed trial: set up, warm up, signal ready, wait for the start time, train `seconds`, report."""
    spec = json.loads((worker_dir / "spec.json").read_text())
    import torch

    from ssd_core.augment import build_transform
    from ssd_core.config import load_config
    from ssd_core.data import VOCDataset, make_loader
    from ssd_core.loss import MultiBoxLoss

    torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    overrides = list(spec["overrides"]) + [f"train.batch_size={spec['batch']}", f"train.device={spec['device']}"]
    if spec["amp"] == "bf16":              # (YAML reads a bare `off` as false: leave the config's value)
        overrides.append("train.amp=bf16")
    if spec["image_size"]:
        overrides.append(f"model.image_size={spec['image_size']}")
    cfg = load_config(BCCD_CONFIG, overrides)
    names = list(cfg.data.class_names)
    dataset = VOCDataset(spec["root"], cfg.data.train_sets, class_names=names,
                         transform=build_transform(cfg.augment, cfg.model.image_size, train=True))
    loader = make_loader(Repeat(dataset), batch_size=cfg.train.batch_size, shuffle=True,
                         num_workers=int(spec["loader_workers"]), seed=rank, drop_last=True)
    it = iter(loader)                       # fork the loader workers before CUDA is initialised
    fraction = float(spec["fraction"])
    if 0 < fraction < 1 and device.type == "cuda":   # ssd_core.build.cap_gpu_memory
        torch.cuda.set_per_process_memory_fraction(fraction)
    torch.manual_seed(rank)
    model = model_from_config(cfg, len(names) + 1).to(device).train()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    criterion = MultiBoxLoss()
    amp = device.type == "cuda" and cfg.train.amp == "bf16"

    def step() -> float:                      # as ssd_core.train.fit: one host sync per step (loss check)
        b = next(it)
        x = model.normalize(b.images.to(device, non_blocking=True))
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loc, conf = model(x)
        loss = criterion(loc.float(), conf.float(), model.priors, b.boxes.to(device, non_blocking=True),
                         b.labels.to(device, non_blocking=True)).total
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return value

    for _ in range(int(spec["warmup"])):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    (worker_dir / f"ready{rank}").write_text("ready")
    start_file, give_up = worker_dir / "start", time.time() + float(spec["ready_timeout_s"])
    while not start_file.exists():
        if time.time() > give_up:
            print(f"pack worker {rank}: no start signal", flush=True)
            return 3
        time.sleep(0.01)
    start_at = json.loads(start_file.read_text())["start"]
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.perf_counter()
    images = iters = 0
    last = float("nan")
    while time.perf_counter() - t0 < float(spec["seconds"]):
        last = step()
        images += cfg.train.batch_size
        iters += 1
    sync(device)
    el = time.perf_counter() - t0
    result = {"rank": rank, "n": spec["n"], "img_s": images / el, "images": images, "iters": iters, "seconds": el,
              "fraction": fraction, "last_loss": last, "start_skew_s": time.time() - el - start_at,
              "peak_mem_gib": gib(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None}
    tmp = worker_dir / f"result{rank}.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, worker_dir / f"result{rank}.json")
    print(json.dumps(result), flush=True)
    del it, loader
    return 0


# ==================================================================================================
# Part 5: a real training on BCCD through ssd_core.train.fit
# ==================================================================================================
def part5_bccd_training(report: Report, section: dict, plan: Plan, device: str, data: DataSpec,
                        scratch: Path, budget_s: float) -> None:
    from ssd_core.config import load_config
    from ssd_core.train import fit

    run_dir = scratch / "bccd_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = data.overrides() + [
        f"data.num_workers={plan.p5_workers}", f"train.device={device}",
        f"train.time_budget_s={budget_s}", "train.schedule.unit=time", "train.max_iters=null",
        "train.epochs=1000000", "eval.every_epochs=1000000", "eval.batch_size=32",
        f"output.dir={scratch}", f"train.log_every={20 if plan.quick else 200}"]
    if device == "cuda":
        overrides.append("train.amp=bf16")   # autocast is CUDA-only in fit; the config's value stays on a CPU
    if plan.p5_batch:
        overrides.append(f"train.batch_size={plan.p5_batch}")
    if plan.p5_image_size:
        overrides.append(f"model.image_size={plan.p5_image_size}")
    cfg = load_config(BCCD_CONFIG, overrides)
    section.update(config=str(BCCD_CONFIG.relative_to(REPO)), data=data.source, budget_s=budget_s,
                   overrides=overrides, batch=cfg.train.batch_size, image_size=cfg.model.image_size,
                   selection_split=data.split("val"), test_split=data.split("test"),
                   protocol="eval.every_epochs is huge: fit evaluates val (the selection split) once, at the "
                            "end, so the selected checkpoint is the final one; test is scored on it, once")
    report.log(f"[5] fit {cfg.name} on {data.source} ({data.split('train')}), {budget_s:.0f} s budget, batch "
               f"{cfg.train.batch_size}, {cfg.model.image_size} px, amp {cfg.train.amp} ({device}), "
               f"{plan.p5_workers} loader workers")
    t0 = time.perf_counter()
    result = fit(cfg, run_dir=run_dir)
    fit_s = time.perf_counter() - t0
    final = dict(result.final_metrics)
    test_source = "fit (data.test_sets at the selected = final checkpoint)"
    test_s = 0.0
    if "test/mAP50" not in final:   # a fit that does not score data.test_sets itself: score last.pt here
        from ssd_core.inference import evaluate_checkpoint
        t1 = time.perf_counter()
        final.update(evaluate_checkpoint(cfg, result.last_checkpoint, split="test"))
        test_s = time.perf_counter() - t1
        test_source = "evaluate_checkpoint(last.pt, split='test')"
    images = result.iterations * cfg.train.batch_size
    train_img_s = [h["perf/train_img_s"] for h in result.metrics_history if "perf/train_img_s" in h]

    def per_class(prefix: str) -> dict:
        return {k.rsplit("/", 1)[1]: v for k, v in final.items() if k.startswith(prefix + "/AP50/")}

    val_map, test_map = final.get("val/mAP50"), final.get("test/mAP50")
    if val_map is None or test_map is None:
        raise RuntimeError(f"fit reported no val/mAP50 or test/mAP50: {sorted(final)}")
    section.update(fit_wall_s=fit_s, test_eval_s=test_s, test_scored_by=test_source, iterations=result.iterations,
                   epochs=result.epochs, images_seen=images, stopped_by_budget=result.stopped_by_budget,
                   train_img_s_mean_over_epochs=statistics.mean(train_img_s) if train_img_s else None,
                   images_per_wall_s=images / fit_s, final_train_loss=final.get("train/loss"),
                   val_mAP50=val_map, val_mAP50_area=final.get("val/mAP50_area"), val_AP50=per_class("val"),
                   test_mAP50=test_map, test_mAP50_area=final.get("test/mAP50_area"), test_AP50=per_class("test"),
                   test_last_mAP50=final.get("test_last/mAP50"), best_epoch=result.best_epoch)
    for name in ("metrics.jsonl", "config.yaml"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, report.out / f"part5_{name}")
    report.log(f"[5] {result.iterations} iterations, {result.epochs} epochs in {fit_s:.1f} s "
               f"({images / fit_s:.1f} img/s over the whole fit), final train loss "
               f"{final.get('train/loss', float('nan')):.3f}")
    report.log(f"[5] val ({data.split('val')}) mAP@0.5 {val_map:.4f}  {section['val_AP50']}")
    report.log(f"[5] test ({data.split('test')}) mAP@0.5 {test_map:.4f}  {section['test_AP50']}  "
               f"(scored by {test_source})")
    report.value(f"bccd_val_mAP50_{device}", "5", val_map, "VOC07 mAP@0.5",
                 f"{data.source} {data.split('val')}, after {budget_s:.0f} s")
    report.value(f"bccd_test_mAP50_{device}", "5", test_map, "VOC07 mAP@0.5",
                 f"{data.source} {data.split('test')}, final checkpoint after {budget_s:.0f} s, "
                 f"{result.iterations} iterations")
    report.value(f"bccd_train_img_s_{device}", "5", images / fit_s, "img/s", "images seen / fit wall time")


# ==================================================================================================
# Driver
# ==================================================================================================
def run_part(report: Report, key: str, cap_s: float, fn: Callable[[dict], None]) -> None:
    section = report.data["parts"].setdefault(key, {})
    section["status"] = "running"
    section["started_at_s"] = round(time.perf_counter() - T_START, 2)
    report.log(f"==== part {key} (cap {cap_s:.0f} s, {time.perf_counter() - T_START:.0f} s elapsed)")
    report.save()
    t0 = time.perf_counter()
    try:
        if cap_s < 1:
            raise PartTimeout("no time left before the deadline")
        with time_cap(cap_s):
            fn(section)
        section["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - one part's failure must not stop the others
        section["status"] = "failed"
        section["error"] = one_line(exc)
        section["traceback"] = traceback.format_exc()[-4000:]
        report.failed(key, exc)
    finally:
        section["seconds"] = time.perf_counter() - t0
        report.save()
        with contextlib.suppress(Exception):
            free_memory()


def metadata(args, plan: Plan) -> dict:
    import torch
    import torchvision
    meta = {"command": " ".join([Path(sys.executable).name, "-m", "benchmarks.gpu_check", *sys.argv[1:]]),
            "argv": sys.argv, "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": args.device, "quick": args.quick, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "host": platform.node(), "cpu_count": os.cpu_count(), "plan": dataclasses.asdict(plan)}
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(device_name=torch.cuda.get_device_name(), gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=gib(props.total_memory), capability=f"{props.major}.{props.minor}")
    else:
        meta["device_name"] = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        meta["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True, timeout=5).stdout.strip() or None
    return meta


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU smoke run, ~40 s)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out",
                    help="output folder for gpu_check.json and gpu_check.log (default $OUT or ./gpu_check_out)")
    ap.add_argument("--data", default=None, help="BCCD root, the folder holding BCCD/ (default: ../shared/data/bccd "
                                                  "if it exists, else .data/bccd; synthetic shapes if absent)")
    ap.add_argument("--parts", default="1,2,3,4,5", help="comma-separated parts to run (2 includes 2c, compiled)")
    ap.add_argument("--budget-s", type=float, default=None, help="part 5 training budget (default 120; quick 3)")
    ap.add_argument("--deadline-s", type=float, default=None, help="whole-script deadline (default 465; quick 300)")
    ap.add_argument("--no-compile", action="store_true", help="skip part 2c (torch.compile)")
    ap.add_argument("--worker", choices=("pack",), help=argparse.SUPPRESS)
    ap.add_argument("--worker-dir", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    global T_START
    T_START = time.perf_counter()          # the deadline counts from here (also when called in-process)
    args = parse_args(argv)
    with contextlib.suppress(ImportError):     # repaired annotations: `ssdlab data check` reports those
        from ssd_core.data import DataWarning
        warnings.simplefilter("ignore", DataWarning)
    if args.worker == "pack":
        return pack_worker(Path(args.worker_dir), args.rank)
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    plan = Plan.make(args.device, args.quick)
    if plan.quick and args.device == "cpu":
        torch.set_num_threads(1)   # the smoke run: one thread stays fast when other work shares the cores
    if args.budget_s is not None:
        plan.p5_budget_s = args.budget_s
    if args.deadline_s is not None:
        plan.deadline_s = args.deadline_s
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PART_NAMES]
    if bad:
        print(f"gpu_check: --parts: unknown part(s) {bad}; expected some of 1,2,3,4,5", file=sys.stderr)
        return 2
    out = Path(args.out)
    report = Report(out, metadata(args, plan))
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, lambda signum, frame: on_sigterm(report))
    m = report.data["meta"]
    report.log(f"gpu_check: {m['command']}")
    report.log(f"  {m['date_utc']}  device {m['device_name']}  torch {m['torch']}  torchvision {m['torchvision']}  "
               f"cuda {m['cuda']}  python {m['python']}  {m['cpu_count']} CPUs  out {out}")
    if args.device == "cuda":
        report.log(f"  torch.cuda.get_device_name(): {torch.cuda.get_device_name()}  "
                   f"({m['gpu_memory_gib']:.1f} GiB, capability {m['capability']}, {m['gpu_count']} GPU(s))")
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        data = None
        if any(p in parts for p in ("3", "4", "5")):
            data = resolve_data(args.data or default_data_arg(), scratch, plan, report)
            m["data"] = {"root": str(data.root), "source": data.source, "subdir": data.subdir,
                         "classes": data.class_names}
            report.log(f"  data: {data.source} at {data.root}")
        report.save()
        device = args.device
        # Minimal time the later parts need, so an early part's cap never eats them.
        reserve = {"1": 0.0, "2": 0.0, "3": 15.0, "4": 45.0, "5": min(plan.p5_budget_s, 60.0) + 30.0}
        if plan.quick:
            reserve = dict.fromkeys(reserve, 0.0)

        def cap(part: str, static: float) -> float:
            later = sum(reserve[p] for p in parts if p > part)
            return max(0.0, min(static, time_left(plan) - later))

        bench = TrainBench(plan, device) if "2" in parts else None
        for part in parts:
            key = PART_NAMES[part]
            if part == "1":
                run_part(report, key, cap("1", plan.p1_cap_s),
                         lambda s: part1_loss_postprocess(report, s, plan, device))
            elif part == "2":
                run_part(report, key, cap("2", plan.p2_cap_s),
                         lambda s: part2_train_step(report, s, plan, device, bench))
            elif part == "3":
                run_part(report, key, cap("3", plan.p3_cap_s), lambda s: part3_input_pipeline(report, s, plan, data))
            elif part == "4":
                run_part(report, key, cap("4", plan.p4_cap_s),
                         lambda s: part4_packing(report, s, plan, device, data, scratch))
            elif part == "5":
                budget = plan.p5_budget_s
                if not plan.quick:   # shrink the training (not below 30 s) rather than overrun the deadline
                    budget = max(30.0, min(budget, time_left(plan) - plan.p5_extra_s))
                run_part(report, key, cap("5", budget + plan.p5_extra_s),
                         lambda s: part5_bccd_training(report, s, plan, device, data, scratch, budget))
        if "2" in parts and not args.no_compile:
            section = report.data["parts"][PART_NAMES["2"]]
            report.log(f"==== part 2c: ours with torch.compile({plan.compile_backend}), "
                       f"{time_left(plan):.0f} s left before the deadline")
            t0 = time.perf_counter()
            try:
                part2c_compiled(report, section, plan, device, bench)
            except Exception as exc:  # noqa: BLE001
                section.setdefault("compiled", {})["error"] = one_line(exc)
                section["compiled"]["traceback"] = traceback.format_exc()[-4000:]
                report.failed("2c_compile", exc)
            section.setdefault("compiled", {})["seconds"] = time.perf_counter() - t0
            compiled_rates = [r for r in section.get("compiled", {}).values() if isinstance(r, dict) and "img_s" in r]
            if compiled_rates and report.data["parts"].get(PART_NAMES["3"], {}).get("rates"):
                feed_check(report, report.data["parts"][PART_NAMES["3"]])   # again, with the compiled rates
            report.save()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        summary(report)
    return 0


def on_sigterm(report: Report) -> None:
    """Killed (e.g. the command's time limit): stop the pack workers, save what there is, leave now."""
    for p in list(CHILDREN):
        with contextlib.suppress(Exception):
            p.kill()
    with contextlib.suppress(Exception):
        for section in report.data["parts"].values():
            if section.get("status") == "running":
                section["status"] = "killed"
                section["seconds"] = time.perf_counter() - T_START - section.get("started_at_s", 0.0)
                section["error"] = "SIGTERM: the run was stopped during this part"
        report.log("gpu_check: SIGTERM, saving and exiting")
        summary(report)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(143)


def summary(report: Report) -> None:
    report.log("==== summary")
    for key, s in report.data["parts"].items():
        report.log(f"  {key:20s} {s.get('status', '?'):7s} {s.get('seconds', 0):6.1f} s"
                   + (f"  {s['error']}" if s.get("error") else ""))
    for r in report.data["results"]:
        if r.get("failed"):
            continue
        if "ratio" in r:
            met = "n/a" if r["met"] is None else ("met" if r["met"] else "NOT MET")
            tgt = f">={r['target']:g}" if r["target"] is not None else "report"
            report.log(f"  {r['name']:40s} x{r['ratio']:.2f}  target {tgt:7s} {met}")
        else:
            report.log(f"  {r['name']:40s} {_fmt(r['value'])} {r['unit']}")
    report.data["meta"]["finished"] = True
    report.save()
    report.log(f"wrote {report.json_path} ({time.perf_counter() - T_START:.1f} s in all)")


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as exc:   # SIGTERM (the JSON is saved by then) or an argparse error
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written: leave without waiting for stray pools (compile workers, loader workers)
    # that an interrupted part may have left behind.
    os._exit(code)
