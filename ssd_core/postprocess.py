"""Inference post-processing (paper section 3 "Inference"): decode, threshold, per-class NMS, top-k.

For every image and every foreground class: softmax scores above ``score_threshold`` (0.01), the
``top_k`` (400) best of them, greedy non-maximum suppression at IoU ``nms_threshold`` (0.45), then
the ``max_detections`` (200) best survivors of all classes. Same result as torchvision's
``SSD.postprocess_detections`` but with no Python loop over images or classes: every
(image, class) pair is one NMS *group* and all groups are suppressed together.

NMS has two exact, loop-free back ends, picked by size:
- small groups (trained models: a few dozen candidates per class) run a dense greedy NMS over a
  padded [G, K, K] IoU tensor (a fixed-point iteration, see :func:`grouped_nms`);
- large groups (an untrained model: hundreds of candidates per class) go to
  ``torchvision.ops.batched_nms`` with the group id as the category (its C++ NMS kernel per
  group), in a few chunks of ~8k candidates so its per-group dispatch stays linear.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from .boxes import VARIANCES, decode
from .config import EvalConfig
from .loss import log_sum_exp

# Dense NMS holds a [G, K, K] IoU tensor; above this many elements torchvision's NMS kernel wins.
DENSE_NMS_MAX_ELEMENTS = 1 << 21
# Fixed-point steps of the dense NMS before handing a (freak) long suppression chain to torchvision.
DENSE_NMS_MAX_STEPS = 64
# Candidates per torchvision batched_nms call in the large-group back end.
NMS_CHUNK = 8192
# Above this many thresholded candidates, the per-class top_k comes from a dense topk, not a sort.
SPARSE_CANDIDATES_PER_IMAGE = 4096


class Detections(NamedTuple):
    boxes: Tensor   # [B, D, 4] xyxy in [0, 1]
    scores: Tensor  # [B, D]     (0 for padding)
    labels: Tensor  # [B, D] long, 1..C-1 (0 = padding)
    counts: Tensor  # [B] number of valid detections per image


def _candidates(conf: Tensor, score_threshold: float, top_k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per (image, class): the ``top_k`` best foreground softmax scores above the threshold.

    ``conf [B, P, C]`` logits -> flat ``(image, prior, class, score)`` (class 1..C-1) sorted by
    group (image-major, then class) and by score, descending, inside a group.
    A trained model has few candidates, so the work goes where they can be: a class's softmax
    exceeds the threshold only if its logit exceeds (max logit + log(threshold)), since logsumexp >= max;
    one max over the classes finds those priors (a 2% slice for a trained model), and only their rows
    are scored: the threshold in logit space (``logit > logsumexp + log(threshold)``), then sorted.
    Many candidates (an untrained model) take a dense softmax + per-class ``topk``.
    """
    B, P, C = conf.shape
    log_t = math.log(score_threshold)
    fg_max = conf[..., 1:].amax(dim=-1)                                            # [B, P]
    # the margin covers rounding in logsumexp (it can land a few ulps below the max logit)
    rb, rp = (fg_max > torch.maximum(fg_max, conf[..., 0]) + (log_t - 1e-3)).nonzero(as_tuple=True)
    sparse = rb.numel() <= SPARSE_CANDIDATES_PER_IMAGE * B  # else nearly every prior has a candidate: dense
    if sparse:
        rows = conf[rb, rp]                                                         # [R, C]
        lse = log_sum_exp(rows)                                                     # [R]
        above = rows[:, 1:] > (lse + log_t).unsqueeze(-1)                          # [R, C-1]
        sparse = int(torch.count_nonzero(above)) <= SPARSE_CANDIDATES_PER_IMAGE * B
    if sparse:
        r, c = above.nonzero(as_tuple=True)
        c = c + 1
        b, p = rb[r], rp[r]
        s = torch.exp(rows[r, c] - lse[r])
        order = torch.argsort(s, descending=True, stable=True)
        order = order[torch.argsort((b * C + c)[order], stable=True)]
        b, p, c, s = b[order], p[order], c[order], s[order]
        rank = torch.arange(b.numel(), device=b.device) - _group_starts(b * C + c)
        keep = rank < top_k
        return b[keep], p[keep], c[keep], s[keep]
    scores = F.softmax(conf, dim=-1)[..., 1:].transpose(1, 2)       # [B, C-1, P]
    vals, prior = scores.topk(min(top_k, P), dim=-1)                  # sorted, descending
    b, c, j = (vals > score_threshold).nonzero(as_tuple=True)         # group-major, score-desc
    return b, prior[b, c, j], c + 1, vals[b, c, j]


