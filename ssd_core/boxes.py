"""Box geometry, default-box matching and offset encoding (paper section 2.2, eq. 2).

Conventions: ground truth boxes are xyxy normalised to [0, 1]; default boxes (priors) are
``[P, 4]`` cx, cy, w, h. A batch of targets is padded: ``boxes [B, M, 4]``, ``labels [B, M]``
with label 0 marking a padding row. Everything here is vectorised over the batch.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

VARIANCES = (0.1, 0.2)
# Largest log-size offset decode() exponentiates (torchvision's BoxCoder clip, log(1000 / 16)):
# keeps exp() finite for wild untrained outputs.
LOG_SIZE_CLIP = math.log(1000.0 / 16)
_EPS = 1e-6  # smallest width/height a matched box is encoded with (no log(0) from a sliver box)


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cxcy, wh = b[..., :2], b[..., 2:]
    return torch.cat((cxcy - 0.5 * wh, cxcy + 0.5 * wh), dim=-1)


def xyxy_to_cxcywh(b: Tensor) -> Tensor:
    xy1, xy2 = b[..., :2], b[..., 2:]
    return torch.cat((0.5 * (xy1 + xy2), xy2 - xy1), dim=-1)


def encode(matched_xyxy: Tensor, priors: Tensor, variances=VARIANCES) -> Tensor:
    """Paper eq. 2 regression targets g^cx, g^cy, g^w, g^h of boxes w.r.t. their default boxes.

    g^cx = (g_cx - d_cx) / (v0 d_w), g^w = log(g_w / d_w) / v1 (same for y/h). ``matched_xyxy`` is
    ``[..., P, 4]``, ``priors`` ``[P, 4]`` cx, cy, w, h. Sizes are clamped to 1e-6 so a degenerate
    box gives a large finite target, never -inf/NaN.
    """
    g = xyxy_to_cxcywh(matched_xyxy)
    center = (g[..., :2] - priors[:, :2]) / (variances[0] * priors[:, 2:])
    size = torch.log(g[..., 2:].clamp(min=_EPS) / priors[:, 2:]) / variances[1]
    return torch.cat((center, size), dim=-1)


def decode(loc: Tensor, priors: Tensor, variances=VARIANCES) -> Tensor:
    """Inverse of :func:`encode`: predicted offsets ``[..., P, 4]`` -> xyxy boxes ``[..., P, 4]``.

    Log-size offsets are clipped at log(1000/16) (as torchvision's BoxCoder) so exp() stays finite.
    """
    priors = priors.to(loc.dtype)
    center = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp((loc[..., 2:] * variances[1]).clamp(max=LOG_SIZE_CLIP))
    return torch.cat((center - 0.5 * size, center + 0.5 * size), dim=-1)


def _overlap(gt_xyxy: Tensor, priors_xyxy: Tensor, ratio: bool) -> Tensor:
    """``[..., 4] x [P, 4] -> [..., P]``: IoU, or with ``ratio`` inter / (area_g + area_p).

    Written for a CPU, where the [..., P] temporaries dominate: the intersection is built in three
    reused buffers (in place) from contiguous prior coordinate rows. The ratio r is a monotone
    function of the IoU (IoU = r / (1 - r)) one pass cheaper, for argmax and threshold tests.
    A zero-area box overlaps nothing (the area of a default box is always positive).
    """
    x1, y1, x2, y2 = priors_xyxy.t().contiguous()                # each [P], contiguous
    g = gt_xyxy.unsqueeze(-1)                                     # [..., 4, 1]
    gx1, gy1, gx2, gy2 = g[..., 0, :], g[..., 1, :], g[..., 2, :], g[..., 3, :]   # each [..., 1]
    inter = torch.minimum(x2, gx2)
    tmp = torch.maximum(x1, gx1)
    inter.sub_(tmp).clamp_(min=0)                                 # intersection width
    torch.minimum(y2, gy2, out=tmp)
    union = torch.maximum(y1, gy1)
    inter.mul_(tmp.sub_(union).clamp_(min=0))                     # x intersection height
    area_g = (gx2 - gx1).clamp(min=0) * (gy2 - gy1).clamp(min=0)
    torch.add(area_g, (x2 - x1) * (y2 - y1), out=union)
    if not ratio:
        union.sub_(inter)
    return inter.div_(union)


def batched_iou(gt_xyxy: Tensor, priors_xyxy: Tensor) -> Tensor:
    """IoU of every ground truth with every default box: ``[B, M, 4] x [P, 4] -> [B, M, P]``
    (any leading dims). Same values as torchvision's ``box_iou``, faster on a CPU."""
    return _overlap(gt_xyxy, priors_xyxy, ratio=False)


def match_indices(gt_boxes: Tensor, gt_labels: Tensor, priors: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Paper section 2.2 matching strategy: index of the ground truth each default box is matched to.

    Returns ``[B, P]`` long, -1 for background. Every default box with IoU >= threshold gets its
    best ground truth, then each ground truth takes the default box with its best IoU (so every
    object is matched; this wins over the threshold match, as in torchvision's ``SSDMatcher``).
    Padding rows (label 0) and degenerate boxes (zero width or height) never match anything.

    The overlaps are computed once for the valid ground truths only (padding is ~half of a
    padded batch), as [G, P], and reduced per image with a scatter-max.
    """
    B, M = gt_labels.shape
    P = priors.shape[0]
    matched = torch.full((B, P), -1, dtype=torch.long, device=gt_labels.device)
    valid = (gt_labels > 0) & (gt_boxes[..., 2] > gt_boxes[..., 0]) & (gt_boxes[..., 3] > gt_boxes[..., 1])
    img, row = valid.nonzero(as_tuple=True)                       # valid ground truths, image-major
    G = img.numel()
    if G == 0:
        return matched
    r = _overlap(gt_boxes[img, row], cxcywh_to_xyxy(priors).to(gt_boxes.dtype), ratio=True)   # [G, P]
    # Best ground truth per default box, where it clears the threshold (IoU >= t <=> r >= t/(1+t)).
    best = r.new_zeros(B, P).scatter_reduce_(0, img.unsqueeze(1).expand(G, P), r, "amax")
    b, p = (best >= iou_threshold / (1.0 + iou_threshold)).nonzero(as_tuple=True)   # sparse
    counts = torch.bincount(img, minlength=B)
    first = torch.cumsum(counts, 0) - counts                      # compact index of each image's 1st gt
    slot = torch.arange(int(counts.max()), device=img.device)
    cand = first[b].unsqueeze(1) + slot                           # [Npos, Mv] compact gt indices
    ok = slot < counts[b].unsqueeze(1)
    r_cand = torch.where(ok, r[cand.clamp(max=G - 1), p.unsqueeze(1)], -1.0)
    matched[b, p] = row[cand.gather(1, r_cand.argmax(dim=1, keepdim=True)).squeeze(1)]
    # Best default box per ground truth overrides (SSDMatcher order).
    matched[img, r.max(dim=1).indices] = row
    return matched


def match_indices_static(gt_boxes: Tensor, gt_labels: Tensor, priors: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """:func:`match_indices` with static shapes and no host synchronisation (for a GPU, CUDA graphs and
    ``torch.compile``): the overlaps of every padded row ``[B, M, P]``, invalid rows at -1, and each ground
    truth's best default box written by a scatter into a spare column. Equal to match_indices, ties included:
    the first best ground truth per default box; where two ground truths take the same default box, the
    later row wins (as match_indices' indexed write does on a CPU)."""
    B, M = gt_labels.shape
    P = priors.shape[0]
    valid = (gt_labels > 0) & (gt_boxes[..., 2] > gt_boxes[..., 0]) & (gt_boxes[..., 3] > gt_boxes[..., 1])
    r = _overlap(gt_boxes, cxcywh_to_xyxy(priors).to(gt_boxes.dtype), ratio=True)       # [B, M, P]
    r = torch.where(valid.unsqueeze(-1), r, -1.0)
    best, gt = r.max(dim=1)                                        # per default box: best ratio, first best row
    matched = torch.where(best >= iou_threshold / (1.0 + iou_threshold), gt, -1)
    prior = r.argmax(dim=2)                                        # [B, M] each ground truth's best default box
    rows = torch.arange(M, device=gt_labels.device).expand(B, M)
    forced = torch.full((B, P + 1), -1, dtype=torch.long, device=gt_labels.device)
    forced.scatter_reduce_(1, torch.where(valid, prior, P), torch.where(valid, rows, -1), "amax")  # column P: spare
    forced = forced[:, :P]
    return torch.where(forced >= 0, forced, matched)


def match(gt_boxes: Tensor, gt_labels: Tensor, priors: Tensor, iou_threshold: float = 0.5,
          variances=VARIANCES) -> tuple[Tensor, Tensor]:
    """Match padded targets to default boxes and encode them.

    ``gt_boxes [B, M, 4]`` xyxy in [0, 1], ``gt_labels [B, M]`` (0 = padding), ``priors [P, 4]``
    cx, cy, w, h -> ``(loc_targets [B, P, 4], conf_targets [B, P] long)`` with 0 = background.
    Background rows of ``loc_targets`` hold the encoding of ground truth 0 (ignored by the loss).
    """
    if gt_labels.shape[1] == 0:  # no rows at all: everything is background
        gt_boxes = gt_boxes.new_zeros(gt_boxes.shape[0], 1, 4)
        gt_labels = gt_labels.new_zeros(gt_labels.shape[0], 1)
    idx = match_indices(gt_boxes, gt_labels, priors, iou_threshold)
    safe = idx.clamp(min=0)
    conf_targets = torch.where(idx >= 0, gt_labels.gather(1, safe), 0)
    matched_boxes = gt_boxes.gather(1, safe.unsqueeze(-1).expand(-1, -1, 4))
    return encode(matched_boxes, priors.to(gt_boxes.dtype), variances), conf_targets
