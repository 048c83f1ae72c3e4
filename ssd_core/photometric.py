"""Photometric distortion (paper sec. 2.2, "Data augmentation": the photo-metric distortions applied to
each sampled patch), as the reference ports' PhotometricDistort: random brightness, contrast (before or
after the HSV part), saturation and hue, each with p = 0.5, and an optional channel swap (their "random
lighting noise", not in the paper).

    sample_photometric(rng)      one draw (Photometric)
    photometric_distort(img, p)  that draw applied to planar uint8 RGB [3, h, w], vectorised in numpy

ssd_core/augment.py applies it pointwise to the small resampled patch, at output size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Photometric:
    """One draw: each op is None when skipped (each has p = 0.5)."""

    brightness: Optional[float] = None  # added, U(-32, 32)
    contrast: Optional[float] = None  # multiplied, U(0.5, 1.5)
    contrast_first: bool = True  # contrast before (True) or after the HSV part, at random
    saturation: Optional[float] = None  # HSV S multiplied, U(0.5, 1.5)
    hue: Optional[float] = None  # HSV H shifted, U(-18, 18) degrees
    channels: Optional[tuple[int, int, int]] = None  # channel swap permutation (optional)


_PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def sample_photometric(rng: np.random.Generator, channel_swap: bool = False) -> Photometric:
    u = rng.random(9)
    return Photometric(
        brightness=-32 + 64 * u[1] if u[0] < 0.5 else None,
        contrast_first=bool(u[2] < 0.5),
        contrast=0.5 + u[4] if u[3] < 0.5 else None,
        saturation=0.5 + u[6] if u[5] < 0.5 else None,
        hue=-18 + 36 * u[8] if u[7] < 0.5 else None,
        channels=_PERMS[int(rng.integers(6))] if channel_swap and rng.random() < 0.5 else None,
    )


def photometric_distort(img: np.ndarray, p: Photometric) -> np.ndarray:
    """Apply one Photometric draw to planar uint8 RGB [3, h, w]; values are clipped to [0, 255] after
    each op (the reference clips only at the end; torchvision clips after each op too)."""
    if p == Photometric(contrast_first=p.contrast_first):
        return img
    x = img.astype(np.float32, order="C")  # planar: contiguous channel planes
    if p.brightness is not None:
        x += np.float32(p.brightness)
        np.clip(x, 0, 255, out=x)
    if p.contrast is not None and p.contrast_first:
        x *= np.float32(p.contrast)
        np.clip(x, 0, 255, out=x)
    if p.saturation is not None or p.hue is not None:
        x = _hue_saturation(x, 1.0 if p.saturation is None else p.saturation, p.hue or 0.0)
    if p.contrast is not None and not p.contrast_first:
        x *= np.float32(p.contrast)
        np.clip(x, 0, 255, out=x)
    if p.channels is not None:
        x = x[list(p.channels)]
    return np.rint(x, out=x).astype(np.uint8)


def _hue_saturation(x: np.ndarray, saturation: float, hue: float) -> np.ndarray:
    """Scale HSV saturation and rotate HSV hue (degrees) of planar float RGB [3, h, w] in [0, 255].

    Exact HSV arithmetic without a colour-space round trip: V = max, chroma C = V * S; saturation
    scales C (S capped at 1); hue in sextants from the max channel; each channel is rebuilt as
    V - C * clip(min(k, 4 - k), 0, 1), k = (n + H) mod 6, n = 5, 3, 1 for R, G, B.
    """
    r, g, b = x
    eps, six = np.float32(1e-6), np.float32(6)
    v = np.maximum(r, g)
    np.maximum(v, b, out=v)
    c = np.minimum(r, g)
    np.minimum(c, b, out=c)
    np.subtract(v, c, out=c)  # chroma = V * S
    if hue == 0.0:  # saturation only: every channel moves towards V by the same factor
        factor = np.divide(v, np.maximum(c, eps))
        np.minimum(factor, np.float32(saturation), out=factor)
        out = v - x
        out *= factor
        return np.subtract(v, out, out=out)
    h = g - b  # hue numerator, max = R: (G - B)
    t = b - r + 2 * c  # max = G: (B - R) + 2C
    np.copyto(h, t, where=(v == g) & (v != r))
    np.subtract(r, g, out=t)  # max = B: (R - G) + 4C
    t += 4 * c
    np.copyto(h, t, where=(v == b) & (v != r) & (v != g))
    np.divide(h, np.maximum(c, eps), out=h)
    h += np.float32(hue / 60.0) + six  # hue in sextants, shifted into (4.7, 11.3)
    c *= np.float32(saturation)
    np.minimum(c, v, out=c)  # S' = min(S * s, 1)
    out = np.empty_like(x)
    for i, n in enumerate((5.0, 3.0, 1.0)):  # R, G, B
        k = np.add(h, np.float32(n), out=t)
        k -= six * (k >= six)  # k mod 6, branch-free
        k -= six * (k >= six)
        f = np.subtract(np.float32(4), k, out=out[i])
        np.minimum(f, k, out=f)
        np.clip(f, 0, 1, out=f)
        f *= c
        np.subtract(v, f, out=f)
    return out
