"""The paper's training augmentation (Liu et al. 2016, sec. 2.2 "Data augmentation", sec. 3.6 zoom out),
fused into one resample.

    SSDAugmentation(cfg.augment, size)   photometric distort, zoom out, sample patch, flip, resize to S x S
    ResizeOnly(size)             evaluation: resize to S x S
    build_transform(cfg, size, train)

Transform contract: `t(img: PIL.Image (lazy or loaded), boxes float32 [n, 4] pixel xyxy, labels int64 [n])
-> (image uint8 [3, S, S], boxes float32 [k, 4] xyxy in [0, 1], labels int64 [k])`.

How it is fast. Zoom out, sample patch, flip and resize are all axis-aligned affine maps, so their
composition is one *source rectangle* in original-image pixels (it extends past the image where zoom
out added mean-filled canvas). `sample_geometry` draws that rectangle exactly as the sequential
pipeline would (zoom-out canvas, then a patch of it); `render` resamples only the part of the
rectangle that lies inside the image, once, straight to its place on a mean-filled S x S output. The
4x canvas is never materialised. For a lazy JPEG the decoder itself works at a reduced scale (PIL
`draft`, DCT scaling by 1/2, 1/4, 1/8) when the rectangle is much larger than the output. Photometric
distortion is pointwise, so it runs on the small resampled patch (before pasting on the mean canvas,
which the reference does not distort either), vectorised in numpy (ssd_core/photometric.py).

Sample-patch options (config `augment.sample_patch`): `min_ious` is a list of minimum IoUs, where a
`null` entry means "the whole image"; `any_patch: true` (default) adds the paper's "randomly sample a
patch" option (no IoU constraint); `whole_image: true` adds the whole image when `min_ious` lacks a
`null`. The paper's set is therefore `min_ious: [null, 0.1, 0.3, 0.5, 0.7, 0.9]` + `any_patch: true`.
A patch passes the min-IoU test when AT LEAST ONE ground-truth box has IoU >= min_iou with it: the
authors' Caffe `SatisfySampleConstraint` returns true at the first ground truth that satisfies it, as
torchvision's `RandomIoUCrop` (`ious.max() < min_jaccard_overlap: continue`) and lufficc/SSD do.
(Requiring EVERY box makes the 0.5-0.9 crops all but impossible on images with several objects.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

from .errors import DataError
from .imageio import DECODE_ERRORS, cannot_decode, exif_orientation, load_rgb, to_rgb
from .photometric import Photometric, photometric_distort, sample_photometric

__all__ = [
    "AugmentSettings", "augment_settings", "Geometry", "Photometric",
    "sample_rect", "sample_geometry", "sample_photometric", "photometric_distort",
    "map_boxes", "render", "SSDAugmentation", "ResizeOnly", "build_transform",
]

MEAN = (123, 117, 104)
WHOLE = None  # the sample-patch mode "use the whole (zoomed) image"
ANY = float("-inf")  # the sample-patch mode "any patch": no IoU constraint
_MAX_ROUNDS = 1000  # safety net for the reference's `while True` over modes


# --------------------------------------------------------------------------------------------------
# Settings: the config's augment section (ssd_core.config.AugmentConfig: the one place its keys, defaults
# and ranges are defined) as the flat draw parameters below.
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentSettings:
    photometric: bool = True
    channel_swap: bool = False  # the reference's "random lighting noise"; off by default
    zoom_out_p: float = 0.5
    zoom_out_max: float = 4.0
    sample_patch: bool = True
    modes: tuple = (WHOLE, 0.1, 0.3, 0.5, 0.7, 0.9, ANY)
    min_scale: float = 0.3
    max_aspect: float = 2.0
    max_trials: int = 50
    flip: bool = True


def augment_settings(cfg: Any = None) -> AugmentSettings:
    """An AugmentConfig (or a dict of its keys, validated as one; None = the paper's defaults) ->
    AugmentSettings. ConfigError names the key (augment.zoom_out.max, ...)."""
    from ssd_core.config import AugmentConfig, validate_section

    if isinstance(cfg, AugmentSettings):
        return cfg
    if cfg is None:
        cfg = AugmentConfig()
    elif not isinstance(cfg, AugmentConfig):
        cfg = validate_section(AugmentConfig, cfg if isinstance(cfg, dict) else vars(cfg), "augment", "augment config")
    sp = cfg.sample_patch
    modes = [WHOLE if v is None else float(v) for v in sp.min_ious]
    if sp.whole_image and WHOLE not in modes:
        modes.insert(0, WHOLE)
    if sp.any_patch:
        modes.append(ANY)
    return AugmentSettings(photometric=cfg.photometric, channel_swap=cfg.channel_swap, zoom_out_p=cfg.zoom_out.p,
                           zoom_out_max=cfg.zoom_out.max, sample_patch=sp.enabled, modes=tuple(modes),
                           min_scale=sp.min_scale, max_aspect=sp.max_aspect, max_trials=sp.max_trials, flip=cfg.flip)


# --------------------------------------------------------------------------------------------------
# Geometry: zoom out + sample patch + flip as one source rectangle.
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """One draw of the geometric augmentation, in original-image pixels.

    rect: the source rectangle x0, y0, x1, y1 that becomes the S x S output (may extend past the image
    where zoom out added canvas); flip: mirror horizontally; zoom: the canvas ratio (1 = no zoom out);
    offset: where the image sits on the canvas; mode: the sample-patch option drawn (WHOLE=None, ANY,
    or a minimum IoU).
    """

    rect: tuple[float, float, float, float]
    flip: bool = False
    zoom: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)
    mode: Optional[float] = WHOLE


def sample_rect(rng: np.random.Generator, width: float, height: float, boxes: torch.Tensor,
                modes: Sequence[Optional[float]], max_trials: int = 50, min_scale: float = 0.3,
                max_aspect: float = 2.0) -> tuple[Optional[float], np.ndarray]:
    """Sample patch (sec. 2.2) on a width x height image: -> (mode, rect xyxy float64).

    As the reference: pick a mode at random; try up to `max_trials` patches with sides in
    [min_scale, 1] of the image and aspect h/w in [1/max_aspect, max_aspect]; accept the first one whose
    IoU with AT LEAST ONE box is >= the mode's minimum (Caffe's SatisfySampleConstraint) and that
    contains at least one box centre; when all trials fail, pick a mode again. The trials of one round
    are drawn and tested at once.
    """
    n = boxes.shape[0]
    boxes = boxes.double()
    centres = ((boxes[:, :2] + boxes[:, 2:]) / 2).numpy()
    whole = np.array([0.0, 0.0, width, height])
    for _ in range(_MAX_ROUNDS):
        mode = modes[int(rng.integers(len(modes)))]
        if mode is WHOLE:
            return WHOLE, whole
        u = rng.random((4, max_trials))
        w = width * (min_scale + (1 - min_scale) * u[0])
        h = height * (min_scale + (1 - min_scale) * u[1])
        x0, y0 = u[2] * (width - w), u[3] * (height - h)
        rects = np.stack([x0, y0, x0 + w, y0 + h], 1)
        ok = (h / w >= 1 / max_aspect) & (h / w <= max_aspect)
        if n:
            if mode != ANY:
                ok &= box_iou(torch.from_numpy(rects), boxes).max(1).values.numpy() >= mode  # any object
            cx, cy = centres[None, :, 0], centres[None, :, 1]
            ok &= ((cx > rects[:, 0:1]) & (cy > rects[:, 1:2]) & (cx < rects[:, 2:3]) & (cy < rects[:, 3:4])).any(1)
        hits = np.flatnonzero(ok)
        if len(hits):
            return mode, rects[hits[0]]
    return WHOLE, whole


def sample_geometry(rng: np.random.Generator, settings: AugmentSettings, width: int, height: int,
                    boxes: torch.Tensor) -> Geometry:
    """Zoom out (p, canvas ratio U(1, max) per side, image at a uniform offset), then sample patch on the
    canvas, then flip: returned as one rectangle in original-image coordinates."""
    zoom, left, top = 1.0, 0.0, 0.0
    if rng.random() < settings.zoom_out_p:
        zoom = float(rng.uniform(1.0, settings.zoom_out_max))
        left = float(rng.uniform(0.0, width * zoom - width))
        top = float(rng.uniform(0.0, height * zoom - height))
    cw, ch = width * zoom, height * zoom
    mode, rect = WHOLE, np.array([0.0, 0.0, cw, ch])
    if settings.sample_patch:
        shift = torch.tensor([left, top, left, top], dtype=torch.float64)
        mode, rect = sample_rect(rng, cw, ch, boxes.double() + shift, settings.modes, settings.max_trials,
                                 settings.min_scale, settings.max_aspect)
    flip = bool(settings.flip and rng.random() < 0.5)
    x0, y0, x1, y1 = (float(v) for v in rect)
    return Geometry((x0 - left, y0 - top, x1 - left, y1 - top), flip, zoom, (left, top), mode)


def map_boxes(boxes: torch.Tensor, labels: torch.Tensor, rect: Sequence[float], flip: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes through the rectangle's affine map: keep those whose centre lies inside the rectangle
    (the paper's rule), clip to it, normalise to [0, 1], mirror when flipped; drop empty boxes."""
    x0, y0, x1, y1 = (float(v) for v in rect)
    b = boxes.numpy().astype(np.float64)  # a handful of boxes: numpy beats torch's per-op overhead
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    keep = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
    lo, scale = np.array([x0, y0, x0, y0]), np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
    b = np.clip((b[keep] - lo) / scale, 0.0, 1.0)
    if flip:
        b = np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], 1)
    nonempty = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return torch.from_numpy(b[nonempty].astype(np.float32)), labels[torch.from_numpy(np.flatnonzero(keep)[nonempty])]


