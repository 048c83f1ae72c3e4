"""Deployment: what a trained SSD costs on a CPU as PyTorch FP32, ONNX FP32 and ONNX INT8 (the ONNX model,
its post-processing graph and its quantization are in ssd_core/onnx_export.py). torch, and (imported when
used) onnxruntime; never MLflow (`ssdlab deploy bench` logs what `bench` returns).

    count_params(model), gflops(model)          size and compute of the network
    time_stages(stages, inputs)                 median per-stage and per-image latency, batch 1
    session(model)                              an ONNX Runtime CPU session of an exported model
    bench(checkpoint, ...)                      every deploy/* metric of a checkpoint (ssd_core.metrics)
    measure_run(cfg, run_dir)                   the bench of a training run's selected checkpoint

Latency (batch 1, one image at a time, median of `repeats` runs after `warmup` runs, images cycled; the
ONNX FP32 and INT8 runs interleaved so load from other processes hits both alike, PyTorch on its own):
preprocess = JPEG decode from bytes in memory + resize (+ normalisation for PyTorch; in-graph for ONNX),
forward = the network, postprocess = decode + threshold + NMS + top-k. For ONNX, decode and softmax
close the network graph (export_core) and the post-processing graph runs the rest as a second session
(the exported file is the same two graphs in one piece). latency = the median of the per-image totals. "All threads" is every CPU this process may use (os.sched_getaffinity).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ssd_core import metrics as M
from ssd_core import rundir as RD
from ssd_core.errors import ConfigError
from ssd_core.onnx_export import (
    CORE_OUTPUTS,
    INPUT,
    _require,
    calibration_images,
    evaluate_onnx,
    export_core,
    export_onnx,
    postprocess_model,
    quantize_core,
)
from ssd_core.postprocess import NMSSettings

# ---------------------------------------------------------------- size and compute


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: nn.Module, image_size: Optional[int] = None) -> float:
    """GFLOPs of one forward pass at batch 1 and `image_size` (default model.image_size), counted by
    torch.utils.flop_counter.FlopCounterMode: 2 FLOPs per multiply-add of convolutions and matrix
    products; normalisation, activations and the post-processing are not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    size = image_size or model.image_size
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, size, size))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def file_mb(path) -> float:
    return os.path.getsize(path) / 1e6


def weights_mb(checkpoint) -> float:
    """Size of the weights-only copy of a checkpoint (what a run logs and a user deploys), 1 MB = 1e6 B."""
    from ssd_core.checkpoint import export_weights

    with tempfile.TemporaryDirectory() as tmp:
        return file_mb(export_weights(checkpoint, Path(tmp) / "weights.pt"))


def all_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- latency


def time_stages(stages: Sequence[tuple[str, Callable[[Any], Any]]], inputs: Sequence[Any], warmup: int = 5,
                repeats: int = 30) -> dict[str, float]:
    """Feed each input (cycled) through the stages in order, one image at a time: `warmup` untimed runs,
    then `repeats` timed ones. -> {stage name: median ms, "latency_ms": median of the per-run totals}."""
    return time_interleaved({"": stages}, inputs, warmup, repeats)[""]


def time_interleaved(pipelines: dict[str, Sequence[tuple[str, Callable[[Any], Any]]]], inputs: Sequence[Any],
                     warmup: int = 5, repeats: int = 30) -> dict[str, dict[str, float]]:
    """time_stages of several pipelines, their runs interleaved (run i of each, then run i + 1 of each), so
    load from other processes hits them alike. -> {pipeline: {stage: median ms, "latency_ms": ...}}."""
    if not inputs:
        raise ValueError("time_stages: no inputs")
    times = {p: {name: [] for name, _ in stages} for p, stages in pipelines.items()}
    totals: dict[str, list] = {p: [] for p in pipelines}
    for run in range(warmup + repeats):
        for p, stages in pipelines.items():
            x = inputs[run % len(inputs)]
            total = 0.0
            for name, fn in stages:
                t0 = time.perf_counter()
                x = fn(x)
                dt = (time.perf_counter() - t0) * 1000.0
                total += dt
                if run >= warmup:
                    times[p][name].append(dt)
            if run >= warmup:
                totals[p].append(total)
    return {p: {**{name: statistics.median(v) for name, v in times[p].items()},
                "latency_ms": statistics.median(totals[p])} for p in pipelines}


def _decode_resize(image_size: int):
    """JPEG (or PNG) bytes -> uint8 [1, 3, S, S]: the evaluation transform, as ssd_core.data applies it."""
    from PIL import Image

    from ssd_core.augment import ResizeOnly

    resize = ResizeOnly(image_size)
    empty_boxes, empty_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)

    def run(raw: bytes) -> Tensor:
        img = Image.open(io.BytesIO(raw))
        return resize(img, empty_boxes, empty_labels)[0][None]
    return run


