"""Default boxes fitted to a data set, and how well any set of default boxes covers its objects.

A ground-truth box whose best default box overlaps it at IoU < 0.5 is a positive only through SSD's
"best prior per object" rule (ssd_core/boxes.py), from a box that barely overlaps it: on a data set whose
objects are smaller, larger or thinner than VOC's, the paper's scales leave such objects to chance.

    coverage(spec, boxes, labels, names)   per training box: the best IoU over the default boxes; the share
                                           with best IoU >= 0.5 (the best possible recall at the matching
                                           threshold), the mean best IoU, per class, per COCO size (small <
                                           32^2, medium < 96^2, large, in pixels at the model's input), and
                                           the feature map each class is matched on
    fit_sizes(layout, boxes, labels, ...)  the default-box scales (and optionally aspect ratios) that
                                           maximise the class-mean coverage at 0.5, then the mean best IoU
    resolve_priors(cfg)                    model.prior_scales: auto -> the config with model.prior_sizes
                                           (and model.prior_aspect_ratios) fitted to data.train_sets

Where each part lives (everything below is importable from `ssd_core.prior_fit`):

    coverage.py   Coverage and coverage(): how well a set of default boxes covers the training boxes
    fit.py        fit_sizes(): the scales s_1 < ... < s_m+1 that replace the evenly spread s_k of the paper's
                  eq. 4 (sec. 2.2, "Choosing scales and aspect ratios"), keeping SSD's box structure, and how
    resolve.py    the config side: the training boxes, resolve_priors (prior_scales: auto), spec_of (the
                  default boxes a config lays out; a model section's sizes and ratios: ssd_core/priors.py)
"""
from __future__ import annotations

from ssd_core.prior_fit.coverage import MEDIUM, SMALL, THRESHOLD, Coverage, coverage
from ssd_core.prior_fit.fit import GRID, MAX_FIT_BOXES, RATIO_CHOICES, Fit, fit_sizes
from ssd_core.prior_fit.resolve import layout, resolve_priors, spec_of, training_boxes

__all__ = [
    "THRESHOLD", "SMALL", "MEDIUM", "Coverage", "coverage",
    "GRID", "RATIO_CHOICES", "MAX_FIT_BOXES", "Fit", "fit_sizes",
    "training_boxes", "layout", "resolve_priors", "spec_of",
]