# --------------------------------------------------------------------------------------------------
# Decode + resample once.
# --------------------------------------------------------------------------------------------------
def _upright(img: Image.Image) -> Image.Image:
    """Images with an EXIF rotation are decoded in full (no draft) and turned upright first."""
    return load_rgb(img) if exif_orientation(img) != 1 else img


def _decode(img: Image.Image, rect: Sequence[float], size: int, reduced: bool) -> tuple[Image.Image, float]:
    """RGB pixels of `img`, decoded at a reduced JPEG scale when the rectangle allows: -> (rgb, scale)
    where reduced-image pixel = original pixel / scale."""
    scale = 1.0
    width, height = img.size
    if reduced and getattr(img, "tile", None) and hasattr(img, "draft"):
        rw, rh = rect[2] - rect[0], rect[3] - rect[1]
        need = (max(1, math.ceil(width * size / rw)), max(1, math.ceil(height * size / rh)))
        if need[0] * 2 <= width and need[1] * 2 <= height:
            drafted = img.draft("RGB", need)
            if drafted is not None:
                scale = width / drafted[1][2]
    try:
        img.load()  # decode now (at the drafted scale), so a corrupt file fails here with its name
        return to_rgb(img), scale
    except DECODE_ERRORS as exc:
        raise cannot_decode(img, exc) from exc


