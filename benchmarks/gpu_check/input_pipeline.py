"""Part 3: the input pipeline alone: JPEG decode + the paper's augmentation + collate (ssd_core VOCDataset,
SSDAugmentation, make_loader) on BCCD at 300 px with 1, 8, 16 DataLoader workers, images/s, and the ratio to
part 2's best training rate (>= 1: the loader feeds the GPU; feed_check, run again after part 2c).
"""
from __future__ import annotations

import gc
import os
import time

from benchmarks.gpu_check.data import DataSpec, Repeat
from benchmarks.gpu_check.plan import PART_NAMES, Plan
from benchmarks.gpu_check.report import Report


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
