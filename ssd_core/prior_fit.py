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

The fit keeps SSD's structure: per map one box of size s_k (aspect 1) and the extra box sqrt(s_k s_k+1),
the aspect-ratio pairs of s_k, and s_1 < s_2 < ... < s_m+1 increasing with the maps' strides. Boxes are
the training split's, normalised by their image (SSD resizes every image to a square, so a normalised box
is what the network sees) and, for the pixel sizes, at model.image_size.

How: for every map and every size on a fine log grid, each object's best IoU with a default box of that
size is computed once against the cell nearest its centre (for boxes of one size, IoU only falls with the
centre offset along each axis, so the nearest cell is the best one); an assignment of sizes to maps is
then scored by a maximum over table columns, and improved one map at a time over every feasible size
(coordinate ascent from the paper's VOC and COCO scales, and one spread over the objects' size quantiles),
until no map changes. Deterministic, vectorised over objects and sizes; a few seconds on VOC's 40k boxes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ssd_core.errors import ConfigError

THRESHOLD = 0.5                     # SSD's matching threshold (ssd_core/boxes.py match)
GRID = np.exp(np.linspace(math.log(0.008), math.log(1.2), 97))  # sizes (fractions of the side); odd entries: midpoints
RATIO_CHOICES = (1.5, 2.0, 3.0, 4.0)
MAX_FIT_BOXES = 8000                # boxes the fit looks at (an even subsample); coverage counts all
SMALL, MEDIUM = 32 ** 2, 96 ** 2    # COCO's area limits, pixels at the model's input


# --------------------------------------------------------------------------- coverage


