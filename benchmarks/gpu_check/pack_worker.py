"""Part 4, the worker side: one packed trial, a child process started by packing.run_pack_round as
`python -m benchmarks.gpu_check --worker pack --worker-dir DIR --rank R`. It reads DIR/spec.json, sets up,
warms up, writes DIR/ready<R>, waits for the start time in DIR/start, trains the spec's seconds and writes
DIR/result<R>.json.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from benchmarks.gpu_check.data import BCCD_CONFIG, Repeat
from benchmarks.gpu_check.runtime import gib, sync


def model_from_config(cfg, num_classes: int):
    """The network ssd_core.train.fit builds for cfg: its model section, default boxes fitted first when
    model.prior_scales is auto (ssd_core.prior_fit.resolve_priors)."""
    from ssd_core.build import build_model
    from ssd_core.prior_fit import resolve_priors
    return build_model(resolve_priors(cfg), num_classes)


def pack_worker(worker_dir: Path, rank: int) -> int:
    """One packed trial: set up, warm up, signal ready, wait for the start time, train `seconds`, report."""
    spec = json.loads((worker_dir / "spec.json").read_text())
    import torch

    from ssd_core.augment import build_transform
    from ssd_core.build import cap_gpu_memory
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
    if device.type == "cuda":                 # as fractional-GPU sweep trials are capped
        cap_gpu_memory(fraction)
    torch.manual_seed(rank)
    model = model_from_config(cfg, len(names) + 1).to(device).train()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    criterion = MultiBoxLoss()
    amp = device.type == "cuda" and cfg.train.amp == "bf16"

    def step(b) -> float:                     # as ssd_core.train.fit: one host sync per step (loss check)
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
        step(next(it))
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
        last = step(next(it))
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
