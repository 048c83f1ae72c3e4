"""Seconds per training iteration of a config on this machine, as a sweep trial runs it: one thread on a
CPU (a trial's `resources: {cpu: 1}`), the config's precision (bf16 where the CPU has it), real batches of
the training split through its augmentation. `ssdlab init` prints what a budget costs from it.

    step_seconds(cfg, train_ds, steps=2)   the median wall time of `steps` iterations after one warm-up
"""
from __future__ import annotations

import statistics
import time

import torch


def step_seconds(cfg, train_ds, steps: int = 2, threads: int | None = 1) -> float:
    from ssd_core import precision
    from ssd_core.build import build_model, build_optimizer, resolve_device
    from ssd_core.data import make_loader
    from ssd_core.inference import autocast, prepare
    from ssd_core.loss import MultiBoxLoss

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        device = resolve_device(cfg)
        model = build_model(cfg, len(train_ds.class_names) + 1).to(device).train()
        plan = precision.resolve(cfg.train, device)
        if plan.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer, criterion = build_optimizer(cfg, model), MultiBoxLoss()
        loader = iter(make_loader(train_ds, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.train.seed))
        times = []
        for k in range(steps + 1):
            start = time.perf_counter()
            try:
                batch = next(loader)
            except StopIteration:  # fewer images than the steps need: go round again
                loader = iter(make_loader(train_ds, batch_size=cfg.train.batch_size, shuffle=True, seed=k))
                batch = next(loader)
            with autocast(cfg, device, training=True):
                loc, conf = model(prepare(model, batch.images, cfg, device))
            loss = criterion(loc.float(), conf.float(), model.priors, batch.boxes.to(device), batch.labels.to(device)).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if k:
                times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        torch.set_num_threads(before)