def torch_stages(model: nn.Module, cfg, settings: Optional[NMSSettings] = None):
    """ssd_core.inference.detect cut into its three stages (prepare, forward, postprocess), on the CPU."""
    from ssd_core.inference import prepare
    from ssd_core.postprocess import postprocess

    s = settings or NMSSettings.of(cfg.eval)
    load, cpu = _decode_resize(model.image_size), torch.device("cpu")
    return [("preprocess_ms", lambda raw: prepare(model, load(raw), cfg, cpu)),
            ("forward_ms", lambda x: model(x)),
            ("postprocess_ms", lambda out: postprocess(out[0].float(), out[1].float(), model.priors, **s._asdict()))]


def onnx_stages(core_session, post_session, image_size: int):
    """The ONNX pipeline: decode + resize, the network graph, the post-processing graph."""
    load = _decode_resize(image_size)
    return [("preprocess_ms", lambda raw: load(raw).numpy()),
            ("forward_ms", lambda x: core_session.run(None, {INPUT: x})),
            ("postprocess_ms", lambda out: post_session.run(None, dict(zip(CORE_OUTPUTS, out))))]


def session(model, threads: Optional[int] = None):
    """An onnxruntime CPU InferenceSession of a ModelProto, bytes or path, with `threads` intra-op threads
    (None: all)."""
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or all_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- the bench


@dataclass
class BenchResult:
    metrics: dict[str, float]                       # deploy/* (ssd_core.metrics.deploy)
    files: dict[str, Path] = field(default_factory=dict)   # exported models, when out_dir was given
    split: str = M.TEST
    images: int = 0                                 # images scored (0: not scored)
    step: int = 0                                   # the checkpoint's epoch (the MLflow step to log at)

    def table(self) -> str:
        return format_bench(self.metrics)


def bench(checkpoint, *, split: str = M.TEST, onnx: bool = True, int8: bool = True, score: bool = True,
          bench_images: int = 16, warmup: int = 5, repeats: int = 30, calib_images: int = 64,
          max_images: Optional[int] = None, data_root: Optional[str] = None, out_dir=None,
          threads: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> BenchResult:
    """Every deploy/* metric of `checkpoint` on the CPU (module docstring): params, GFLOPs, weights size;
    PyTorch FP32 latency at all threads and one; with `onnx` the exported model's, with `int8` the
    quantized model's (calibrated on `calib_images` training images); with `score` the VOC07 mAP@0.5 of
    each on `split` (its first `max_images` images when set). Latency images: `bench_images` of `split`.
    `out_dir`: keep model.onnx and model_int8.onnx there. `threads`: what "all threads" means (default:
    the CPUs this process may run on)."""
    from ssd_core.build import build_dataset
    from ssd_core.config import apply_overrides
    from ssd_core.data import select
    from ssd_core.inference import evaluate_model, model_from_checkpoint

    model, class_names, cfg = model_from_checkpoint(checkpoint, "cpu")
    if data_root is not None:
        cfg = apply_overrides(cfg, {"data.root": str(data_root)})
    state_step = int(torch.load(checkpoint, map_location="cpu", weights_only=True).get("epoch", 0) or 0)
    settings = NMSSettings.of(cfg.eval)
    n_all = threads or all_threads()
    m: dict[str, float] = {M.DEPLOY_PARAMS: float(count_params(model)), M.DEPLOY_GFLOPS: gflops(model),
                           M.DEPLOY_CHECKPOINT_MB: weights_mb(checkpoint), M.DEPLOY_THREADS: float(n_all)}
    dataset = build_dataset(cfg, split, train=False, class_names=class_names)
    if dataset is None or len(dataset) == 0:
        raise ConfigError(f"{checkpoint} (config): split {split!r} has no images to time and score on; "
                          f"use --split val|train|test or an image set")
    idx = np.unique(np.linspace(0, len(dataset) - 1, min(bench_images, len(dataset))).round().astype(int))
    raws = [Path(dataset.image_path(int(i))).read_bytes() for i in idx]

    files: dict[str, Path] = {}
    tmp = tempfile.TemporaryDirectory()
    folder = Path(out_dir) if out_dir is not None else Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        pipelines = {"torch": lambda threads: torch_stages(model, cfg, settings)}
        sessions = {}
        if onnx or int8:
            core = export_core(model)
            post = postprocess_model(model.priors.shape[0], model.num_classes, settings, like=core)
            cores = {"onnx": core} if onnx else {}
            if int8:
                log(f"int8: calibrating on {calib_images} training images")
                cores["int8"] = quantize_core(core, calibration_images(cfg, class_names, calib_images))
            for backend, c in cores.items():
                path = export_onnx(model, folder / ("model.onnx" if backend == "onnx" else "model_int8.onnx"),
                                   settings, class_names, core=c)
                files[backend] = sessions[backend] = path
                m[M.deploy("model_mb", backend)] = file_mb(path)
                pipelines[backend] = lambda threads, c=c: onnx_stages(session(c, threads), session(post, threads),
                                                                     model.image_size)
        for one in (False, True):  # all threads, then one
            threads = 1 if one else n_all
            # PyTorch alone, then the ONNX Runtime models interleaved: ORT's pool threads spin after a run,
            # and interleaved with torch's OpenMP threads they starve each other (measured: docs/deploy_timings.md)
            timings = {}
            for group in (["torch"], [b for b in pipelines if b != "torch"]):
                with torch_threads(threads), torch.inference_mode():
                    timings.update(time_interleaved({b: pipelines[b](threads) for b in group}, raws, warmup, repeats)
                                   if group else {})
            for backend, t in timings.items():
                m.update({M.deploy(k, backend, one): v for k, v in t.items()})
                log(f"{backend:5s} {threads} thread(s): " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()))
        scored = 0
        if score:
            if max_images is not None and max_images < len(dataset):
                keep = np.zeros(len(dataset), bool)
                keep[:max_images] = True
                select(dataset, keep)
            scored = len(dataset)
            with torch_threads(n_all):
                fp32 = evaluate_model(model, dataset, cfg, torch.device("cpu"), prefix=split)
            m[M.deploy("mAP50")] = fp32[M.map50(split)]
            for backend, path in sessions.items():
                m[M.deploy("mAP50", backend)] = evaluate_onnx(session(path), dataset, cfg, split)[M.map50(split)]
            log(f"scored {scored} images of {split}: " + ", ".join(
                f"{b} {m[M.deploy('mAP50', b)]:.4f}" for b in ("torch", *sessions)))
    finally:
        tmp.cleanup()
    if out_dir is None:
        files = {}
    return BenchResult(m, files, split, scored, state_step)


