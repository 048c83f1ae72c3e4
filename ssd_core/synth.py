"""A synthetic detection set in PASCAL VOC format: coloured shapes on textured backgrounds.

    generate(out, images, seed, image_size)        write <out>/SHAPES/{Annotations, JPEGImages, ImageSets/Main}
    ensure_synthetic(root, images, seed, ...)      the same, idempotent and safe for concurrent callers

Real JPEG + XML files, so the demo exercises exactly the reader real data goes through
(ssd_core.data.VOCDataset(root, ["SHAPES/train"])). Every image has 1-4 labelled shapes of the
classes SYNTH_CLASSES, sizes log-uniform from tiny (~8% of the short side) to large (~55%), any
colour (the class is the shape, never the colour), in-plane rotation, partial occlusion by other
shapes (a shape less than 40% visible is marked difficult), truncation at the border, unlabelled
clutter (lines, arcs, zigzags) and a textured background (gradient, stripes or blotchy noise).

Deterministic: image i depends only on (seed, i, image_size), and the files are byte-identical
across runs. Boxes follow VOC: 1-based, pixel-inclusive.
"""
from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from .errors import DataError

__all__ = ["SYNTH_CLASSES", "SUBDIR", "MARKER", "generate", "ensure_synthetic", "render_image"]

SYNTH_CLASSES = ("circle", "square", "triangle", "cross")
SUBDIR = "SHAPES"
MARKER = ".ssdlab_synth.json"
VERSION = 1
SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}  # trainval = train + val
MIN_SIDE, MAX_SIDE = 0.08, 0.55                   # object extent as a fraction of the short side
DIFFICULT_VISIBLE = 0.4

