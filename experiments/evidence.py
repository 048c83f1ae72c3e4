"""What a researcher looks at first in a run, drawn at its selected checkpoint (no MLflow here; the writers
log the files as artifacts):

    detections.png   the selected model's detections (class, score) on a few fixed validation images,
                     ground truth in thin white (difficult objects dashed), a legend drawn under the grid
    pr_curves.png    per-class precision-recall curves on the reported split, from the run's logged test
                     detections (test_detections.npz), with each class's VOC07 AP

`write_evidence(run_dir)` writes both next to best.pt; a run without a val split or without test
detections gets what it can have. Nothing here may fail a run: errors are returned, not raised.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np

from ssd_core import metrics as M
from ssd_core import rundir as RD

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]


def detection_grid(checkpoint: Path, images: int = 6, score: float = 0.3, tile: int = 256) -> Optional[bytes]:
    """The checkpoint's detections on the first `images` images of its config's selection split (or of
    the training split when it has none), as one PNG grid with its legend drawn under it: ground truth in
    white (difficult objects dashed), detections in their class colour with a label on a filled tag placed
    where no earlier tag is."""
    import torch
    from PIL import Image, ImageDraw

    from ssd_core.build import build_dataset
    from ssd_core.imageio import load_rgb, open_image
    from ssd_core.inference import detect, model_from_checkpoint

    model, class_names, cfg = model_from_checkpoint(checkpoint)
    split = M.VAL
    ds = build_dataset(cfg, M.VAL, train=False, class_names=class_names)
    if ds is None:
        split, ds = "train", build_dataset(cfg, "train", train=False, class_names=class_names)
    n = min(images, len(ds))
    if n == 0:
        return None
    batch = torch.stack([ds[i][0] for i in range(n)])
    det = detect(model, batch, cfg, torch.device("cpu"), score_threshold=score)
    font = _font(11)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    legend = _legend_height(class_names, cols * tile, font)
    grid = Image.new("RGB", (cols * tile, rows * tile + legend), (255, 255, 255))
    for i in range(n):
        img = load_rgb(open_image(ds.image_path(i)))
        w, h = img.size
        f = (tile - 4) / max(w, h)  # every image fills its tile, small ones scaled up: boxes stay legible
        img = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
        draw = ImageDraw.Draw(img)
        truth = ds.annotation(i)
        for box, hard in zip((truth.boxes * f).tolist(), truth.difficult.tolist()):
            (_dashed if hard else _solid)(draw, box, (255, 255, 255))
        k = int(det.counts[i])
        tags: list[tuple[float, float, float, float]] = []
        for box, label, s in zip((det.boxes[i, :k] * torch.tensor([w, h, w, h]) * f).tolist(),
                                 det.labels[i, :k].tolist(), det.scores[i, :k].tolist()):
            colour = PALETTE[(label - 1) % len(PALETTE)]
            draw.rectangle(box, outline=colour, width=2)
            _tag(draw, box, f"{class_names[label - 1]} {s:.2f}", colour, font, tags, img.size)
        grid.paste(img, ((i % cols) * tile + (tile - img.size[0]) // 2, (i // cols) * tile + (tile - img.size[1]) // 2))
    _draw_legend(ImageDraw.Draw(grid), class_names, (0, rows * tile), cols * tile, font,
                 f"{checkpoint.name}, {split} images 1-{n}, detections scoring >= {score:.2f}")
    buf = io.BytesIO()
    grid.save(buf, "PNG")
    return buf.getvalue()


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _solid(draw, box, colour) -> None:
    draw.rectangle(box, outline=colour, width=1)


def _dashed(draw, box, colour, dash: float = 4.0) -> None:
    """A difficult object (VOC `difficult`, not counted by the metric): a dashed outline."""
    x1, y1, x2, y2 = box
    for (a, b), fixed, horizontal in (((x1, x2), y1, True), ((x1, x2), y2, True), ((y1, y2), x1, False),
                                      ((y1, y2), x2, False)):
        t = a
        while t < b:
            e = min(t + dash, b)
            draw.line([(t, fixed), (e, fixed)] if horizontal else [(fixed, t), (fixed, e)], fill=colour, width=1)
            t += 2 * dash


def _overlaps(r, others) -> bool:
    return any(r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3] for o in others)


def _tag(draw, box, text: str, colour: str, font, placed: list, size) -> None:
    """A label on a filled tag at the box's top-left corner, moved (above the box, inside it, below it, then
    downwards) until it covers no earlier tag; white text on the class colour, readable on any image."""
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    tw, th = r - l + 4, b - t + 2
    x = min(max(0.0, box[0]), max(0.0, size[0] - tw))
    spots = [box[1] - th, box[1] + 1, box[3] + 1] + [box[1] + 1 + k * th for k in range(1, 8)]
    rect = None
    for y in spots:
        y = min(max(0.0, y), max(0.0, size[1] - th))
        rect = (x, y, x + tw, y + th)
        if not _overlaps(rect, placed):
            break
    placed.append(rect)
    draw.rectangle(rect, fill=colour)
    draw.text((rect[0] + 2 - l, rect[1] + 1 - t), text, fill=(255, 255, 255), font=font)


def _legend_height(class_names, width: int, font) -> int:
    per_row = max(1, (width - 6) // 110)
    return 22 * (2 + -(-len(class_names) // per_row)) + 6


def _draw_legend(draw, class_names, origin, width: int, font, where: str) -> None:
    """The caption under the grid: what the lines mean, then one swatch per class."""
    x0, y0 = origin
    y = y0 + 4
    _solid(draw, (x0 + 6, y + 2, x0 + 22, y + 12), (0, 0, 0))
    draw.text((x0 + 28, y), "ground truth (white on the images)", fill=(0, 0, 0), font=font)
    _dashed(draw, (x0 + 236, y + 2, x0 + 252, y + 12), (0, 0, 0))
    draw.text((x0 + 258, y), "difficult", fill=(0, 0, 0), font=font)
    y += 22
    draw.text((x0 + 6, y), where, fill=(80, 80, 80), font=font)
    x, y = x0 + 6, y + 22
    for c, name in enumerate(class_names):
        if x + 110 > width:
            x, y = x0 + 6, y + 22
        draw.rectangle((x, y + 2, x + 16, y + 12), fill=PALETTE[c % len(PALETTE)])
        draw.text((x + 22, y), str(name)[:14], fill=(0, 0, 0), font=font)
        x += 110


def pr_curves(detections: Path) -> Optional[bytes]:
    """Per-class precision-recall curves from a test_detections.npz (DetectionAccumulator.save)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssd_core.evaluate import DetectionAccumulator

    acc = DetectionAccumulator.load(detections)
    m = acc.matches()
    ap = acc.evaluate()["AP50"]
    npos = m.gt_count.sum(axis=0)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.9)
    for c, name in enumerate(m.class_names, start=1):
        sel = m.label_s == c
        if not npos[c - 1] or not sel.any():
            continue
        tp, fp = np.cumsum(m.tp_s[sel]), np.cumsum(m.fp_s[sel])
        ax.plot(tp / npos[c - 1], tp / np.maximum(tp + fp, 1e-12), color=PALETTE[(c - 1) % len(PALETTE)],
                label=f"{name} (AP {ap[name]:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall on the test split (selected checkpoint)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_evidence(run_dir: Path) -> list[str]:
    """Write RD.DETECTIONS_PNG and RD.PR_CURVES_PNG into `run_dir` (from best.pt and the test detections);
    returns the problems met (empty when both were written)."""
    run_dir = Path(run_dir)
    problems = []
    for name, make, source in ((RD.DETECTIONS_PNG, detection_grid, run_dir / RD.BEST),
                               (RD.PR_CURVES_PNG, pr_curves, run_dir / RD.TEST_DETECTIONS)):
        if not source.is_file():
            problems.append(f"{name}: no {source.name}")
            continue
        try:
            png = make(source)
        except Exception as exc:  # evidence is a courtesy: never fail the run over it
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if png:
            (run_dir / name).write_bytes(png)
    return problems