def _group_starts(group: Tensor) -> Tensor:
    """For a sorted 1-D tensor of group ids: the index where each element's run starts."""
    _, counts = torch.unique_consecutive(group, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return torch.repeat_interleave(starts, counts)


def grouped_nms(boxes: Tensor, group: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS inside each group of candidates already sorted by (group, score desc).

    Returns a bool keep mask. Dense form: candidates are padded to [G, K]; ``suppress[g, i, j]``
    says i (higher score) overlaps j by more than the threshold. Greedy NMS keeps j iff no *kept*
    i < j suppresses it; iterating ``keep = valid & ~any_i(keep_i & suppress_ij)`` from
    ``keep = valid`` fixes one more rank per step and stops at the greedy answer (the fixed point
    is unique), in as many steps as the longest suppression chain, not K.
    """
    n = group.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=boxes.device)
    _, counts = torch.unique_consecutive(group, return_counts=True)
    G, K = counts.numel(), int(counts.max())
    if G * K * K > DENSE_NMS_MAX_ELEMENTS:
        return _chunked_batched_nms(boxes, group, counts, iou_threshold)
    gid = torch.repeat_interleave(torch.arange(G, device=boxes.device), counts)
    rank = torch.arange(n, device=boxes.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    padded = boxes.new_zeros(G, K, 4)
    padded[gid, rank] = boxes
    valid = torch.zeros(G, K, dtype=torch.bool, device=boxes.device)
    valid[gid, rank] = True
    iou = _pairwise_iou(padded)                                   # [G, K, K]
    later = torch.ones(K, K, dtype=torch.bool, device=boxes.device).triu_(1)
    suppress = (iou > iou_threshold) & later & valid.unsqueeze(1)
    keep = valid
    for _ in range(DENSE_NMS_MAX_STEPS):
        new = valid & ~(keep.unsqueeze(2) & suppress).any(dim=1)
        if torch.equal(new, keep):
            return keep[gid, rank]
        keep = new
    return _chunked_batched_nms(boxes, group, counts, iou_threshold)   # a freak long chain


def _chunked_batched_nms(boxes: Tensor, group: Tensor, counts: Tensor, iou_threshold: float) -> Tensor:
    """Large groups: torchvision's ``batched_nms`` (its C++ NMS kernel per group) with the group id
    as the category. Its dispatch scans all N candidates once per group (O(groups x N)), so the
    candidates are cut, at group boundaries, into chunks of about NMS_CHUNK (one call when small).
    """
    n = group.numel()
    rank_scores = torch.arange(n, 0, -1, dtype=torch.float32, device=boxes.device)  # sorted order = score order
    starts = torch.cumsum(counts, 0) - counts
    chunk = torch.repeat_interleave(torch.div(starts, NMS_CHUNK, rounding_mode="floor"), counts)
    _, sizes = torch.unique_consecutive(chunk, return_counts=True)
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    offset = 0
    for size in sizes.tolist():                                   # a few chunks of work, not classes
        part = slice(offset, offset + size)
        kept = batched_nms(boxes[part], rank_scores[part], group[part], iou_threshold)
        keep[offset + kept] = True
        offset += size
    return keep


def _pairwise_iou(b: Tensor) -> Tensor:
    """[G, K, 4] -> [G, K, K] IoU within each group (the formula of torchvision's box_iou)."""
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(b[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(b[:, :, None, 2:], b[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, :, None] + area[:, None, :] - inter)


_PAPER = EvalConfig()  # the paper's settings (section 3) live in the schema: eval.*


class NMSSettings(NamedTuple):
    """The eval.* settings the post-processing takes (postprocess's keyword arguments); defaults: the paper's."""

    score_threshold: float = _PAPER.score_threshold
    nms_threshold: float = _PAPER.nms_threshold
    top_k: int = _PAPER.top_k
    max_detections: int = _PAPER.max_detections

    @classmethod
    def of(cls, eval_cfg) -> "NMSSettings":
        return cls(float(eval_cfg.score_threshold), float(eval_cfg.nms_threshold), int(eval_cfg.top_k),
                   int(eval_cfg.max_detections))


def postprocess(loc: Tensor, conf: Tensor, priors: Tensor, score_threshold: float = _PAPER.score_threshold,
                nms_threshold: float = _PAPER.nms_threshold, top_k: int = _PAPER.top_k,
                max_detections: int = _PAPER.max_detections, variances=VARIANCES) -> Detections:
    """Head outputs ``loc [B, P, 4]``, ``conf [B, P, C]`` (logits) -> padded :class:`Detections`.

    Boxes are decoded with ``priors [P, 4]`` (cx, cy, w, h) and clipped to [0, 1]. ``D`` is
    ``max_detections``; rows past ``counts[b]`` are zeros. Detections of an image are sorted by
    score, descending.
    """
    B, _, C = conf.shape
    b, p, c, s = _candidates(conf.float(), score_threshold, top_k)
    boxes = decode(loc[b, p].float(), priors.float()[p], variances).clamp_(0, 1)
    keep = grouped_nms(boxes, b * C + c, nms_threshold)
    b, c, s, boxes = b[keep], c[keep], s[keep], boxes[keep]

    # Per image, the max_detections best survivors: pad per image, one topk over the batch.
    counts = torch.bincount(b, minlength=B)
    width = int(counts.max()) if b.numel() else 0
    rank = torch.arange(b.numel(), device=b.device) - (torch.cumsum(counts, 0) - counts)[b]
    padded = s.new_full((B, max(width, 1)), -1.0)
    padded[b, rank] = s
    top, col = padded.topk(min(max_detections, padded.shape[1]), dim=1)
    found = top >= 0
    flat = (torch.cumsum(counts, 0) - counts).unsqueeze(1) + col   # index into the kept arrays
    flat = torch.where(found, flat, 0)
    D = max_detections
    out_boxes = loc.new_zeros(B, D, 4, dtype=torch.float32)
    out_scores = loc.new_zeros(B, D, dtype=torch.float32)
    out_labels = torch.zeros(B, D, dtype=torch.long, device=loc.device)
    n = top.shape[1]
    if b.numel():
        out_boxes[:, :n] = torch.where(found.unsqueeze(-1), boxes[flat], 0.0)
        out_scores[:, :n] = torch.where(found, top, 0.0)
        out_labels[:, :n] = torch.where(found, c[flat], 0)
    return Detections(out_boxes, out_scores, out_labels, found.sum(dim=1))