# Unit outlines (extent 1, centred at 0) of the polygon classes; the circle is drawn as an ellipse.
_ARM = 1 / 6
_UNIT = {
    "square": np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]),
    "triangle": np.array([[0.0, -0.5], [0.5, 0.5 * np.sqrt(3) - 0.5], [-0.5, 0.5 * np.sqrt(3) - 0.5]]) + [0, 0.067],
    "cross": np.array([[-_ARM, -0.5], [_ARM, -0.5], [_ARM, -_ARM], [0.5, -_ARM], [0.5, _ARM], [_ARM, _ARM],
                       [_ARM, 0.5], [-_ARM, 0.5], [-_ARM, _ARM], [-0.5, _ARM], [-0.5, -_ARM], [-_ARM, -_ARM]]),
}


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A gradient, stripes or blotchy noise between two muted colours, plus fine noise (RGB)."""
    grey = rng.uniform(70, 190)
    c1, c2 = (grey + 0.35 * (rng.uniform(40, 220, 3) - grey) for _ in range(2))
    angle = rng.uniform(0, np.pi)
    t = (np.arange(w, dtype=np.float32) * np.float32(np.cos(angle)))[None, :] \
        + (np.arange(h, dtype=np.float32) * np.float32(np.sin(angle)))[:, None]
    kind = rng.integers(3)
    if kind == 0:    # linear gradient
        mix = Image.fromarray(((t - t.min()) * np.float32(255 / max(1.0, float(t.max() - t.min())))).astype(np.uint8))
    elif kind == 1:  # soft stripes
        mix = Image.fromarray((127.5 + 127.5 * np.sin(t * np.float32(2 * np.pi / rng.uniform(6, 40)))).astype(np.uint8))
    else:            # blotches: coarse noise upsampled bilinearly
        coarse = (rng.random((max(2, h // 24), max(2, w // 24))) * 255).astype(np.uint8)
        mix = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    sigma = int(rng.integers(2, 13))  # fine noise, uniform in [-sigma, sigma], the same on every channel
    noise = Image.fromarray(rng.integers(0, 2 * sigma + 1, (h, w), dtype=np.uint8))
    # PIL does the per-pixel work in C: a lookup table blends c1..c2, add() applies the noise with clipping
    luts = np.linspace(c1, c2, 256).round().astype(np.uint8).T
    rgb = Image.merge("RGB", [mix.point(lut.tolist()) for lut in luts])
    return ImageChops.add(rgb, Image.merge("RGB", (noise,) * 3), 1.0, -sigma)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, count: int) -> None:
    """Unlabelled distractors: lines, arcs and zigzags (never a closed filled shape)."""
    for _ in range(count):
        colour, width = _colour(rng), int(rng.integers(1, 4))
        kind = rng.integers(3)
        if kind == 0:
            draw.line([tuple(rng.uniform(0, [w, h])) for _ in range(2)], fill=colour, width=width)
        elif kind == 1:
            x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 0.3 * min(w, h))
            start = rng.uniform(0, 360)
            draw.arc([x - r, y - r, x + r, y + r], start, start + rng.uniform(40, 200), fill=colour, width=width)
        else:
            pts = np.cumsum(rng.uniform(-25, 25, (int(rng.integers(3, 7)), 2)), 0) + rng.uniform(0, [w, h])
            draw.line([tuple(p) for p in pts], fill=colour, width=width)


def _shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, side: float, angle: float, fill) -> None:
    if name == "circle":
        r = side / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        return
    c, s = np.cos(angle), np.sin(angle)
    pts = _UNIT[name] @ np.array([[c, s], [-s, c]]) * side + [cx, cy]
    draw.polygon([tuple(p) for p in pts], fill=fill)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], -1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def render_image(rng: np.random.Generator, image_size: int = 256, min_side: float = MIN_SIDE,
                 max_side: float = MAX_SIDE, max_objects: int = 4, clutter: bool = True) -> tuple[Image.Image, list[dict]]:
    """One RGB image and its objects: dicts with name, box (0-based inclusive pixel columns/rows
    x0, y0, x1, y1), truncated, difficult. Objects: 1..max_objects, sides log-uniform in
    [min_side, max_side] of the short side; `clutter` draws the unlabelled distractors."""
    short = int(round(image_size * rng.uniform(0.75, 1.0)))
    w, h = (image_size, short) if rng.random() < 0.5 else (short, image_size)
    canvas = _background(rng, w, h)
    draw = ImageDraw.Draw(canvas)
    clutter_count = int(rng.integers(2, 7))
    if clutter:
        _clutter(draw, rng, w, h, clutter_count)

    ids = Image.new("L", (w, h), 0)                   # which object owns each pixel (occlusion)
    id_draw = ImageDraw.Draw(ids)
    objects, placed = [], np.zeros((0, 4))
    for _ in range(int(rng.integers(1, max_objects + 1))):
        name = SYNTH_CLASSES[int(rng.integers(len(SYNTH_CLASSES)))]
        side = min(w, h) * float(np.exp(rng.uniform(np.log(min_side), np.log(max_side))))
        angle = rng.uniform(-np.pi / 8, np.pi / 8) if name != "triangle" else rng.uniform(-np.pi, np.pi)
        for _ in range(10):                            # keep occlusion partial: IoU < 0.35
            cx, cy = rng.uniform(0.3 * side, [w - 0.3 * side, h - 0.3 * side])
            box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
            if not len(placed) or _iou(box, placed).max() < 0.35:
                break
        else:
            continue
        placed = np.vstack([placed, box])
        own = Image.new("1", (w, h), 0)
        _shape(ImageDraw.Draw(own), name, cx, cy, side, angle, 1)
        mask = np.asarray(own)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if not len(rows):
            continue
        _shape(draw, name, cx, cy, side, angle, _colour(rng))
        _shape(id_draw, name, cx, cy, side, angle, len(objects) + 1)
        objects.append({"name": name, "box": (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])),
                        "pixels": int(mask.sum()),
                        "truncated": bool(cx - side / 2 < 0 or cy - side / 2 < 0 or cx + side / 2 > w or cy + side / 2 > h)})
    visible = np.bincount(np.asarray(ids).ravel(), minlength=len(objects) + 1)[1:]
    for obj, pixels in zip(objects, visible):
        obj["difficult"] = bool(pixels < DIFFICULT_VISIBLE * obj.pop("pixels"))  # mostly occluded
    on_top = int(rng.integers(0, 3))
    if clutter:
        _clutter(draw, rng, w, h, on_top)  # a few distractors on top (occluders)
    return canvas, objects


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def _xml(image_id: str, w: int, h: int, objects: list[dict]) -> str:
    parts = [f"<annotation>\n\t<folder>{SUBDIR}</folder>\n\t<filename>{image_id}.jpg</filename>\n"
             f"\t<source><database>ssdlab synthetic shapes</database></source>\n"
             f"\t<size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n\t<segmented>0</segmented>\n"]
    for o in objects:
        x0, y0, x1, y1 = o["box"]
        parts.append(f"\t<object>\n\t\t<name>{o['name']}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>{int(o['truncated'])}</truncated>\n\t\t<difficult>{int(o['difficult'])}</difficult>\n"
                     f"\t\t<bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox>\n"
                     f"\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


PROFILE = {"min_side": MIN_SIDE, "max_side": MAX_SIDE, "max_objects": 4, "clutter": True}  # the defaults


def _params(images: int, seed: int, image_size: int, **profile) -> dict:
    """What the marker records; the profile only where it differs from the defaults (so sets made
    before it existed are still recognised)."""
    extra = {k: v for k, v in profile.items() if v != PROFILE[k]}
    return {"generator": "ssd_core.synth", "version": VERSION, "images": int(images), "seed": int(seed),
            "image_size": int(image_size), "classes": list(SYNTH_CLASSES), **extra}


def generate(out: str | Path, images: int = 300, seed: int = 0, image_size: int = 256, **profile) -> Path:
    """Write `images` images to <out>/SHAPES/ (VOC layout + splits + a marker) and return <out>.
    `profile`: render_image's min_side, max_side, max_objects, clutter."""
    unknown = set(profile) - set(PROFILE)
    if unknown:
        raise DataError(f"{out}: unknown synthetic options {sorted(unknown)}; expected {sorted(PROFILE)}")
    profile = {**PROFILE, **profile}
    if images < 1 or image_size < 32:
        raise DataError(f"{out}: need images >= 1 and image_size >= 32 (got {images}, {image_size})")
    if not 0 < profile["min_side"] <= profile["max_side"] <= 1 or profile["max_objects"] < 1:
        raise DataError(f"{out}: need 0 < min_side <= max_side <= 1 and max_objects >= 1 (got {profile})")
    out = Path(out)
    base = out / SUBDIR
    if base.exists() and any(base.iterdir()):
        raise DataError(f"{base}: already exists; remove it or use ensure_synthetic")
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / d).mkdir(parents=True, exist_ok=True)
    ids = [f"{i:06d}" for i in range(images)]
    for i, image_id in enumerate(ids):
        img, objects = render_image(np.random.default_rng([seed, i]), image_size, **profile)
        img.save(base / "JPEGImages" / f"{image_id}.jpg", quality=90)
        (base / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, *img.size, objects))
    order = np.random.default_rng([seed, 1 << 30]).permutation(images)
    n_val, n_test = int(images * SPLITS["val"]), int(images * SPLITS["test"])
    split_of = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    split_of["trainval"] = np.concatenate([split_of["train"], split_of["val"]])
    for split, members in split_of.items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{ids[j]}\n" for j in sorted(members)))
    (base / MARKER).write_text(json.dumps(_params(images, seed, image_size, **profile), sort_keys=True) + "\n")
    return out