def bench_with(checkpoint, d, data_root: Optional[str] = None, threads: Optional[int] = None,
               log: Callable[[str], None] = lambda s: None) -> BenchResult:
    """`bench` as a config's `deploy` section (ssd_core.config.DeployConfig) says: what a sweep trial runs at
    its final epoch. `threads` (the trial's CPU share) stands in for `d.threads` when that is null."""
    return bench(checkpoint, split=d.split, onnx=d.onnx, int8=d.int8, score=True, bench_images=d.images,
                 warmup=d.warmup, repeats=d.repeats, calib_images=d.calib_images, max_images=d.max_images,
                 data_root=data_root, threads=d.threads or threads, log=log)




def measure_run(cfg, run_dir, threads: Optional[int] = None, log: Callable[[str], None] = lambda s: None
                ) -> dict[str, float]:
    """At the end of training with `deploy.bench` on: bench the run's selected checkpoint (best.pt, else
    last.pt) as `cfg.deploy` says, keep the metrics in `run_dir/deploy.json` (atomically) and return the
    finite ones. {} when `deploy.bench` is off. `saved_run_metrics` reads them back (a replayed epoch)."""
    if cfg is None or not cfg.deploy.bench or run_dir is None:
        return {}
    run_dir = Path(run_dir)
    checkpoint = run_dir / RD.BEST if (run_dir / RD.BEST).is_file() else run_dir / RD.LAST
    result = bench_with(checkpoint, cfg.deploy, data_root=cfg.data.root, threads=threads, log=log)
    metrics = {k: float(v) for k, v in result.metrics.items() if np.isfinite(v)}
    tmp = run_dir / (RD.DEPLOY_RECORD + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True))
    os.replace(tmp, run_dir / RD.DEPLOY_RECORD)
    return metrics


def saved_run_metrics(run_dir) -> dict[str, float]:
    """The deploy/* metrics `measure_run` kept in `run_dir` ({} when none, or unreadable)."""
    try:
        data = json.loads((Path(run_dir) / RD.DEPLOY_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and k.startswith(M.DEPLOY + "/")}


def format_bench(m: dict[str, float]) -> str:
    """The deploy/* metrics as a text table: one row per backend."""
    rows = [("backend", "latency ms", "1 thread", "pre", "forward", "post", "size MB", "mAP50")]
    for backend in M.DEPLOY_BACKENDS:
        if M.deploy("latency_ms", backend) not in m:
            continue
        get = lambda k, one=False: m.get(M.deploy(k, backend, one))  # noqa: E731
        size = m.get(M.DEPLOY_CHECKPOINT_MB) if backend == "torch" else get("model_mb")
        fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
        name = {"torch": "pytorch fp32", "onnx": "onnx fp32", "int8": "onnx int8"}[backend]
        rows.append((name, fmt(get("latency_ms")), fmt(get("latency_ms", True)),
                     fmt(get("preprocess_ms")), fmt(get("forward_ms")), fmt(get("postprocess_ms")), fmt(size),
                     fmt(get("mAP50"), "{:.4f}")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = (f"params {m.get(M.DEPLOY_PARAMS, 0) / 1e6:.2f} M, {m.get(M.DEPLOY_GFLOPS, 0):.3f} GFLOPs "
            f"(2 per multiply-add, batch 1), threads: all = {int(m.get(M.DEPLOY_THREADS, 0))}; "
            f"times: median ms per image, batch 1 (latency and pre/forward/post at all threads)")
    return head + "\n" + "\n".join(lines)
