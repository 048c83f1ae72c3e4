"""Training precision: what `train.amp` asks for, resolved for the device a run trains on.

    train.amp   CUDA                                   CPU
    off         fp32                                   fp32
    auto        bf16 autocast (fp16 + GradScaler on    bf16 autocast + channels_last where the CPU has
                a GPU without bf16), channels_last     bf16 instructions (AMX-BF16 or AVX512-BF16); fp32
                                                       elsewhere, where emulated bf16 is slower
    bf16        bf16 autocast                          bf16 autocast (as asked, even where it is slower)
    fp16        fp16 autocast + GradScaler             fp32 (fp16 autocast is a CUDA feature here)

Only the network's forward runs under autocast: the MultiBox loss is reduced in fp32 (ssd_core/loss.py
casts the heads' outputs) and evaluation runs in fp32 on a CPU, so the selection and the reported mAP do not
depend on the training precision. The resolved plan is recorded with every run (`perf/bf16`,
`perf/channels_last` metrics from fit; the `ssdlab.precision` tag with the CPU's flags).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of bf16 dot-product instructions


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's bf16-relevant flags (from /proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split()) & frozenset(BF16_FLAGS + ("amx_tile",))
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    return bool(cpu_flags() & set(BF16_FLAGS))


@dataclass(frozen=True)
class Precision:
    dtype: Optional[torch.dtype]   # the autocast dtype of the forward; None: fp32
    channels_last: bool
    scaler: bool                   # a GradScaler (CUDA fp16)
    reason: str                    # why, in a few words

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")

    def describe(self) -> str:
        layout = " + channels_last" if self.channels_last else ""
        return f"{self.name}{' autocast' if self.dtype is not None else ''}{layout} ({self.reason})"


def _cpu_text() -> str:
    flags = sorted(cpu_flags() & set(BF16_FLAGS))
    return "CPU bf16 instructions: " + (", ".join(flags) if flags else "none")


@functools.lru_cache(maxsize=32)
def _resolve(amp: str, channels_last: bool, device_type: str, cuda_bf16: bool, cpu_bf16: bool) -> Precision:
    if device_type == "cuda":
        if amp == "off":
            return Precision(None, channels_last, False, "train.amp off")
        if amp == "fp16" or (amp == "auto" and not cuda_bf16):
            return Precision(torch.float16, channels_last or amp == "auto", True, f"train.amp {amp}, CUDA")
        return Precision(torch.bfloat16, channels_last or amp == "auto", False, f"train.amp {amp}, CUDA")
    cpu = _cpu_text()
    if amp == "auto":
        if cpu_bf16:
            return Precision(torch.bfloat16, True, False, f"train.amp auto; {cpu}")
        return Precision(None, channels_last, False, f"train.amp auto; {cpu}: fp32 is faster here")
    if amp == "bf16":
        return Precision(torch.bfloat16, channels_last, False, f"train.amp bf16; {cpu}")
    if amp == "fp16":
        return Precision(None, channels_last, False, "train.amp fp16 is CUDA only: fp32 on a CPU")
    return Precision(None, channels_last, False, "train.amp off")


def resolve(train_cfg, device: torch.device) -> Precision:
    """The precision plan of a run with this `train` config section on `device`."""
    device = torch.device(device)
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return _resolve(train_cfg.amp, bool(train_cfg.channels_last), device.type, bool(cuda_bf16), cpu_has_bf16())


def autocast(train_cfg, device: torch.device, training: bool = True):
    """The autocast context of the network's forward: the resolved dtype while training; in evaluation
    (training=False) only on CUDA, so a CPU run always scores its checkpoints in fp32."""
    device = torch.device(device)
    p = resolve(train_cfg, device)
    enabled = p.dtype is not None and (training or device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=p.dtype or torch.bfloat16, enabled=enabled)