def render(img: Image.Image, rect: Sequence[float], size: int, mean: Sequence[int] = MEAN,
           flip: bool = False, photometric: Optional[Photometric] = None, reduced_decode: bool = True,
           reducing_gap: Optional[float] = 2.0) -> torch.Tensor:
    """The S x S uint8 [3, S, S] view of source rectangle `rect` (original pixels): the part inside the
    image is resampled once (bilinear, antialiased) onto a mean-filled output; flip folded in."""
    width, height = img.size
    rgb, scale = _decode(img, rect, size, reduced_decode)
    x0, y0, x1, y1 = (v / scale for v in rect)
    bw, bh = width / scale, height / scale  # image extent in decoded pixels
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    # Output pixels wholly covered by the image; the source box is their exact pre-image.
    u0 = min(size, max(0, math.ceil((max(x0, 0.0) - x0) * sx - 1e-6)))
    u1 = min(size, max(0, math.floor((min(x1, bw) - x0) * sx + 1e-6)))
    v0 = min(size, max(0, math.ceil((max(y0, 0.0) - y0) * sy - 1e-6)))
    v1 = min(size, max(0, math.floor((min(y1, bh) - y0) * sy + 1e-6)))
    out = np.empty((3, size, size), np.uint8)
    out[...] = np.asarray(mean, np.uint8)[:, None, None]
    if u1 > u0 and v1 > v0:
        box = (max(0.0, x0 + u0 / sx), max(0.0, y0 + v0 / sy), min(bw, x0 + u1 / sx), min(bh, y0 + v1 / sy))
        patch = rgb.resize((u1 - u0, v1 - v0), Image.BILINEAR, box=box, reducing_gap=reducing_gap)
        if flip:
            patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
            u0, u1 = size - u1, size - u0
        planar = np.asarray(patch).transpose(2, 0, 1)
        out[:, v0:v1, u0:u1] = planar if photometric is None else photometric_distort(planar, photometric)
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------------------------
# The transforms.
# --------------------------------------------------------------------------------------------------
def _as_targets(img: Image.Image, boxes, labels) -> tuple[torch.Tensor, torch.Tensor]:
    b = torch.as_tensor(np.asarray(boxes, np.float32) if not torch.is_tensor(boxes) else boxes).float()
    lab = torch.as_tensor(np.asarray(labels, np.int64) if not torch.is_tensor(labels) else labels).long()
    if b.numel() == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4 or lab.shape != (b.shape[0],):
        name = getattr(img, "filename", "") or "<in-memory image>"
        raise DataError(f"{name}: boxes must be [n, 4] with n labels, got boxes {tuple(b.shape)} and "
                        f"labels {tuple(lab.shape)}")
    return b, lab


