"""train.amp resolved per device (ssd_core/precision.py): bf16 + channels_last where the CPU has bf16
instructions, fp32 where it has none (recorded), the forward in bf16 and the loss and evaluation in fp32."""
from __future__ import annotations

import pytest
import torch

from ssd_core import precision
from ssd_core.config import TrainConfig


def plan(amp, device="cpu", cpu_bf16=True, cuda_bf16=True, channels_last=False):
    return precision._resolve(amp, channels_last, device, cuda_bf16, cpu_bf16)


def test_auto_is_bf16_with_channels_last_where_the_hardware_has_it_and_fp32_elsewhere():
    on = plan("auto")
    assert (on.dtype, on.channels_last, on.scaler, on.name) == (torch.bfloat16, True, False, "bf16")
    off = plan("auto", cpu_bf16=False)
    assert (off.dtype, off.channels_last, off.name) == (None, False, "fp32")
    assert "fp32 is faster here" in off.describe() and off.describe().startswith("fp32 (")
    assert plan("bf16", cpu_bf16=False).dtype == torch.bfloat16  # asked for: honoured, even where slower
    assert plan("fp16").dtype is None and "CUDA only" in plan("fp16").reason
    assert plan("off", channels_last=True).channels_last and plan("off").dtype is None
    assert plan("auto", "cuda").dtype == torch.bfloat16 and plan("auto", "cuda").channels_last
    old_gpu = plan("auto", "cuda", cuda_bf16=False)
    assert old_gpu.dtype == torch.float16 and old_gpu.scaler
    assert plan("fp16", "cuda").scaler and not plan("bf16", "cuda").scaler


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    precision.cpu_flags.cache_clear()
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_tile\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
    try:
        assert precision.cpu_flags() == {"avx512_bf16", "amx_tile"} and precision.cpu_has_bf16()
    finally:
        precision.cpu_flags.cache_clear()


@pytest.mark.parametrize("has_bf16", [True, False])
def test_fit_trains_in_the_resolved_precision_and_evaluates_in_fp32(tmp_path, monkeypatch, has_bf16):
    """The network's forward under bf16 autocast while training (heads emit bf16), the loss fed fp32, every
    evaluation forward in fp32; the epoch metrics record it; without bf16 instructions: fp32 throughout."""
    from ssd_core.synth import ensure_synthetic
    from ssd_core.train import fit
    from tests.support.configs import tiny_config

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    root = tmp_path / "shapes"
    ensure_synthetic(root, images=24, seed=0, image_size=96)
    cfg = tiny_config(root, tmp_path / "runs", epochs=1)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"amp": "auto"})})
    seen = []

    import ssd_core.build as build
    real = build.build_model

    def spy(cfg_, classes):
        model = real(cfg_, classes)
        model.register_forward_hook(lambda m, i, out: seen.append((m.training, out[1].dtype)))
        return model

    monkeypatch.setattr("ssd_core.train.build_model", spy)
    result = fit(cfg, run_dir=tmp_path / "run")
    train_dtypes = {d for training, d in seen if training}
    eval_dtypes = {d for training, d in seen if not training}
    assert train_dtypes == ({torch.bfloat16} if has_bf16 else {torch.float32})
    assert eval_dtypes == {torch.float32}
    m = result.metrics_history[-1]
    assert m["perf/bf16"] == float(has_bf16) and m["perf/channels_last"] == float(has_bf16)
    assert precision.resolve(TrainConfig(amp="auto"), torch.device("cpu")).name == ("bf16" if has_bf16 else "fp32")
