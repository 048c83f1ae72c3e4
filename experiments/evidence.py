"""What a researcher looks at first in a run, drawn at its selected checkpoint (no MLflow here; the writers
log the files as artifacts):

    detections.png   the selected model's detections (class, score) on a few fixed validation images,
                     ground truth in thin white
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

DETECTIONS_PNG, PR_CURVES_PNG = "detections.png", "pr_curves.png"
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]


def detection_grid(checkpoint: Path, images: int = 6, score: float = 0.3, tile: int = 256) -> Optional[bytes]:
    """The checkpoint's detections on the first `images` images of its config's selection split (or of
    the training split when it has none), as one PNG grid."""
    import torch
    from PIL import Image, ImageDraw

    from ssd_core.build import build_dataset
    from ssd_core.imageio import load_rgb, open_image
    from ssd_core.inference import detect, model_from_checkpoint

    model, class_names, cfg = model_from_checkpoint(checkpoint)
    ds = build_dataset(cfg, M.VAL, train=False, class_names=class_names) or \
        build_dataset(cfg, "train", train=False, class_names=class_names)
    n = min(images, len(ds))
    if n == 0:
        return None
    batch = torch.stack([ds[i][0] for i in range(n)])
    det = detect(model, batch, cfg, torch.device("cpu"), score_threshold=score)
    cols = min(3, n)
    grid = Image.new("RGB", (cols * tile, ((n + cols - 1) // cols) * tile), (255, 255, 255))
    for i in range(n):
        img = load_rgb(open_image(ds.image_path(i)))
        w, h = img.size
        f = (tile - 4) / max(w, h)  # every image fills its tile, small ones scaled up: boxes stay legible
        img = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
        draw = ImageDraw.Draw(img)
        for box in (ds.annotation(i).boxes * f).tolist():
            draw.rectangle(box, outline=(255, 255, 255), width=1)
        k = int(det.counts[i])
        for box, label, s in zip((det.boxes[i, :k] * torch.tensor([w, h, w, h]) * f).tolist(),
                                 det.labels[i, :k].tolist(), det.scores[i, :k].tolist()):
            colour = PALETTE[(label - 1) % len(PALETTE)]
            draw.rectangle(box, outline=colour, width=2)
            draw.text((box[0] + 3, box[1] + 2), f"{class_names[label - 1]} {s:.2f}", fill=colour)
        grid.paste(img, ((i % cols) * tile + (tile - img.size[0]) // 2, (i // cols) * tile + (tile - img.size[1]) // 2))
    buf = io.BytesIO()
    grid.save(buf, "PNG")
    return buf.getvalue()


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
    """Write DETECTIONS_PNG and PR_CURVES_PNG into `run_dir` (from best.pt and the test detections);
    returns the problems met (empty when both were written)."""
    run_dir = Path(run_dir)
    problems = []
    for name, make, source in ((DETECTIONS_PNG, detection_grid, run_dir / RD.BEST),
                               (PR_CURVES_PNG, pr_curves, run_dir / RD.TEST_DETECTIONS)):
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
