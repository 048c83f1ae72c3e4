"""Robust image reading: every image a dataset hands to the transforms goes through here.

    open_image(path)      lazy PIL open: header read and validated, pixels not decoded yet
    exif_orientation(img) the EXIF orientation tag (1..8; 1 = upright, also when absent/invalid)
    to_rgb(img)           any PIL mode (1, L, LA, P with transparency, RGBA, CMYK, I;16, I, F, ...) -> RGB
    load_rgb(img)         full decode + EXIF orientation + RGB: what a detector should see

A missing, empty, truncated or unreadable file raises `DataError` naming the file, both at open time
(header) and at decode time (pixels), so a bad image fails with its name instead of a PIL traceback
from inside a DataLoader worker. Transparent pixels are composited on a neutral grey background.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

__all__ = ["BACKGROUND", "IMAGE_SUFFIXES", "DECODE_ERRORS", "cannot_decode", "open_image", "exif_orientation", "to_rgb", "load_rgb"]

BACKGROUND = (128, 128, 128)  # neutral grey under transparent pixels
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})  # lower case: what a
# dataset folder's images end with (YOLO folders, LabelImg folders)
_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
# What PIL raises for a truncated, corrupt or hostile image, at open or at decode time (one tuple for the
# whole package), and the one error it becomes.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def cannot_decode(img_or_path, exc: BaseException) -> DataError:
    """The DataError for an image that cannot be decoded, naming the file."""
    return DataError(f"{_name(img_or_path)}: cannot decode image: {exc}")


def _name(img_or_path) -> str:
    if isinstance(img_or_path, (str, os.PathLike)):
        return str(img_or_path)
    return getattr(img_or_path, "filename", "") or "<in-memory image>"


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open `path` lazily (PIL reads only the header) and check it is a non-empty, readable image."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: image file not found")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: image file is empty (0 bytes)")
    try:
        img = Image.open(p)
    except UnidentifiedImageError as exc:
        raise DataError(f"{p}: not a readable image ({exc.__class__.__name__})") from exc
    except DECODE_ERRORS as exc:
        raise DataError(f"{p}: cannot open image: {exc}") from exc
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise DataError(f"{p}: image has an empty size {w}x{h}")
    return img


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (0x0112) of `img`: 1..8, and 1 when absent or invalid."""
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except (TypeError, ValueError, OSError, SyntaxError):
        return 1
    return value if 1 <= value <= 8 else 1


def _composite(img: Image.Image) -> Image.Image:
    """Alpha-composite on the neutral BACKGROUND and drop the alpha channel."""
    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size, BACKGROUND)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit (I;16*), 32-bit integer (I) and float (F) greyscale -> 8-bit RGB.

    Integer images are assumed to span 16 bits (PNG stores 16-bit grey as I/I;16); an I image whose
    values already fit in 8 bits is kept as is. Float images are min-max scaled.
    """
    a = np.asarray(img)
    if img.mode == "F":
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = (np.nan_to_num(a, nan=lo) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
    else:
        a = a.astype(np.int64)
        if img.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a >> 8 if a.max(initial=0) <= 0xFFFF else (a - a.min()) * 255 // max(1, int(a.max() - a.min()))
    grey = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L")
    return grey.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha composited on BACKGROUND, 16-bit scaled down)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        return _composite(img) if "transparency" in img.info else img.convert("RGB")
    if mode in _ALPHA_MODES:
        return _composite(img)
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(img)
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV, RGBX


def load_rgb(img: Image.Image | str | os.PathLike) -> Image.Image:
    """Decode `img` (or open the path), apply its EXIF orientation and convert to RGB.

    A truncated or corrupt file raises DataError naming the file.
    """
    opened = isinstance(img, (str, os.PathLike))
    if opened:
        img = open_image(img)
    name = _name(img)
    try:
        img.load()
        upright = ImageOps.exif_transpose(img) if exif_orientation(img) != 1 else img
        return to_rgb(upright)
    except DECODE_ERRORS as exc:
        if opened:
            img.close()
        raise cannot_decode(name, exc) from exc
