"""The input a data set needs: the cheapest input size and first-map stride whose fitted default boxes cover
its training boxes (`ssdlab init`).

    choose_input(cfg, boxes, labels, names)  every candidate (input size x output stride the backbone allows,
                                             sizes up to the images' own), each with its default boxes fitted
                                             (fit.py) and its coverage at IoU 0.5 (coverage.py) and cost (the
                                             model's forward FLOPs at batch 1); the chosen one:
        1. the cheapest candidate whose fitted boxes cover >= TARGET of the training boxes;
        2. when none does, the cheapest within SLACK of the best coverage any candidate reaches.

Why coverage: a ground-truth box that no default box overlaps at IoU >= 0.5 becomes a positive only through
"best prior per object" (boxes.py), from a box that barely overlaps it; on small objects the first map's
cell (its stride) caps the coverage whatever the box sizes, which is the choice between stride 16 (cheap)
and stride 8 or a larger input (paper sec. 2.2, 3.6: SSD's weak spot is small objects).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TARGET = 0.95                          # share of training boxes some default box overlaps at IoU >= 0.5
SLACK = 0.02                           # "as good as the best reachable": within two boxes in a hundred
SIZES = (320, 384, 448, 512, 640)      # input sizes tried, up to the images' own long side


@dataclass
class Candidate:
    image_size: int
    stride: int
    coverage: float                    # share of training boxes with best IoU >= 0.5
    small: float                       # the same among the small boxes (COCO sizes at the input); nan if none
    gflops: float                      # forward FLOPs at batch 1, in 1e9
    keys: dict                         # the model keys that make it (size, stride, fitted prior sizes)

    def line(self) -> str:
        small = "" if not np.isfinite(self.small) else f", small boxes {self.small:.1%}"
        return (f"{self.image_size} px, stride {self.stride}: {self.coverage:.1%} of the training boxes covered"
                f"{small}; {self.gflops:.2f} GFLOPs a forward pass")


@dataclass
class InputChoice:
    chosen: Candidate
    candidates: list[Candidate]        # by cost
    reached_target: bool

    def reason(self) -> str:
        c = self.chosen
        if self.reached_target:
            return (f"the cheapest input whose fitted default boxes cover >= {TARGET:.0%} of the training boxes at "
                    f"IoU 0.5: {c.line()}")
        best = max(x.coverage for x in self.candidates)
        return (f"no input tried reaches {TARGET:.0%} coverage (best reachable {best:.1%}); the cheapest within "
                f"{SLACK:.0%} of it: {c.line()}")


def choose_input(cfg, boxes: np.ndarray, labels: np.ndarray, names, max_side: int | None = None,
                 sizes=SIZES) -> InputChoice:
    """The candidates of `cfg`'s backbone and the chosen input (module docstring). `boxes` normalised xyxy
    of the training split, `labels` 1..C; `max_side`: the images' long side (larger inputs are not tried)."""
    from ssd_core.config import BACKBONES, apply_overrides
    from ssd_core.prior_fit.coverage import coverage
    from ssd_core.prior_fit.resolve import fit_keys, spec_of

    tried = [s for s in sizes if max_side is None or s <= max(max_side, sizes[0])]
    out = []
    for size in tried:
        for stride in sorted(BACKBONES[cfg.model.backbone].strides, reverse=True):
            keys = {"model.image_size": size, "model.output_stride": stride, "model.prior_scales": "auto",
                    "model.prior_sizes": None, "model.prior_aspect_ratios": None}
            c = apply_overrides(cfg, keys)
            keys.update(fit_keys(c, boxes, labels, len(names)))
            c = apply_overrides(c, keys)
            cov = coverage(spec_of(c), boxes, labels, names)
            out.append(Candidate(size, stride, cov.bpr, cov.per_size()["small"], _gflops(c, len(names) + 1), keys))
    out.sort(key=lambda x: (x.gflops, -x.coverage))
    ok = [x for x in out if x.coverage >= TARGET]
    if ok:
        return InputChoice(ok[0], out, True)
    best = max(x.coverage for x in out)
    return InputChoice(next(x for x in out if x.coverage >= best - SLACK), out, False)


def _gflops(cfg, num_classes: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ssd_core.model import build_ssd, shape_only

    with torch.device("meta"):  # shapes only: the same count as a forward on the CPU, without its arithmetic
        model = shape_only(build_ssd(cfg.model, num_classes))
    size = cfg.model.image_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 1e9