class _Seeded:
    """Per-process random state: a numpy Generator seeded from (seed, torch.initial_seed()), so each
    DataLoader worker (torch seeds them base_seed + worker_id) draws its own stream, reproducibly."""

    def __init__(self, seed: Optional[int] = None):
        self.seed = seed
        self._key: Optional[int] = None
        self._rng: Optional[np.random.Generator] = None

    def generator(self) -> np.random.Generator:
        key = torch.initial_seed()
        if self._rng is None or key != self._key:
            entropy = [key] if self.seed is None else [int(self.seed), key]
            self._key, self._rng = key, np.random.default_rng(np.random.SeedSequence(entropy))
        return self._rng


class SSDAugmentation(_Seeded):
    """Training transform: photometric distort, zoom out, sample patch, flip, resize (sec. 2.2, 3.6).

    `cfg` is an AugmentConfig-like object or dict (see module docstring). `rng` in __call__ overrides
    the transform's own generator (tests). `reduced_decode` lets JPEGs decode at 1/2..1/8 scale.
    """

    def __init__(self, cfg: Any = None, size: int = 300, mean: Sequence[int] = MEAN, seed: Optional[int] = None,
                 reduced_decode: bool = True, reducing_gap: Optional[float] = 2.0):
        super().__init__(seed)
        self.settings = augment_settings(cfg)
        self.size, self.mean = int(size), tuple(int(m) for m in mean)
        self.reduced_decode, self.reducing_gap = reduced_decode, reducing_gap

    def __call__(self, img: Image.Image, boxes, labels, rng: Optional[np.random.Generator] = None):
        rng = rng if rng is not None else self.generator()
        boxes, labels = _as_targets(img, boxes, labels)
        img = _upright(img)
        geo = sample_geometry(rng, self.settings, img.size[0], img.size[1], boxes)
        photo = sample_photometric(rng, self.settings.channel_swap) if self.settings.photometric else None
        image = render(img, geo.rect, self.size, self.mean, geo.flip, photo, self.reduced_decode, self.reducing_gap)
        out_boxes, out_labels = map_boxes(boxes, labels, geo.rect, geo.flip)
        return image, out_boxes, out_labels


class ResizeOnly:
    """Evaluation transform: the whole image resized to S x S; boxes divided by the image size."""

    def __init__(self, size: int = 300, reduced_decode: bool = True, reducing_gap: Optional[float] = 2.0):
        self.size, self.reduced_decode, self.reducing_gap = int(size), reduced_decode, reducing_gap

    def __call__(self, img: Image.Image, boxes, labels):
        boxes, labels = _as_targets(img, boxes, labels)
        img = _upright(img)
        w, h = img.size
        image = render(img, (0.0, 0.0, float(w), float(h)), self.size, MEAN, False, None,
                       self.reduced_decode, self.reducing_gap)
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        return image, (boxes / scale).clamp_(0, 1), labels


def build_transform(augment_cfg: Any, size: int, train: bool, mean: Sequence[int] = MEAN, seed: Optional[int] = None):
    """The training pipeline when `train`, else ResizeOnly."""
    return SSDAugmentation(augment_cfg, size, mean, seed=seed) if train else ResizeOnly(size)
