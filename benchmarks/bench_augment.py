"""SSD training augmentation, images/s per core: ssd_core.augment (fused: one source rectangle, one
resample, photometric at output size, reduced-scale JPEG decode) against torchvision.transforms.v2's SSD
pipeline (RandomPhotometricDistort, RandomZoomOut(fill=mean), RandomIoUCrop, RandomHorizontalFlip,
Resize((S, S)), SanitizeBoundingBoxes) on the same images and boxes.

    python -m benchmarks.bench_augment [--quick] [--size 300]

Cases: (1) `memory`: images already decoded (ours: loaded PIL images; torchvision: uint8 tensors);
(2) `jpeg`: both decode from JPEG bytes in the loop (ours: lazy PIL open + draft; torchvision:
torchvision.io.decode_jpeg), and `jpeg_nodraft`: ours with reduced-scale decoding switched off.
Repetitions are interleaved (ours, reference, ours, ...) so load from other processes hits both; CPU
(process) time is printed too, as it is less sensitive to that load.
Images: BCCD JPEGs from ../shared/data/bccd when present, else synthetic JPEGs made here.
Each case ends with a line `RESULT name ours_img_s ref_img_s ratio`.
"""
from __future__ import annotations

import argparse
import io
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.io import decode_jpeg  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from ssd_core.augment import MEAN, SSDAugmentation  # noqa: E402

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "BCCD"


def load_samples(n: int) -> tuple[list[bytes], list[torch.Tensor], str]:
    """(jpeg bytes, pixel xyxy boxes) for n images: BCCD when present, else synthetic."""
    if (BCCD / "JPEGImages").is_dir():
        out_bytes, out_boxes = [], []
        for xml in sorted((BCCD / "Annotations").glob("*.xml")):
            jpg = BCCD / "JPEGImages" / (xml.stem + ".jpg")
            if not jpg.is_file():
                continue
            boxes = [[float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
                     for o in ET.parse(xml).getroot().iter("object")]
            boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
            if boxes:
                out_bytes.append(jpg.read_bytes())
                out_boxes.append(torch.tensor(boxes, dtype=torch.float32))
            if len(out_bytes) == n:
                return out_bytes, out_boxes, f"BCCD ({BCCD})"
        return out_bytes, out_boxes, f"BCCD ({BCCD})"
    rng = np.random.default_rng(0)
    out_bytes, out_boxes = [], []
    for _ in range(n):
        w, h = 640, 480
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 / w), (yy * 255 / h), np.full_like(xx, 128)], -1).astype(np.uint8)
        x0 = rng.uniform(0, w - 60, 12)
        y0 = rng.uniform(0, h - 60, 12)
        b = np.stack([x0, y0, x0 + rng.uniform(20, 60, 12), y0 + rng.uniform(20, 60, 12)], 1)
        for bx in b.astype(int):
            img[bx[1]:bx[3], bx[0]:bx[2]] = rng.integers(0, 255, 3)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out_bytes.append(buf.getvalue())
        out_boxes.append(torch.tensor(b, dtype=torch.float32))
    return out_bytes, out_boxes, "synthetic 640x480 JPEGs"


def torchvision_pipeline(size: int) -> v2.Compose:
    return v2.Compose([
        v2.RandomPhotometricDistort(p=0.5),
        v2.RandomZoomOut(fill={tv_tensors.Image: MEAN, "others": 0}),
        v2.RandomIoUCrop(),
        v2.RandomHorizontalFlip(p=0.5),
        v2.Resize((size, size)),
        v2.SanitizeBoundingBoxes(),
    ])


def run_ours(transform, images, boxes, labels) -> int:
    for img, b, lab in zip(images, boxes, labels):
        transform(img() if callable(img) else img, b, lab)
    return len(images)


def run_ref(pipeline, images, boxes, labels) -> int:
    for img, b, lab in zip(images, boxes, labels):
        t = img() if callable(img) else img
        h, w = t.shape[-2:]
        target = {"boxes": tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=(h, w)), "labels": lab}
        pipeline(tv_tensors.Image(t), target)
    return len(images)


def interleaved(cases: dict, ref, rounds: int) -> None:
    """Time each of `cases` (name -> ours) and the reference in turn, `rounds` times; wall and CPU time."""
    wall = {name: 0.0 for name in [*cases, "ref"]}
    cpu, count = dict(wall), dict.fromkeys(wall, 0)
    for _ in range(rounds):
        for name, fn in [*cases.items(), ("ref", ref)]:
            w0, c0 = time.perf_counter(), time.process_time()
            count[name] += fn()
            wall[name] += time.perf_counter() - w0
            cpu[name] += time.process_time() - c0
    b, b_cpu = count["ref"] / wall["ref"], count["ref"] / cpu["ref"]
    for name in cases:
        a, a_cpu = count[name] / wall[name], count[name] / cpu[name]
        print(f"{name:14s} ours {a:7.1f} img/s   torchvision.v2 {b:7.1f} img/s   ratio {a / b:5.2f}x"
              f"   (CPU time: {a_cpu:.1f} vs {b_cpu:.1f} img/s, {a_cpu / b_cpu:.2f}x)")
        print(f"RESULT {name} {a:.1f} {b:.1f} {a / b:.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds (about 30 s when idle)")
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = args.images or (24 if args.quick else 100)
    rounds = args.rounds or (3 if args.quick else 5)
    jpegs, boxes, source = load_samples(n)
    labels = [torch.ones(len(b), dtype=torch.int64) for b in boxes]
    print(f"{len(jpegs)} images from {source}; output {args.size}x{args.size}; 1 thread; {rounds} interleaved rounds")

    torch.manual_seed(0)
    ours = SSDAugmentation(None, args.size, seed=0)
    ours_full = SSDAugmentation(None, args.size, seed=0, reduced_decode=False)
    ref = torchvision_pipeline(args.size)

    pil_images = []
    for data in jpegs:
        im = Image.open(io.BytesIO(data))
        im.load()
        pil_images.append(im)
    tensors = [decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8)) for d in jpegs]
    interleaved({"memory": lambda: run_ours(ours, pil_images, boxes, labels)},
                lambda: run_ref(ref, tensors, boxes, labels), rounds)

    lazy = [lambda d=d: Image.open(io.BytesIO(d)) for d in jpegs]
    raw = [lambda d=d: decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8)) for d in jpegs]
    interleaved({"jpeg": lambda: run_ours(ours, lazy, boxes, labels),
                 "jpeg_nodraft": lambda: run_ours(ours_full, lazy, boxes, labels)},
                lambda: run_ref(ref, raw, boxes, labels), rounds)


if __name__ == "__main__":
    main()
