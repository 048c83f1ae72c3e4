"""`ssdlab export | deploy bench`: a trained checkpoint as a deployable ONNX model, and what it costs on a CPU.

    ssdlab export CHECKPOINT --onnx OUT.onnx [--int8 OUT_INT8.onnx] [--check 8] [--data-root DIR]
    ssdlab deploy bench CHECKPOINT [--split test] [--no-onnx] [--no-int8] [--no-score] [--json OUT]
                        [--run-id RUN --tracking-uri URI]

`export` writes the model with its post-processing inside the graph (uint8 images [B, 3, S, S] -> boxes,
scores, labels, counts; ssd_core/deploy.py has the contract), optionally its INT8 twin (ONNX Runtime static
quantization calibrated on training images), then checks it against the PyTorch inference path
(ssd_core.inference.detect) on a few images of the checkpoint's data and prints its latency.

`deploy bench` measures every `deploy/*` metric (ssd_core.metrics): latency per image at batch 1 (all
threads and one; preprocess, forward and postprocess apart), parameters, GFLOPs, weights size, and for
the ONNX and INT8 models their latency, file size and mAP on the same images. With --run-id it logs them
onto that MLflow run (step = the checkpoint's epoch): a sweep can run it at the end of each trial.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ssd_core.errors import ConfigError, DataError, UserError


def register(subparsers) -> None:
    ex = subparsers.add_parser("export", help="export a checkpoint to ONNX with NMS in the graph (+ INT8)")
    ex.add_argument("checkpoint")
    ex.add_argument("--onnx", required=True, metavar="OUT", help="the ONNX file to write (FP32)")
    ex.add_argument("--int8", default=None, metavar="OUT", help="also write an INT8-quantized model there")
    ex.add_argument("--calib-images", type=int, default=64, help="training images to calibrate INT8 on (64)")
    ex.add_argument("--check", type=int, default=8, metavar="N",
                    help="compare with PyTorch on N images of --split (0: no check; default 8)")
    ex.add_argument("--split", default="test", help="images for the check (default test)")
    ex.add_argument("--data-root", default=None, help="override the checkpoint's data.root")
    ex.set_defaults(func=export)

    de = subparsers.add_parser("deploy", help="deployment measurements of a checkpoint")
    de_sub = de.add_subparsers(dest="deploy_command", required=True, metavar="SUBCOMMAND")
    b = de_sub.add_parser("bench", help="CPU latency, size, GFLOPs (+ ONNX, INT8) -> deploy/* metrics")
    b.add_argument("checkpoint")
    b.add_argument("--split", default="test", help="images to time and score on (default test)")
    b.add_argument("--no-onnx", action="store_true", help="skip the ONNX FP32 model")
    b.add_argument("--no-int8", action="store_true", help="skip the INT8 model")
    b.add_argument("--no-score", action="store_true", help="latency and size only, no mAP")
    b.add_argument("--images", type=int, default=16, help="images cycled for the latency (default 16)")
    b.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    b.add_argument("--repeats", type=int, default=30, help="timed runs; the median is reported (default 30)")
    b.add_argument("--calib-images", type=int, default=64, help="training images to calibrate INT8 on (64)")
    b.add_argument("--max-images", type=int, default=None, help="score on the split's first N images only")
    b.add_argument("--data-root", default=None, help="override the checkpoint's data.root")
    b.add_argument("--out-dir", default=None, help="keep model.onnx and model_int8.onnx there")
    b.add_argument("--json", default=None, metavar="OUT", help="also write the metrics as JSON")
    b.add_argument("--run-id", default=None, help="log the metrics onto this MLflow run")
    b.add_argument("--tracking-uri", default=None, help="with --run-id: MLflow store (default: the "
                                                          "checkpoint's tracking.uri)")
    b.set_defaults(func=bench)


def _positive(value: int, flag: str, zero_ok: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise UserError(f"{flag} {value}: expected a {'non-negative' if zero_ok else 'positive'} number")


def _dataset(cfg, split: str, class_names):
    from ssd_core.build import build_dataset

    ds = build_dataset(cfg, split, train=False, class_names=class_names)
    if ds is None or len(ds) == 0:
        raise ConfigError(f"split {split!r}: no images in the checkpoint's config (use --split)")
    return ds


# ---------------------------------------------------------------- export


def export(args) -> int:
    import torch

    from ssd_core import deploy as DP
    from ssd_core import onnx_export as OX
    from ssd_core.config import apply_overrides
    from ssd_core.inference import detect, model_from_checkpoint

    _positive(args.check, "--check", zero_ok=True)
    _positive(args.calib_images, "--calib-images")
    for flag, out in (("--onnx", args.onnx), ("--int8", args.int8)):
        if out is not None and Path(out).is_dir():
            raise UserError(f"{flag} {out}: is a folder, expected a file name such as model.onnx")
    torch.set_num_threads(DP.all_threads())
    model, class_names, cfg = model_from_checkpoint(args.checkpoint, "cpu")
    if args.data_root is not None:
        cfg = apply_overrides(cfg, {"data.root": args.data_root})
    settings = DP.NMSSettings.of(cfg.eval)
    core = OX.export_core(model)
    paths = {"onnx": OX.export_onnx(model, args.onnx, settings, class_names, core=core)}
    print(f"wrote {paths['onnx']} ({DP.file_mb(paths['onnx']):.2f} MB): uint8 images [B, 3, {model.image_size}, "
          f"{model.image_size}] -> boxes, scores, labels, counts (score > {settings.score_threshold}, NMS "
          f"{settings.nms_threshold}, top_k {settings.top_k}, max {settings.max_detections})")
    if args.int8:
        calib = OX.calibration_images(cfg, class_names, args.calib_images)
        paths["int8"] = OX.export_onnx(model, args.int8, settings, class_names, core=OX.quantize_core(core, calib))
        print(f"wrote {paths['int8']} ({DP.file_mb(paths['int8']):.2f} MB): INT8 convolutions, calibrated on "
              f"{len(calib)} training images")
    if args.check == 0:
        return 0
    try:
        ds = _dataset(cfg, args.split, class_names)
    except (ConfigError, DataError) as exc:
        print(f"check skipped: no images of {args.split!r} ({exc}); pass --data-root", file=sys.stderr)
        return 0
    n = min(args.check, len(ds))
    images = torch.stack([ds[i][0] for i in range(n)])
    reference = detect(model, images, cfg, torch.device("cpu"))
    for kind, path in paths.items():
        sess = DP.session(path)
        got = OX.detections_of(sess.run(None, {OX.INPUT: images.numpy()}))
        one = DP.session(path, threads=1)
        x = [images[i:i + 1].numpy() for i in range(n)]
        ms = DP.time_stages([("run", lambda a: one.run(None, {OX.INPUT: a}))], x, warmup=3, repeats=max(10, 2 * n))
        if kind == "onnx":
            parity = OX.compare_detections(reference, got)
            print(f"{path}: vs PyTorch: {parity}; {ms['latency_ms']:.2f} ms per image (batch 1, 1 thread, "
                  f"network + post-processing)")
            if not parity.ok:
                print(f"{path}: WARNING: the ONNX model's detections differ from PyTorch's", file=sys.stderr)
        else:
            loose = OX.compare_detections(reference, got, box_tol=0.02, score_tol=0.05)
            print(f"{path}: vs PyTorch FP32: {loose.matched}/{loose.detections} detections within 0.02 box / "
                  f"0.05 score; {ms['latency_ms']:.2f} ms per image (batch 1, 1 thread); mAP: ssdlab deploy bench")
    return 0


# ---------------------------------------------------------------- bench


def bench(args) -> int:
    from ssd_core import deploy as DP
    from ssd_core.checkpoint import load_checkpoint
    from ssd_core.inference import config_from_checkpoint

    for flag in ("images", "repeats", "calib_images", "max_images"):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    _positive(args.warmup, "--warmup", zero_ok=True)
    writer = None
    if args.run_id is not None:  # the store and the run are checked before the minutes of measuring
        cfg = config_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint)
        writer = _run_writer(args.tracking_uri or cfg.tracking.uri, args.run_id,
                             "--tracking-uri" if args.tracking_uri else f"{args.checkpoint}: tracking.uri")
    elif args.tracking_uri is not None:
        raise UserError("--tracking-uri needs --run-id (the run to log the deploy/* metrics onto)")
    result = DP.bench(args.checkpoint, split=args.split, onnx=not args.no_onnx, int8=not args.no_int8,
                      score=not args.no_score, bench_images=args.images, warmup=args.warmup, repeats=args.repeats,
                      calib_images=args.calib_images, max_images=args.max_images, data_root=args.data_root,
                      out_dir=args.out_dir, log=lambda line: print(line, file=sys.stderr))
    print(f"{args.checkpoint}: " + (f"scored on {result.images} images of {result.split}" if result.images
                                    else "not scored"))
    print(result.table())
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.metrics.items()}
        out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "split": result.split,
                                   "images_scored": result.images, "metrics": clean,
                                   "files": {k: str(v) for k, v in result.files.items()}}, indent=2) + "\n")
    if writer is not None:
        log_deploy_metrics(*writer, result.metrics, result.step)
        print(f"logged {len(result.metrics)} deploy/* metrics onto MLflow run {args.run_id} (step {result.step})")
    return 0


def _run_writer(uri: str, run_id: str, where: str):
    """(client, run id) of an existing run, or ConfigError naming the store / the run."""
    from experiments.tracking.store import check_store, client_for

    check_store(uri, where)
    client = client_for(uri)
    try:
        client.get_run(run_id)
    except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST, or a malformed id
        raise ConfigError(f"--run-id {run_id}: no such run in MLflow store {uri}") from None
    return client, run_id


def log_deploy_metrics(client, run_id: str, metrics: dict, step: int = 0) -> None:
    """The deploy/* metrics onto an existing MLflow run at `step` (one batched call)."""
    from experiments.tracking.writer import log_batch, metrics_of

    log_batch(client, run_id, metrics=metrics_of(metrics, step))
