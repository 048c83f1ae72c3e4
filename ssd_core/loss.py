"""MultiBox loss (paper section 2.2, eq. 1): softmax confidence loss + Smooth L1 localisation loss.

L = (L_conf + alpha L_loc) / N with alpha = 1 and N the number of matched (positive) default boxes
in the batch. L_conf sums the cross-entropy of all positives and of the hardest negatives: per
image, the ``neg_pos_ratio`` x (number of positives) background boxes with the largest confidence
loss (hard negative mining, paper "Hard negative mining", 3:1).

A batch without any object has N = 0: both parts are divided by max(N, 1), no negative is mined
(3 x 0 = 0), so the loss is exactly 0 and its gradients are finite (zeros). This matches
torchvision's ``SSD.compute_loss``. The number of mined negatives is capped at the number of
background boxes of the image (torchvision would then count positives twice; unreachable with
8732 default boxes).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import VARIANCES, encode, match_indices, match_indices_static


class LossParts(NamedTuple):
    total: Tensor  # loc + conf (alpha = 1)
    loc: Tensor
    conf: Tensor


def hard_negative_sum(neg_loss: Tensor, num_neg: Tensor) -> Tensor:
    """Sum over each row of its ``num_neg[b]`` largest entries (``neg_loss [B, P]``, positives -inf).

    One ``topk`` with the batch's largest k instead of a double sort; ties do not change the sum.
    """
    k = int(num_neg.max())
    if k == 0:
        return neg_loss.new_zeros(())
    top = neg_loss.topk(k, dim=1, sorted=True).values          # [B, k], descending
    take = torch.arange(k, device=neg_loss.device) < num_neg.unsqueeze(1)
    return torch.where(take, top, 0.0).sum()


def log_sum_exp(conf: Tensor) -> Tensor:
    """``logsumexp`` over the last dim (classes), fast on a CPU: exp, then a matrix-vector sum.

    ``torch.logsumexp`` makes four passes with [B, P, C] temporaries (max, sub, exp, sum); logits
    in a sane range need no max shift, so one exp and one BLAS mat-vec do. Rows whose sum overflows
    or underflows (|logits| > ~80) fall back to the exact shifted form for the whole batch.
    """
    total = conf.exp() @ conf.new_ones(conf.shape[-1])
    if bool(((total > 1e-30) & (total < 1e30)).all()):
        return total.log()
    return torch.logsumexp(conf, dim=-1)


class BoxCrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy of every default box, ``[B, P, C], [B, P] -> [B, P]``: lse - logit[target].

    Autograd through exp / mat-vec / gather would make ~8 full [B, P, C] passes in backward; the
    closed form (softmax - onehot(target)) * grad is built in place in one buffer.
    """

    @staticmethod
    def forward(ctx, conf: Tensor, target: Tensor, static: bool = False) -> Tensor:
        lse = torch.logsumexp(conf, dim=-1) if static else log_sum_exp(conf)  # log_sum_exp checks on the host
        ctx.save_for_backward(conf, lse, target)
        return lse - conf.gather(-1, target.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        conf, lse, target = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        out = (conf - lse.unsqueeze(-1)).exp_().mul_(g)                # softmax * grad
        return out.scatter_add_(-1, target.unsqueeze(-1), -g), None, None    # - onehot * grad


class MultiBoxLoss(nn.Module):
    """SSD training objective. ``forward`` returns :class:`LossParts` of scalars.

    Two computations of the same loss (equal values and gradients, tests/unit/test_loss.py): on a CPU the sparse
    one (positives gathered by index, the mined negatives by a ``topk`` of the batch's largest count), on a
    GPU the static one (:meth:`static_forward`: masks over every default box, a full sort for the mining; no
    data-dependent shape, so no device-to-host synchronisation: CUDA graphs and ``torch.compile`` take it).
    ``static``: None picks by device, True / False force one.
    """

    def __init__(self, neg_pos_ratio: int = 3, iou_threshold: float = 0.5, variances=VARIANCES,
                 static: bool | None = None):
        super().__init__()
        self.neg_pos_ratio = neg_pos_ratio
        self.iou_threshold = iou_threshold
        self.variances = tuple(variances)
        self.static = static

    def forward(self, loc: Tensor, conf: Tensor, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> LossParts:
        """``loc [B, P, 4]``, ``conf [B, P, C]`` raw head outputs; ``priors [P, 4]`` cx, cy, w, h;
        ``gt_boxes [B, M, 4]`` xyxy in [0, 1]; ``gt_labels [B, M]`` (0 = padding)."""
        if self.static or (self.static is None and loc.device.type != "cpu"):
            return self.static_forward(loc, conf, priors, gt_boxes, gt_labels)
        loc, conf = loc.float(), conf.float()  # the loss is always reduced in fp32 (autocast-safe)
        priors, gt_boxes = priors.float(), gt_boxes.float()
        with torch.no_grad():
            matched = match_indices(gt_boxes, gt_labels, priors, self.iou_threshold)   # [B, P]
            pos = matched >= 0
            b, p = pos.nonzero(as_tuple=True)                 # positives only: a sparse set
            gt = matched[b, p]
            loc_t = encode(gt_boxes[b, gt], priors[p], self.variances)              # [Npos, 4]
            target = torch.zeros_like(matched)
            target[b, p] = gt_labels[b, gt]                   # class per default box, 0 = background
        num_pos = pos.sum(dim=1)                              # [B]
        n = num_pos.sum().clamp(min=1).to(conf.dtype)

        loss_loc = F.smooth_l1_loss(loc[b, p], loc_t, reduction="sum")

        ce = BoxCrossEntropy.apply(conf, target)             # [B, P]; background target off positives
        pos_sum = ce[b, p].sum()
        neg_loss = ce.masked_fill(pos, float("-inf"))
        num_neg = torch.minimum(self.neg_pos_ratio * num_pos, pos.shape[1] - num_pos)
        neg_sum = hard_negative_sum(neg_loss, num_neg)

        loss_loc = loss_loc / n
        loss_conf = (pos_sum + neg_sum) / n
        return LossParts(loss_loc + loss_conf, loss_loc, loss_conf)

    def static_forward(self, loc: Tensor, conf: Tensor, priors: Tensor, gt_boxes: Tensor,
                       gt_labels: Tensor) -> LossParts:
        """The same loss with static shapes: every default box computed, the positives' terms kept by a mask;
        hard negative mining as a descending sort of each image's background losses summed over its first
        ``num_neg`` ranks (the sum of the num_neg largest: equal to the topk form whatever the ties)."""
        loc, conf = loc.float(), conf.float()
        priors, gt_boxes = priors.float(), gt_boxes.float()
        B, P = loc.shape[:2]
        with torch.no_grad():
            if gt_labels.shape[1] == 0:  # no rows at all: every default box is background
                gt_boxes, gt_labels = gt_boxes.new_zeros(B, 1, 4), gt_labels.new_zeros(B, 1)
            matched = match_indices_static(gt_boxes, gt_labels, priors, self.iou_threshold)       # [B, P]
            pos = matched >= 0
            gt = matched.clamp(min=0)
            loc_t = encode(gt_boxes.gather(1, gt.unsqueeze(-1).expand(B, P, 4)), priors, self.variances)
            target = torch.where(pos, gt_labels.gather(1, gt), 0)
        num_pos = pos.sum(dim=1)
        n = num_pos.sum().clamp(min=1).to(conf.dtype)

        l1 = F.smooth_l1_loss(loc, loc_t, reduction="none").sum(dim=-1)                  # [B, P]
        loss_loc = torch.where(pos, l1, 0.0).sum()

        ce = BoxCrossEntropy.apply(conf, target, True)
        pos_sum = torch.where(pos, ce, 0.0).sum()
        num_neg = torch.minimum(self.neg_pos_ratio * num_pos, P - num_pos)
        ranked = ce.masked_fill(pos, float("-inf")).sort(dim=1, descending=True).values
        take = torch.arange(P, device=loc.device) < num_neg.unsqueeze(1)
        neg_sum = torch.where(take, ranked, 0.0).sum()

        loss_loc = loss_loc / n
        loss_conf = (pos_sum + neg_sum) / n
        return LossParts(loss_loc + loss_conf, loss_loc, loss_conf)


# ---------------------------------------------------------------- knowledge distillation (config `distill`)


class DistillParts(NamedTuple):
    total: Tensor  # weight * cls + box_weight * box
    cls: Tensor    # T^2 x mean over the selected default boxes of KL(teacher || student) at temperature T
    box: Tensor    # Smooth L1 between student and teacher offsets, summed over positives' coordinates / positives


def hard_negative_mask(neg_loss: Tensor, num_neg: Tensor) -> Tensor:
    """Bool ``[B, P]``: each row's ``num_neg[b]`` largest entries of ``neg_loss`` (positives -inf): the boxes
    :func:`hard_negative_sum` sums (ties broken by ``topk``)."""
    mask = torch.zeros_like(neg_loss, dtype=torch.bool)
    k = int(num_neg.max()) if num_neg.numel() else 0
    if k == 0:
        return mask
    index = neg_loss.topk(k, dim=1, sorted=True).indices
    take = torch.arange(k, device=neg_loss.device) < num_neg.unsqueeze(1)
    return mask.scatter_(1, index, take)


class DistillationLoss(nn.Module):
    """Knowledge distillation from a teacher SSD with the same default boxes (Hinton et al., 2015):

        cls = T^2 * mean over S of KL(softmax(teacher_conf / T) || softmax(conf / T))
        box = sum over positives of SmoothL1(loc, teacher_loc) / max(positives, 1)
        total = weight * cls + box_weight * box

    S is the set of default boxes MultiBoxLoss's confidence term sums over: the positives (matched to a
    ground-truth box) and, per image, the ``neg_pos_ratio`` x positives hardest negatives by the
    student's cross-entropy against background (hard negative mining). No selected box: 0. The
    teacher's outputs are targets (detached); its gradients are never taken.
    """

    def __init__(self, temperature: float = 2.0, weight: float = 1.0, box_weight: float = 0.0,
                 neg_pos_ratio: int = 3, iou_threshold: float = 0.5):
        super().__init__()
        self.temperature, self.weight, self.box_weight = float(temperature), float(weight), float(box_weight)
        self.neg_pos_ratio, self.iou_threshold = neg_pos_ratio, iou_threshold

    @torch.no_grad()
    def selection(self, conf: Tensor, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor]:
        """(positives, selected) bool ``[B, P]``: the matching and hard negative mining of MultiBoxLoss."""
        matched = match_indices(gt_boxes.float(), gt_labels, priors.float(), self.iou_threshold)
        pos = matched >= 0
        b, p = pos.nonzero(as_tuple=True)
        target = torch.zeros_like(matched)
        target[b, p] = gt_labels[b, matched[b, p]]
        ce = BoxCrossEntropy.apply(conf.float(), target)
        num_pos = pos.sum(dim=1)
        num_neg = torch.minimum(self.neg_pos_ratio * num_pos, pos.shape[1] - num_pos)
        return pos, pos | hard_negative_mask(ce.masked_fill(pos, float("-inf")), num_neg)

    def forward(self, loc: Tensor, conf: Tensor, teacher_loc: Tensor, teacher_conf: Tensor, priors: Tensor,
                gt_boxes: Tensor, gt_labels: Tensor) -> DistillParts:
        """Student ``loc [B, P, 4]``, ``conf [B, P, C]``; the teacher's on the same images; ``priors``, ground
        truth as for MultiBoxLoss."""
        loc, conf = loc.float(), conf.float()
        teacher_loc, teacher_conf = teacher_loc.detach().float(), teacher_conf.detach().float()
        pos, selected = self.selection(conf.detach(), priors, gt_boxes, gt_labels)
        T = self.temperature
        log_s = F.log_softmax(conf[selected] / T, dim=-1)            # [S, C]
        log_t = F.log_softmax(teacher_conf[selected] / T, dim=-1)
        kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1)              # [S]
        cls = kl.sum() / max(int(selected.sum()), 1) * (T * T)
        if self.box_weight > 0:
            box = F.smooth_l1_loss(loc[pos], teacher_loc[pos], reduction="sum") / max(int(pos.sum()), 1)
        else:
            box = cls.new_zeros(())
        return DistillParts(self.weight * cls + self.box_weight * box, cls, box)