@dataclass
class Coverage:
    """How a set of default boxes covers a set of ground-truth boxes (module doc)."""

    best_iou: np.ndarray                 # [N] best IoU over the default boxes
    best_map: np.ndarray                 # [N] feature map of that default box
    labels: np.ndarray                   # [N] 1..C
    sizes: np.ndarray                    # [N] 0 small, 1 medium, 2 large
    class_names: list[str]
    threshold: float = THRESHOLD

    def share(self, mask=None, threshold: Optional[float] = None) -> float:
        t = self.threshold if threshold is None else threshold
        x = self.best_iou if mask is None else self.best_iou[mask]
        return float((x >= t).mean()) if x.size else math.nan

    @property
    def bpr(self) -> float:
        """Best possible recall at 0.5: the share of boxes some default box overlaps at IoU >= 0.5."""
        return self.share(threshold=0.5)

    def per_class(self) -> dict[str, float]:
        return {c: self.share(self.labels == i + 1) for i, c in enumerate(self.class_names)}

    def class_mean(self) -> float:
        values = [v for v in self.per_class().values() if math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan

    def per_size(self) -> dict[str, float]:
        return {name: self.share(self.sizes == i) for i, name in enumerate(("small", "medium", "large"))}

    def maps_by_class(self) -> dict[str, dict[int, int]]:
        """class -> {feature map: boxes whose best default box is on it}."""
        out = {}
        for i, c in enumerate(self.class_names):
            m = self.best_map[self.labels == i + 1]
            out[c] = {int(k): int(v) for k, v in zip(*np.unique(m, return_counts=True))}
        return out

    def metrics(self, prefix: str = "data/") -> dict[str, float]:
        """What every training run logs (ssd_core/metrics.py `data/...`)."""
        from ssd_core import metrics as M

        out = {M.DATA_COVERAGE: self.bpr, M.DATA_COVERAGE_CLASS_MEAN: self.class_mean(),
               M.DATA_BEST_IOU: float(self.best_iou.mean()) if self.best_iou.size else math.nan}
        out.update({M.data_coverage(c): v for c, v in self.per_class().items()})
        out.update({M.data_coverage(s): v for s, v in self.per_size().items()})
        return {k: v for k, v in out.items() if math.isfinite(v)}  # a class or size with no boxes: nothing

    def format(self, title: str) -> str:
        n = self.best_iou.size
        lines = [f"{title}: {n} training boxes; IoU >= 0.5 for {self.bpr:.1%} (class mean {self.class_mean():.1%}), "
                 f"mean best IoU {self.best_iou.mean():.3f}" if n else f"{title}: no boxes"]
        for c, v in self.per_class().items():
            maps = ", ".join(f"map {k}: {m}" for k, m in self.maps_by_class()[c].items())
            lines.append(f"  {c:>12s}: {v:6.1%}   matched on {maps}")
        counts = np.bincount(self.sizes, minlength=3)
        lines.append("  by size (COCO areas at the input): " + ", ".join(
            f"{name} {v:.1%} of {counts[i]}" for i, (name, v) in enumerate(self.per_size().items())))
        return "\n".join(lines)


def _iou_xyxy(gt: np.ndarray, pr: np.ndarray) -> np.ndarray:
    lt = np.maximum(gt[..., :2], pr[..., :2])
    rb = np.minimum(gt[..., 2:], pr[..., 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    ag = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    ap = (pr[..., 2] - pr[..., 0]) * (pr[..., 3] - pr[..., 1])
    return inter / np.maximum(ag + ap - inter, 1e-12)


def _nearest_cells(boxes: np.ndarray, f: int, step: float) -> np.ndarray:
    """[N, 2] centres (normalised) of the map's cells nearest each box centre."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    idx = np.clip(np.round(c / step - 0.5), 0, f - 1)
    return (idx + 0.5) * step


def _prior_iou(boxes: np.ndarray, centres: np.ndarray, w, h, clip: bool = True) -> np.ndarray:
    """IoU of each box with a default box of size (w, h) at its cell centre; w, h broadcast ([N] or [N, V])."""
    w, h = np.asarray(w, float), np.asarray(h, float)
    extra = w.ndim - 1 if w.ndim else 0
    cx, cy = (centres[:, 0], centres[:, 1]) if not extra else (centres[:, :1], centres[:, 1:])
    pr = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    if clip:
        pr = np.clip(pr, 0.0, 1.0)
    gt = boxes if not extra else boxes[:, None, :]
    return _iou_xyxy(gt, pr)


def coverage(spec, boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
             threshold: float = THRESHOLD) -> Coverage:
    """The coverage of `boxes` [N, 4] (normalised xyxy) by the default boxes of `spec` (priors.PriorSpec)."""
    from ssd_core.priors import cell_box_sizes

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    best = np.zeros(len(boxes))
    best_map = np.zeros(len(boxes), dtype=np.int64)
    for k, f in enumerate(spec.feature_maps):
        step = spec.steps[k] / spec.image_size
        centres = _nearest_cells(boxes, f, step)
        wh = cell_box_sizes(spec, k).numpy()                          # [A, 2]
        iou = _prior_iou(boxes, centres, np.broadcast_to(wh[:, 0], (len(boxes), len(wh))),
                         np.broadcast_to(wh[:, 1], (len(boxes), len(wh))), spec.clip).max(axis=1) if len(boxes) else best
        better = iou > best
        best = np.where(better, iou, best)
        best_map = np.where(better, k, best_map)
    return Coverage(best, best_map, np.asarray(labels, np.int64).reshape(-1), _size_class(boxes, spec.image_size),
                    list(class_names), threshold)


def _size_class(boxes: np.ndarray, image_size: int) -> np.ndarray:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * image_size ** 2
    return np.where(area < SMALL, 0, np.where(area < MEDIUM, 1, 2)).astype(np.int64)


# --------------------------------------------------------------------------- the fit


@dataclass
class Fit:
    sizes: list[float]                          # s_1 .. s_m+1, fractions of the side
    aspect_ratios: list[list[float]]            # per map
    objective: tuple[float, float] = (0.0, 0.0)  # (class-mean coverage at 0.5, class-mean best IoU) on the fit set
    history: list = field(default_factory=list)


class _Tables:
    """Per map k and grid size g: each box's best IoU with the square default box of size GRID[g]
    (`square[k]` [N, G]), and with the pair of boxes of aspect r at size GRID[g] (`ratio[k][r]` [N, G])."""

    def __init__(self, boxes: np.ndarray, feature_maps, steps, image_size: int, ratios=RATIO_CHOICES, clip=True):
        self.square, self.ratio = [], []
        grid = GRID[None, :]
        for f, st in zip(feature_maps, steps):
            centres = _nearest_cells(boxes, f, st / image_size)
            self.square.append(_prior_iou(boxes, centres, np.broadcast_to(grid, (len(boxes), grid.size)),
                                          np.broadcast_to(grid, (len(boxes), grid.size)), clip))
            per = {}
            for r in ratios:
                a, b = grid * math.sqrt(r), grid / math.sqrt(r)
                shape = (len(boxes), grid.size)
                per[r] = np.maximum(_prior_iou(boxes, centres, np.broadcast_to(a, shape), np.broadcast_to(b, shape), clip),
                                    _prior_iou(boxes, centres, np.broadcast_to(b, shape), np.broadcast_to(a, shape), clip))
            self.ratio.append(per)

    def map_iou(self, k: int, lo: int, hi, ratios) -> np.ndarray:
        """Best IoU on map k with s_k = GRID[lo] and s_k+1 = GRID[hi] (each a grid index or [V] of them: [N, V]):
        the square s_k, the extra square sqrt(s_k s_k+1) = GRID[(lo + hi) / 2] and the ratio pairs of s_k."""
        scalar = np.ndim(lo) == 0 and np.ndim(hi) == 0
        lo, hi = np.broadcast_arrays(np.atleast_1d(lo), np.atleast_1d(hi))
        out = np.maximum(self.square[k][:, lo], self.square[k][:, (lo + hi) // 2])
        for r in ratios:
            out = np.maximum(out, self.ratio[k][r][:, lo])
        return out[:, 0] if scalar else out


def _score(best: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """best [N] or [N, V] -> (class-mean share >= 0.5, class-mean best IoU), each scalar or [V]."""
    hit = (best >= THRESHOLD).astype(np.float64)
    covs, ious = [], []
    for c in range(1, classes + 1):
        m = labels == c
        if m.any():
            covs.append(hit[m].mean(axis=0))
            ious.append(best[m].mean(axis=0))
    return np.mean(covs, axis=0), np.mean(ious, axis=0)


def _ascend(t: _Tables, labels, classes, idx: list[int], ratios: list[tuple], m: int) -> tuple[list[int], tuple]:
    """Coordinate ascent over the size indices (even grid entries, strictly increasing); returns the
    indices and their (coverage, IoU)."""
    idx = list(idx)

    def maps(skip=()):
        out = np.zeros(len(labels))
        for k in range(m):
            if k not in skip:
                out = np.maximum(out, t.map_iou(k, idx[k], idx[k + 1], ratios[k]))
        return out

    for _ in range(30):
        changed = False
        for j in range(m + 1):  # size j is s_j: map j uses it as its s_k, map j-1 as its s_k+1
            lo = idx[j - 1] + 2 if j > 0 else 0
            hi = idx[j + 1] - 2 if j < m else len(GRID) - 1
            cand = np.arange(lo, hi + 1, 2)
            if cand.size == 0:
                continue
            fixed = maps(skip={j - 1, j})[:, None]
            best = fixed
            if j > 0:
                best = np.maximum(best, t.map_iou(j - 1, idx[j - 1], cand, ratios[j - 1]))
            if j < m:
                best = np.maximum(best, t.map_iou(j, cand, idx[j + 1], ratios[j]))
            cov, iou = _score(best, labels, classes)
            order = np.lexsort((np.abs(cand - idx[j]), -np.round(iou, 9), -np.round(cov, 9)))
            pick = int(cand[order[0]])
            if pick != idx[j]:
                idx[j], changed = pick, True
        if not changed:
            break
    cov, iou = _score(maps(), labels, classes)
    return idx, (float(cov), float(iou))


def _snap(sizes: Sequence[float]) -> list[int]:
    """Sizes -> strictly increasing even grid indices nearest them."""
    out = []
    for s in sizes:
        i = int(np.argmin(np.abs(np.log(GRID[::2]) - math.log(max(s, 1e-6))))) * 2
        i = max(i, out[-1] + 2) if out else i
        out.append(min(i, len(GRID) - 1))
    return out


def fit_sizes(feature_maps: Sequence[int], steps: Sequence[float], image_size: int, boxes: np.ndarray,
              labels: np.ndarray, classes: int, aspect: bool = False, max_boxes: int = 6,
              paper_ratios: Sequence[Sequence[float]] | None = None, clip: bool = True) -> Fit:
    """Fit s_1..s_m+1 (and with `aspect` the per-map ratio sets, at most `max_boxes` boxes a cell) to the
    normalised `boxes` [N, 4] with `labels` [N] in 1..classes (module doc)."""
    from ssd_core.priors import CAFFE_RATIOS, caffe_sizes, paper_aspect_ratios

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, labels = boxes[keep], labels[keep]
    if len(boxes) == 0:
        raise ConfigError("model.prior_scales: auto: the training split has no boxes with an area to fit the "
                          "default boxes to (data.train_sets)")
    m = len(feature_maps)
    if len(GRID[::2]) < m + 1:
        raise ConfigError(f"model.prior_scales: auto: {m} feature maps need {m + 1} increasing sizes, more than the "
                          f"fit's grid holds")
    if len(boxes) > MAX_FIT_BOXES:  # an even, deterministic subsample in file order
        pick = np.linspace(0, len(boxes) - 1, MAX_FIT_BOXES).round().astype(int)
        boxes, labels = boxes[pick], labels[pick]
    ratios = [tuple(r) for r in (paper_ratios or paper_aspect_ratios(m))]
    t = _Tables(boxes, feature_maps, steps, image_size, tuple(sorted(set(RATIO_CHOICES) | {r for rs in ratios for r in rs})),
                clip)
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    starts = []
    for key in (("voc", False), ("coco", False)):
        lo, hi, first = CAFFE_RATIOS[key]
        mins, maxs = caffe_sizes(100, m, lo, hi, first)
        starts.append([s / 100 for s in mins] + [maxs[-1] / 100])
    starts.append(list(np.quantile(side, np.linspace(0.02, 0.98, m + 1))))
    history = []
    best = None
    for start in starts:
        for _ in range(3 if aspect else 1):
            idx, score = _ascend(t, labels, classes, _snap(start), ratios, m)
            if aspect:
                ratios = _fit_ratios(t, labels, classes, idx, ratios, m, max_boxes)
                idx, score = _ascend(t, labels, classes, idx, ratios, m)
            start = [GRID[i] for i in idx]
        history.append((score, idx, list(ratios)))
        if best is None or score > best[0]:
            best = (score, idx, list(ratios))
    score, idx, ratios = best
    return Fit([float(GRID[i]) for i in idx], [list(r) for r in ratios], score, history)


def _fit_ratios(t: _Tables, labels, classes, idx, ratios, m: int, max_boxes: int) -> list[tuple]:
    """Per map, the ratio set (subsets of RATIO_CHOICES within the box cap) that scores best, others fixed."""
    import itertools

    limit = max(0, (max_boxes - 2) // 2)
    options = [()] + [c for n in range(1, limit + 1) for c in itertools.combinations(RATIO_CHOICES, n)]
    ratios = list(ratios)
    for k in range(m):
        rest = np.zeros(len(labels))
        for j in range(m):
            if j != k:
                rest = np.maximum(rest, t.map_iou(j, idx[j], idx[j + 1], ratios[j]))
        scored = []
        for n, opt in enumerate(options):
            cov, iou = _score(np.maximum(rest, t.map_iou(k, idx[k], idx[k + 1], opt)), labels, classes)
            scored.append((-round(float(cov), 9), -round(float(iou), 9), len(opt), n))
        ratios[k] = options[min(scored)[3]]
    return ratios


# --------------------------------------------------------------------------- configs


def training_boxes(cfg, dataset=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(boxes [N, 4] normalised xyxy, labels [N], class names) of the training split as fit trains on it
    (difficult objects only with data.keep_difficult); `dataset`: that split already built."""
    from ssd_core.build import build_dataset

    ds = dataset if dataset is not None else build_dataset(cfg, "train", train=False)
    parts, labs = [], []
    for i in range(len(ds)):
        t = ds.annotation(i)
        w, h = ds.image_size(i)
        b = np.asarray(t.boxes, np.float64).reshape(-1, 4) / np.array([w, h, w, h], np.float64)
        keep = np.ones(len(b), bool) if cfg.data.keep_difficult else ~np.asarray(t.difficult, bool).reshape(-1)
        parts.append(np.clip(b[keep], 0, 1))
        labs.append(np.asarray(t.labels, np.int64).reshape(-1)[keep])
    boxes = np.concatenate(parts) if parts else np.zeros((0, 4))
    labels = np.concatenate(labs) if labs else np.zeros(0, np.int64)
    return boxes, labels, list(ds.class_names)


def layout(model_cfg) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(feature map sizes, steps) the model section's network lays its default boxes on."""
    from ssd_core.model import feature_map_sizes
    from ssd_core.priors import default_steps

    maps = tuple(feature_map_sizes(model_cfg))
    return maps, default_steps(model_cfg.image_size, maps)


def resolve_priors(cfg):
    """`cfg` with model.prior_scales: auto resolved: model.prior_sizes (and, with model.prior_aspect: auto,
    model.prior_aspect_ratios) fitted to the training split. Unchanged when nothing is to fit."""
    model = cfg.model
    if model.prior_scales != "auto" or (model.prior_sizes is not None and
                                        (model.prior_aspect != "auto" or model.prior_aspect_ratios is not None)):
        return cfg
    from ssd_core.config import apply_overrides, config_hash

    key = (config_hash(cfg), str(cfg.data.root), cfg.source, _data_stamp(cfg))
    fitted = _fitted(key, cfg)
    out = apply_overrides(cfg, fitted)
    out._source = cfg.source
    return out


_FITS: dict = {}  # (config hash, data root, source, data stamp) -> the fitted keys: one fit per process


def _data_stamp(cfg) -> tuple:
    """(path, size, mtime) of the training split's list or annotation files: a changed split is fitted anew."""
    from pathlib import Path

    from ssd_core.config import resolve_data_root

    try:
        root = resolve_data_root(cfg)
    except ConfigError:
        return ()
    out = []
    for name in cfg.data.train_sets:
        sub, _, split = name.rpartition("/")
        for path in (root / sub / "ImageSets" / "Main" / f"{split}.txt", root / "annotations" / f"instances_{name}.json"):
            if path.is_file():
                st = path.stat()
                out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _fitted(key, cfg) -> dict:
    if key not in _FITS:
        boxes, labels, names = training_boxes(cfg)
        if len(boxes) == 0:
            raise ConfigError(f"{cfg.source}: model.prior_scales: auto: the training split ({', '.join(cfg.data.train_sets)}) "
                              f"has no boxes to fit the default boxes to")
        maps, steps = layout(cfg.model)
        f = fit_sizes(maps, steps, cfg.model.image_size, boxes, labels, len(names), aspect=cfg.model.prior_aspect == "auto",
                      max_boxes=cfg.model.prior_max_boxes)
        out = {"model.prior_sizes": [round(s, 6) for s in f.sizes]}
        if cfg.model.prior_aspect == "auto":
            out["model.prior_aspect_ratios"] = f.aspect_ratios
        _FITS[key] = out
    return _FITS[key]


def spec_of(cfg):
    """The PriorSpec the config's model lays out (fitted sizes included), without building the model."""
    from ssd_core.priors import paper_prior_spec

    model = cfg.model
    maps, steps = layout(model)
    kwargs = prior_spec_kwargs(model, len(maps))
    return paper_prior_spec(model.image_size, maps, "voc" if model.prior_scales == "auto" else model.prior_scales,
                            **kwargs)


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
