"""`ssdlab config show | train | eval | detect`: one experiment config, one training run, its checkpoints.

    ssdlab config show CONFIG [-o key=value ...]        the resolved YAML and its config hash
    ssdlab train CONFIG [-o ...] [--resume] [--tracking-uri URI] [--run-dir DIR] [--no-tracking]
    ssdlab eval CONFIG --checkpoint PATH [--split test] [--json OUT] [-o ...]
    ssdlab detect --checkpoint PATH IMAGES... --out DIR [--score 0.3]

`ssdlab train` logs one MLflow run (params = the flattened config, metrics per epoch, per-class AP,
config.yaml and best.pt as artifacts, tag ssdlab.kind=train) through experiments.tracking.train_run.MLflowCallback.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ssd_core.errors import UserError


def register(subparsers) -> None:
    cfg = subparsers.add_parser("config", help="inspect experiment configs")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    show = cfg_sub.add_parser("show", help="print the resolved config (YAML) and its hash")
    show.add_argument("config", help="experiment YAML, e.g. experiments/configs/demo_shapes.yaml")
    _overrides(show)
    show.set_defaults(func=config_show)

    tr = subparsers.add_parser("train", help="train one experiment config (one MLflow run)")
    tr.add_argument("config")
    _overrides(tr)
    tr.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    tr.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: tracking.uri)")
    tr.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    tr.add_argument("--run-dir", default=None, help="checkpoint folder (default: output.dir/<name>-<hash>)")
    tr.set_defaults(func=train)

    ev = subparsers.add_parser("eval", help="score a checkpoint: per-class AP and mAP")
    ev.add_argument("config")
    _overrides(ev)
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--split", default="test", help="val | train | test | an image set such as VOC2007/test")
    ev.add_argument("--json", default=None, metavar="OUT", help="also write the metrics as JSON")
    ev.set_defaults(func=evaluate)

    de = subparsers.add_parser("detect", help="draw a checkpoint's detections on images")
    de.add_argument("--checkpoint", required=True)
    de.add_argument("images", nargs="+")
    de.add_argument("--out", required=True, help="folder for the annotated PNGs and detections.json")
    de.add_argument("--score", type=float, default=0.3, help="minimum score to keep (default 0.3)")
    de.add_argument("--device", default="cpu", help="cpu | cuda")
    de.set_defaults(func=detect)


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path; the value is read as YAML), repeatable")


# ---------------------------------------------------------------- config show


def config_show(args) -> int:
    from ssd_core.config import config_hash, load_config, to_yaml
    from ssd_core.prior_fit import resolve_priors

    cfg = load_config(args.config, args.override)
    fitted = resolve_priors(cfg)  # model.prior_scales: auto -> the sizes fitted to the training boxes
    sys.stdout.write(to_yaml(fitted))
    if fitted is not cfg:
        print("# model.prior_sizes" + (" and prior_aspect_ratios" if fitted.model.prior_aspect_ratios else "")
              + " fitted to the training boxes (model.prior_scales: auto; `ssdlab data check --config ... --fit`)")
    print(f"# config_hash: {config_hash(fitted)}")
    return 0


# ---------------------------------------------------------------- train


def train(args) -> int:
    from ssd_core.config import load_config
    from ssd_core.train import fit

    cfg = load_config(args.config, args.override)
    callbacks = []
    tracker = None
    if not args.no_tracking:
        from experiments.tracking.store import check_store
        from experiments.tracking.train_run import MLflowCallback
        uri = args.tracking_uri or cfg.tracking.uri
        check_store(uri, "--tracking-uri" if args.tracking_uri else f"{args.config}: tracking.uri")  # before training
        tracker = MLflowCallback(uri, cfg.tracking.experiment,
                                 run_name=cfg.tracking.run_name or cfg.name, resume=args.resume)
        callbacks.append(tracker)
    try:
        result = fit(cfg, callbacks=callbacks, run_dir=args.run_dir, resume=args.resume)
    except BaseException as exc:
        if tracker is not None:
            tracker.on_fit_error(exc)
        raise
    best = "n/a" if result.best_metric is None else f"{result.best_metric:.4f}"
    print(f"done: {result.epochs} epochs, {result.iterations} iterations; best {result.metric_name} {best} "
          f"(epoch {result.best_epoch}); checkpoints in {result.run_dir}")
    return 0


# ---------------------------------------------------------------- eval


def format_ap_table(metrics: dict[str, float], prefix: str) -> str:
    """Per-class AP and the mAPs as an aligned text table; fractions in [0, 1] like every report and log
    (ssd_core/metrics.py names the keys)."""
    from ssd_core import metrics as M

    per_class = {k[len(M.class_ap50_prefix(prefix)):]: v for k, v in metrics.items()
                 if k.startswith(M.class_ap50_prefix(prefix))}
    width = max([len(c) for c in per_class] + [len("mAP50 (VOC07)")])
    fmt = lambda v: "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.3f}"  # noqa: E731
    lines = [f"{'class':<{width}}  AP50", f"{'-' * width}  -----"]
    lines += [f"{c:<{width}}  {fmt(v)}" for c, v in per_class.items()]
    lines += [f"{'-' * width}  -----", f"{'mAP50 (VOC07)':<{width}}  {fmt(metrics.get(M.map50(prefix)))}",
              f"{'mAP50 (area)':<{width}}  {fmt(metrics.get(M.map50_area(prefix)))}"]
    for k in M.COCO_KEYS:
        if M.coco_ap(prefix, k) in metrics:
            lines.append(f"{'COCO ' + k:<{width}}  {fmt(metrics[M.coco_ap(prefix, k)])}")
    return "\n".join(lines)


def evaluate(args) -> int:
    from ssd_core.config import load_config
    from ssd_core.inference import evaluate_checkpoint

    cfg = load_config(args.config, args.override)
    metrics = evaluate_checkpoint(cfg, args.checkpoint, split=args.split)
    print(f"{args.checkpoint} on {args.split}:")
    print(format_ap_table(metrics, args.split))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split,
                                   "metrics": clean}, indent=2))
    return 0


# ---------------------------------------------------------------- detect


def detect(args) -> int:
    import torch
    from PIL import ImageDraw

    from ssd_core.augment import ResizeOnly
    from ssd_core.imageio import load_rgb, open_image
    from ssd_core.inference import detect as detect_images  # the one inference path (evaluation uses it too)
    from ssd_core.inference import model_from_checkpoint

    if not 0 <= args.score < 1:
        raise UserError(f"--score {args.score}: expected a number in [0, 1)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder (detect writes PNGs and detections.json into a folder)")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: image not found" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    model, class_names, cfg = model_from_checkpoint(args.checkpoint, args.device)
    resize = ResizeOnly(cfg.model.image_size)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder: {exc.strerror or exc}") from None
    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]
    report = []
    for path in args.images:
        img = load_rgb(open_image(path))
        x, _, _ = resize(img, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
        det = detect_images(model, x[None], cfg, torch.device(args.device), score_threshold=args.score)
        n = int(det.counts[0])
        w, h = img.size
        boxes = (det.boxes[0, :n].cpu() * torch.tensor([w, h, w, h])).tolist()
        labels, scores = det.labels[0, :n].tolist(), det.scores[0, :n].tolist()
        draw = ImageDraw.Draw(img)
        found = []
        for box, label, score in zip(boxes, labels, scores):
            name = class_names[label - 1]
            color = palette[(label - 1) % len(palette)]
            draw.rectangle(box, outline=color, width=max(1, round(min(w, h) / 150)))
            draw.text((box[0] + 2, box[1] + 1), f"{name} {score:.2f}", fill=color)
            found.append({"class": name, "label": label, "score": round(score, 4),
                          "box_xyxy": [round(v, 1) for v in box]})
        target = out / f"{Path(path).stem}.png"
        img.save(target)
        report.append({"image": str(path), "output": str(target), "width": w, "height": h, "detections": found})
        print(f"{path}: {len(found)} detections -> {target}")
    (out / "detections.json").write_text(json.dumps({"checkpoint": str(args.checkpoint),
                                                      "score_threshold": args.score, "images": report}, indent=2))
    return 0
