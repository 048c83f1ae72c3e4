"""Default boxes (Liu et al. 2016, section 2.2 "Choosing scales and aspect ratios for default boxes").

Every cell (i, j) of feature map k carries default boxes centred at ((j + 0.5) / f_k, (i + 0.5) / f_k)
with f_k = image_size / step_k. Per cell, in the order of the reference implementations (Caffe SSD,
ssd.pytorch, torchvision), the boxes are

    s_k (aspect 1),  sqrt(s_k * s_k+1) (aspect 1, the extra box),  then for every ratio a_r in
    aspect_ratios[k]: (w, h) = (s_k sqrt(a_r), s_k / sqrt(a_r)) followed by its transpose (1 / a_r),

so ratios (2,) give 4 boxes per cell and (2, 3) give 6. Boxes are ordered map by map, cell-major
(row i, then column j), then by the per-cell order above -- the same (h, w, anchor) order in which the
heads emit their predictions. SSD300 has 38^2*4 + 19^2*6 + 10^2*6 + 5^2*6 + 3^2*4 + 1*4 = 8732.

The scales s_k follow the original Caffe scripts (ssd_pascal.py, ssd_coco.py), which differ slightly from
the paper's eq. 4: with m maps, min_ratio/max_ratio in percent of the image side and
step = floor((max_ratio - min_ratio) / (m - 2)), map k >= 1 gets
min_size = S * (min_ratio + (k - 1) * step) / 100 and max_size = S * (min_ratio + k * step) / 100;
the first map (conv4_3) gets min_size = S * first_ratio / 100 and max_size = S * min_ratio / 100.

    VOC  below 512 px: 20 / 90, first 10%   -> 300: min 30, 60, 111, 162, 213, 264; max 60 ... 315
    COCO below 512 px: 15 / 90, first  7%   -> 300: min 21, 45, 99, 153, 207, 261; max 45 ... 315
    VOC  512 px and up: 15 / 90, first  7%  -> 512: min 35.84, 76.8, 153.6, ..., 460.8; max ... 537.6
    COCO 512 px and up: 10 / 90, first  4%

A model section (ssd_core.config.ModelConfig: prior_scales, explicit or fitted prior_sizes, ratios, aspect
ratios) becomes its PriorSpec here, in model_prior_spec; build_ssd hands the SSD that spec, as torchvision's
SSD is handed its anchor generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ssd_core.errors import ConfigError

# (min_ratio, max_ratio, first_ratio) in percent of the image side, from the Caffe SSD scripts.
CAFFE_RATIOS = {
    ("voc", False): (20, 90, 10),
    ("coco", False): (15, 90, 7),
    ("voc", True): (15, 90, 7),
    ("coco", True): (10, 90, 4),
}


@dataclass(frozen=True)
class PriorSpec:
    """Everything that defines the default boxes of one SSD (sizes in pixels of the input image)."""

    image_size: int
    feature_maps: tuple[int, ...]  # e.g. (38, 19, 10, 5, 3, 1)
    steps: tuple[float, ...]  # e.g. (8, 16, 32, 64, 100, 300)
    min_sizes: tuple[float, ...]  # e.g. (30, 60, 111, 162, 213, 264)
    max_sizes: tuple[float, ...]  # e.g. (60, 111, 162, 213, 264, 315)
    aspect_ratios: tuple[tuple[float, ...], ...]  # e.g. ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    clip: bool = True

    def __post_init__(self) -> None:
        m = len(self.feature_maps)
        for name in ("steps", "min_sizes", "max_sizes", "aspect_ratios"):
            if len(getattr(self, name)) != m:
                raise ConfigError(
                    f"PriorSpec: {name} has {len(getattr(self, name))} entries but there are {m} feature maps "
                    f"{tuple(self.feature_maps)}"
                )
        if any(f < 1 for f in self.feature_maps):
            raise ConfigError(f"PriorSpec: feature_maps {tuple(self.feature_maps)} must all be >= 1")
        if any(s <= 0 for s in (*self.min_sizes, *self.max_sizes, *self.steps)):
            raise ConfigError("PriorSpec: min_sizes, max_sizes and steps must be positive")
        if any(r <= 0 for ratios in self.aspect_ratios for r in ratios):
            raise ConfigError(f"PriorSpec: aspect_ratios {self.aspect_ratios} must be positive")

    def boxes_per_cell(self) -> list[int]:
        """[4, 6, 6, 6, 4, 4] for SSD300: two square boxes plus two per aspect ratio."""
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def num_priors(self) -> int:
        return sum(f * f * a for f, a in zip(self.feature_maps, self.boxes_per_cell()))


def paper_aspect_ratios(num_maps: int) -> tuple[tuple[int, ...], ...]:
    """{2, 1/2} on the first and the last two maps, {2, 1/2, 3, 1/3} on the maps in between (paper 3.1)."""
    return tuple((2,) if k == 0 or k >= num_maps - 2 else (2, 3) for k in range(num_maps))


def caffe_sizes(
    image_size: int, num_maps: int, min_ratio: float, max_ratio: float, first_ratio: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """min_sizes, max_sizes (pixels) by the rule of the original Caffe scripts; see the module docstring."""
    step = math.floor((max_ratio - min_ratio) / max(num_maps - 2, 1))
    ratios = [min_ratio + i * step for i in range(num_maps - 1)]
    min_sizes = [image_size * first_ratio / 100.0] + [image_size * r / 100.0 for r in ratios]
    max_sizes = [image_size * min_ratio / 100.0] + [image_size * (r + step) / 100.0 for r in ratios]
    return tuple(min_sizes[:num_maps]), tuple(max_sizes[:num_maps])


def default_steps(image_size: int, feature_maps: Sequence[int]) -> tuple[float, ...]:
    """Step (pixels between cell centres) per map, rounded as the reference does.

    image_size / f is rounded to the nearest power of two when that power times f is within 10% of the
    image side (the map came from stride-2 layers: 300/38 -> 8, 300/10 -> 32, 300/5 -> 64); otherwise
    the exact ratio is kept (maps from unpadded convs: 300/3 -> 100); a 1x1 map always gets the image
    side (its box is centred). Gives 8, 16, 32, 64, 100, 300 at 300 px and 8, 16, ..., 512 at 512 px.
    """
    steps = []
    for f in feature_maps:
        power = 2.0 ** round(math.log2(image_size / f))
        exact = image_size / f
        step = power if f > 1 and abs(power * f - image_size) <= 0.1 * image_size else exact
        steps.append(int(step) if float(step).is_integer() else step)
    return tuple(steps)


def paper_prior_spec(
    image_size: int,
    feature_maps: Sequence[int],
    scales: str = "voc",
    *,
    min_ratio: float | None = None,
    max_ratio: float | None = None,
    first_ratio: float | None = None,
    steps: Sequence[float] | None = None,
    min_sizes: Sequence[float] | None = None,
    max_sizes: Sequence[float] | None = None,
    aspect_ratios: Sequence[Sequence[float]] | None = None,
    clip: bool = True,
) -> PriorSpec:
    """The paper's default boxes for any input size and number of maps; every field can be overridden.

    `scales` is "voc" or "coco" and picks the Caffe min/max/first ratios (module docstring); 512 px and
    larger inputs use the SSD512 ratios. The keyword arguments replace the derived values.
    """
    if scales not in ("voc", "coco"):
        raise ConfigError(f"prior_scales must be 'voc' or 'coco', got {scales!r}")
    feature_maps = tuple(int(f) for f in feature_maps)
    m = len(feature_maps)
    if m == 0:
        raise ConfigError("paper_prior_spec: no feature maps")
    lo, hi, first = CAFFE_RATIOS[(scales, image_size >= 512)]
    lo = lo if min_ratio is None else min_ratio
    hi = hi if max_ratio is None else max_ratio
    first = first if first_ratio is None else first_ratio
    derived_min, derived_max = caffe_sizes(image_size, m, lo, hi, first)
    return PriorSpec(
        image_size=int(image_size),
        feature_maps=feature_maps,
        steps=tuple(steps) if steps is not None else default_steps(image_size, feature_maps),
        min_sizes=tuple(min_sizes) if min_sizes is not None else derived_min,
        max_sizes=tuple(max_sizes) if max_sizes is not None else derived_max,
        aspect_ratios=tuple(tuple(r) for r in aspect_ratios) if aspect_ratios is not None else paper_aspect_ratios(m),
        clip=clip,
    )


def cell_box_sizes(spec: PriorSpec, k: int) -> Tensor:
    """[A_k, 2] (w, h) of the default boxes of one cell of map k, relative to the image, reference order."""
    s_k = spec.min_sizes[k] / spec.image_size
    s_extra = math.sqrt(s_k * (spec.max_sizes[k] / spec.image_size))
    wh = [(s_k, s_k), (s_extra, s_extra)]
    for ratio in spec.aspect_ratios[k]:
        r = math.sqrt(ratio)
        wh += [(s_k * r, s_k / r), (s_k / r, s_k * r)]
    return torch.tensor(wh, dtype=torch.float64)


def default_boxes(spec: PriorSpec) -> Tensor:
    """[P, 4] default boxes (cx, cy, w, h) in [0, 1], cell-major per map; 8732 for SSD300.

    Built with a meshgrid per map (one small loop over the maps, none over cells), in float64, then cast
    to float32. With spec.clip every coordinate is clamped to [0, 1] as in ssd.pytorch.
    """
    per_map = []
    for k, f in enumerate(spec.feature_maps):
        f_k = spec.image_size / spec.steps[k]
        centres = (torch.arange(f, dtype=torch.float64) + 0.5) / f_k
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # row i (y) outer, column j (x) inner
        wh = cell_box_sizes(spec, k)  # [A, 2]
        a = wh.shape[0]
        xy = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2).expand(-1, a, 2)
        per_map.append(torch.cat((xy, wh.expand(f * f, a, 2)), dim=-1).reshape(-1, 4))
    boxes = torch.cat(per_map)
    if spec.clip:
        boxes = boxes.clamp(0.0, 1.0)
    return boxes.to(torch.float32)


# ---------------------------------------------------------------- a model section's default boxes


def model_prior_spec(model, feature_maps: Sequence[int], **overrides) -> PriorSpec:
    """The default boxes a model section (ssd_core.config.ModelConfig) lays on the network's `feature_maps`:
    paper_prior_spec at model.image_size with model.prior_scales (voc while they are `auto`: the fitted sizes
    replace them) and the section's sizes, ratios and aspect ratios (prior_spec_kwargs); `overrides`: raw
    paper_prior_spec keywords over those (build_ssd's)."""
    scales = "voc" if model.prior_scales == "auto" else model.prior_scales
    return paper_prior_spec(model.image_size, feature_maps, scales,
                            **{**prior_spec_kwargs(model, len(feature_maps)), **overrides})


def prior_spec_kwargs(model, num_maps: int) -> dict:
    """paper_prior_spec keywords from a model section: the ratio overrides, or the explicit/fitted sizes
    (min_sizes = S s_1..s_m, max_sizes = S s_2..s_m+1) and aspect ratios. ConfigError when their lengths do
    not fit the network's maps, or when auto sizes were never fitted."""
    S = model.image_size
    out = {k: getattr(model, f"prior_{k}") for k in ("first_ratio", "min_ratio", "max_ratio")
           if getattr(model, f"prior_{k}") is not None}
    if model.prior_sizes is not None:
        s = list(model.prior_sizes)
        if len(s) != num_maps + 1:
            raise ConfigError(f"model.prior_sizes: {len(s)} sizes for {num_maps} feature maps: expected {num_maps + 1} "
                              f"(s_1 .. s_m+1; map k's boxes are s_k and sqrt(s_k s_k+1))")
        out.update(min_sizes=tuple(S * v for v in s[:-1]), max_sizes=tuple(S * v for v in s[1:]))
    elif model.prior_scales == "auto":
        raise ConfigError("model.prior_scales: auto: the default boxes have not been fitted to the training split yet "
                          "(ssd_core.prior_fit.resolve_priors; `ssdlab train`, sweeps and `ssdlab data check --fit` do it)")
    if model.prior_aspect_ratios is not None:
        r = model.prior_aspect_ratios
        if len(r) != num_maps:
            raise ConfigError(f"model.prior_aspect_ratios: {len(r)} ratio sets for {num_maps} feature maps")
        out["aspect_ratios"] = tuple(tuple(x) for x in r)
    elif model.prior_aspect == "auto":
        raise ConfigError("model.prior_aspect: auto: the aspect ratios have not been fitted yet (resolve_priors)")
    return out