def _is_complete(base: Path, params: dict) -> bool:
    try:
        return json.loads((base / MARKER).read_text()) == params
    except (OSError, ValueError):
        return False


def ensure_synthetic(root: str | Path, images: int = 300, seed: int = 0, image_size: int = 256, **profile) -> Path:
    """Make <root>/SHAPES hold exactly generate(root, images, seed, image_size); return root.

    Idempotent (a marker file records the parameters) and safe when several processes call it at
    once: each builds in a private temp dir under root and renames it into place atomically; a
    stale set (other parameters, or a partial one without marker) is moved aside first.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        from ssd_core.errors import DataError
        raise DataError(f"{root}: data.root is a file, not a folder for the synthetic set")
    base, params = root / SUBDIR, _params(images, seed, image_size, **profile)
    if _is_complete(base, params):
        return root
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synth-build-", dir=root))
    try:
        generate(tmp, images, seed, image_size, **profile)
        for _ in range(5):
            try:
                os.rename(tmp / SUBDIR, base)
                return root
            except OSError:                  # base exists: another process won the race, or it is stale
                if _is_complete(base, params):
                    return root
                aside = Path(tempfile.mkdtemp(prefix=".synth-old-", dir=root))
                try:
                    os.rename(base, aside / SUBDIR)
                except OSError:
                    pass
                shutil.rmtree(aside, ignore_errors=True)
        raise DataError(f"{base}: could not install the synthetic set (another process keeps replacing it)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
