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

from .boxes import VARIANCES, encode, match_indices


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
    def forward(ctx, conf: Tensor, target: Tensor) -> Tensor:
        lse = log_sum_exp(conf)
        ctx.save_for_backward(conf, lse, target)
        return lse - conf.gather(-1, target.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        conf, lse, target = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        out = (conf - lse.unsqueeze(-1)).exp_().mul_(g)                # softmax * grad
        return out.scatter_add_(-1, target.unsqueeze(-1), -g), None    # - onehot * grad


class MultiBoxLoss(nn.Module):
    """SSD training objective. ``forward`` returns :class:`LossParts` of scalars."""

    def __init__(self, neg_pos_ratio: int = 3, iou_threshold: float = 0.5, variances=VARIANCES):
        super().__init__()
        self.neg_pos_ratio = neg_pos_ratio
        self.iou_threshold = iou_threshold
        self.variances = tuple(variances)

    def forward(self, loc: Tensor, conf: Tensor, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> LossParts:
        """``loc [B, P, 4]``, ``conf [B, P, C]`` raw head outputs; ``priors [P, 4]`` cx, cy, w, h;
        ``gt_boxes [B, M, 4]`` xyxy in [0, 1]; ``gt_labels [B, M]`` (0 = padding)."""
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
