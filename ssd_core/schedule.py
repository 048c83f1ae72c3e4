"""The learning-rate schedule and the training progress line.

    lr_factor(cfg, iters_per_epoch, total_iters, clock)   it -> multiplier of train.lr
    Progress                                              tqdm bar on a TTY, plain lines otherwise
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional

from ssd_core.config import ExperimentConfig


def lr_factor(cfg: ExperimentConfig, iters_per_epoch: int, total_iters: int,
              clock: Optional[Callable[[], float]] = None):
    """it -> multiplier of train.lr: linear warmup (iterations) times the multistep/cosine/constant
    schedule. With schedule.unit "time" the schedule's position is clock() / train.time_budget_s
    (clock: elapsed seconds of the run) instead of the iteration."""
    s, warmup = cfg.train.schedule, cfg.train.warmup_iters
    if s.unit == "time":
        if clock is None:
            raise ValueError("lr_factor: schedule.unit 'time' needs a clock")
        budget = float(cfg.train.time_budget_s)
        position, end, milestones = (lambda it: min(clock(), budget)), budget, [m * budget for m in s.milestones]
    else:
        scale = iters_per_epoch if s.unit == "epoch" else 1
        position, end, milestones = (lambda it: min(it, total_iters)), max(1, total_iters), [m * scale for m in s.milestones]

    def factor(it: int) -> float:
        f = min(1.0, (it + 1) / warmup) if warmup else 1.0
        x = position(it)
        if s.type == "multistep":
            f *= s.gamma ** sum(x >= m for m in milestones)
        elif s.type == "cosine":
            f *= 0.5 * (1 + math.cos(math.pi * x / end))
        return f

    return factor


class Progress:
    """tqdm bar (loss, lr, img/s, ETA) on a TTY; plain lines every log_every iterations otherwise."""

    def __init__(self, total: int, initial: int, log_every: int, stream=None,
                 remaining: Optional[Callable[[], float]] = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.log_every, self.bar, self.remaining = total, log_every, None, remaining
        self.t0, self.n0 = time.perf_counter(), initial
        if self.stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=None if remaining else total, initial=initial, unit="it", dynamic_ncols=True,
                            file=self.stream)

    def eta(self, it: int) -> float:
        """Seconds left: by the iteration rate, or by the time budget (`remaining`) when that ends sooner."""
        rate = (it - self.n0) / max(1e-9, time.perf_counter() - self.t0)
        eta = (self.total - it) / rate if rate > 0 else float("inf")
        return min(eta, self.remaining()) if self.remaining else eta

    def update(self, it: int, loss: float, lr: float, img_s: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            extra = {"left": f"{self.eta(it):.0f}s"} if self.remaining else {}
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}", **extra, refresh=False)
        elif it % self.log_every == 0 or it == self.total:
            print(f"iter {it}/{self.total} loss {loss:.4f} lr {lr:.3g} img/s {img_s:.1f} eta {self.eta(it):.0f}s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
