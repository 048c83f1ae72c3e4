"""What every part runs under: the clock the deadline counts from, the per-part time cap (SIGALRM), and the
device helpers the parts share (sync, free_memory, gib)."""
from __future__ import annotations

import contextlib
import gc
import signal
import time

from benchmarks.gpu_check.plan import Plan

_start = time.perf_counter()


def restart() -> None:
    """The deadline counts from here (main calls it, also when gpu_check runs in-process)."""
    global _start
    _start = time.perf_counter()


def elapsed() -> float:
    """Seconds since the start of the run."""
    return time.perf_counter() - _start


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
    return plan.deadline_s - elapsed()


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
