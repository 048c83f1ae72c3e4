"""MultiBox loss (paper eq. 1) against torchvision's SSD.compute_loss, plus its edge cases."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

from ssd_core.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from ssd_core.loss import LossParts, MultiBoxLoss, hard_negative_sum, log_sum_exp
from tests.support.tensors import random_priors, random_targets


def torchvision_loss(loc, conf, priors, boxes, labels, size=300.0):
    """torchvision's own code path: SSDMatcher(0.5) per image + SSD.compute_loss, in pixels."""
    anchors = cxcywh_to_xyxy(priors) * size
    ssd = types.SimpleNamespace(box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)), neg_to_pos_ratio=3.0)
    matcher = det_utils.SSDMatcher(0.5)
    targets, matched = [], []
    for b, l in zip(boxes, labels):
        t = {"boxes": b[l > 0] * size, "labels": l[l > 0]}
        targets.append(t)
        if len(t["boxes"]) == 0:
            matched.append(torch.full((len(anchors),), -1, dtype=torch.int64))
        else:
            matched.append(matcher(box_iou(t["boxes"], anchors)))
    out = SSD.compute_loss(ssd, targets, {"bbox_regression": loc, "cls_logits": conf}, [anchors] * len(boxes), matched)
    return out["bbox_regression"], out["classification"]


def make_batch(seed, B=4, P=600, C=6, M=7):
    g = torch.Generator().manual_seed(seed)
    priors = random_priors(P, g)
    boxes, labels = random_targets(B, M, C, g)
    loc = torch.randn(B, P, 4, generator=g)
    conf = torch.randn(B, P, C, generator=g) * 3
    return loc, conf, priors, boxes, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_torchvision_compute_loss_and_gradients(seed):
    loc, conf, priors, boxes, labels = make_batch(seed)
    loc1, conf1 = loc.clone().requires_grad_(), conf.clone().requires_grad_()
    ours = MultiBoxLoss()(loc1, conf1, priors, boxes, labels)
    assert isinstance(ours, LossParts)
    loc2, conf2 = loc.clone().requires_grad_(), conf.clone().requires_grad_()
    ref_loc, ref_conf = torchvision_loss(loc2, conf2, priors, boxes, labels)
    assert torch.allclose(ours.loc, ref_loc, rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours.conf, ref_conf, rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours.total, ref_loc + ref_conf, rtol=1e-5, atol=1e-5)
    ours.total.backward()
    (ref_loc + ref_conf).backward()
    assert torch.allclose(loc1.grad, loc2.grad, atol=1e-6)
    assert torch.allclose(conf1.grad, conf2.grad, atol=1e-6)


def test_hand_computed_single_image():
    # One object matched to prior 0 only; 3 hard negatives out of 5 background priors.
    priors = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 0.5, 0.5]] + [[0.6 + 0.05 * i, 0.6, 0.65 + 0.05 * i, 0.7]
                                                                      for i in range(5)]))
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5]]])
    labels = torch.tensor([[2]])
    conf = torch.tensor([[[0.0, 0.0, 1.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0],
                          [1.0, 1.0, 1.0], [0.0, 0.5, 0.0]]])
    loc = torch.zeros(1, 6, 4)
    loc[0, 0] = torch.tensor([1.0, 0.25, 0.0, 0.0])          # targets are 0: smooth L1 = 0.5 + 0.03125
    out = MultiBoxLoss()(loc, conf, priors, boxes, labels)
    ce = F.cross_entropy(conf[0], torch.tensor([2, 0, 0, 0, 0, 0]), reduction="none")
    expected_conf = ce[0] + ce[1:].topk(3).values.sum()
    assert torch.allclose(out.conf, expected_conf, atol=1e-6)
    assert torch.allclose(out.loc, torch.tensor(0.53125), atol=1e-6)


def test_padding_rows_are_ignored():
    loc, conf, priors, boxes, labels = make_batch(7, M=3)
    junk = torch.tensor([0.2, 0.2, 0.7, 0.7]).expand(boxes.shape[0], 4, 4)
    padded = MultiBoxLoss()(loc, conf, priors, torch.cat((boxes, junk), 1),
                            torch.cat((labels, torch.zeros(labels.shape[0], 4, dtype=torch.long)), 1))
    plain = MultiBoxLoss()(loc, conf, priors, boxes, labels)
    assert torch.allclose(torch.stack(padded), torch.stack(plain))


@pytest.mark.parametrize("M", [0, 3])
def test_batch_without_objects_is_finite(M):
    loc, conf, priors, _, _ = make_batch(8)
    loc.requires_grad_()
    conf.requires_grad_()
    out = MultiBoxLoss()(loc, conf, priors, torch.zeros(4, M, 4), torch.zeros(4, M, dtype=torch.long))
    assert out.total.item() == 0.0 and out.loc.item() == 0.0 and out.conf.item() == 0.0
    out.total.backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(conf.grad).all()


def test_mixed_empty_and_full_images_equal_torchvision():
    loc, conf, priors, boxes, labels = make_batch(9)
    labels[1] = 0
    ours = MultiBoxLoss()(loc, conf, priors, boxes, labels)
    ref_loc, ref_conf = torchvision_loss(loc, conf, priors, boxes, labels)
    assert torch.allclose(ours.loc, ref_loc, atol=1e-5) and torch.allclose(ours.conf, ref_conf, atol=1e-5)


def test_bf16_outputs_give_an_fp32_loss():
    loc, conf, priors, boxes, labels = make_batch(10)
    out = MultiBoxLoss()(loc.bfloat16(), conf.bfloat16(), priors, boxes, labels)
    ref = MultiBoxLoss()(loc.bfloat16().float(), conf.bfloat16().float(), priors, boxes, labels)
    assert out.total.dtype == torch.float32 and torch.allclose(out.total, ref.total)


def test_log_sum_exp_fast_path_and_fallback():
    x = torch.randn(3, 50, 21) * 4
    assert torch.allclose(log_sum_exp(x), torch.logsumexp(x, -1), atol=1e-5)
    x[0, 0] += 500.0                                          # overflow -> exact fallback
    x[1, 1] -= 500.0                                          # underflow -> exact fallback
    assert torch.allclose(log_sum_exp(x), torch.logsumexp(x, -1), atol=1e-4)


def test_hard_negative_sum_counts_per_image():
    neg = torch.tensor([[5.0, float("-inf"), 1.0, 3.0], [2.0, 4.0, 0.5, 1.0]])
    assert hard_negative_sum(neg, torch.tensor([2, 1])).item() == 5.0 + 3.0 + 4.0
    assert hard_negative_sum(neg, torch.tensor([0, 0])).item() == 0.0


# ---------------------------------------------------------------- the static form (MultiBoxLoss.static_forward)


def _both(loc, conf, priors, boxes, labels, **kw):
    """(sparse, static) LossParts and the gradients of each total w.r.t. loc and conf."""
    out = []
    for static in (False, True):
        l, c = loc.clone().requires_grad_(), conf.clone().requires_grad_()
        parts = MultiBoxLoss(static=static, **kw)(l, c, priors, boxes, labels)
        parts.total.backward()
        out.append((parts, l.grad, c.grad))
    return out


def _assert_equal(sparse, static):
    (a, ga_loc, ga_conf), (b, gb_loc, gb_conf) = sparse, static
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-6), (x, y)
    assert torch.allclose(ga_loc, gb_loc, atol=1e-7) and torch.allclose(ga_conf, gb_conf, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_static_loss_equals_the_sparse_one_values_and_gradients(seed):
    _assert_equal(*_both(*make_batch(seed, B=5, P=700, C=5, M=9)))


def test_static_matching_equals_match_indices_with_ties_and_shared_default_boxes():
    from ssd_core.boxes import match_indices, match_indices_static
    g = torch.Generator().manual_seed(3)
    priors = random_priors(300, g)
    boxes, labels = random_targets(6, 8, 4, g)
    boxes[0, 1], labels[0, 1] = boxes[0, 0], labels[0, 0]   # two identical objects: both want one default box
    boxes[1, 2] = torch.tensor([0.3, 0.3, 0.3, 0.6])         # a degenerate box never matches
    assert torch.equal(match_indices(boxes, labels, priors), match_indices_static(boxes, labels, priors))
    grid = torch.tensor([[x, y, 0.2, 0.2] for x in (0.25, 0.5, 0.75) for y in (0.25, 0.5, 0.75)])
    tied = torch.tensor([[[0.4, 0.4, 0.6, 0.6], [0.15, 0.15, 0.35, 0.35]]])  # exact IoU ties with the grid
    lab = torch.tensor([[1, 2]])
    assert torch.equal(match_indices(tied, lab, grid), match_indices_static(tied, lab, grid))


def test_static_loss_with_no_positive_and_with_every_box_positive():
    loc, conf, priors, boxes, labels = make_batch(5, B=3, P=200, C=4, M=4)
    none = _both(loc, conf, priors, boxes * 0, labels * 0)   # no objects: exactly 0, zero gradients
    _assert_equal(*none)
    assert float(none[1][0].total) == 0.0 and not none[1][2].any()
    _assert_equal(*_both(loc, conf, priors, boxes[:, :0], labels[:, :0]))  # no rows at all
    same = torch.tensor([[0.5, 0.5, 0.4, 0.4]]).expand(50, 4)  # every default box is the object: all positive
    obj = cxcywh_to_xyxy(same[:1]).expand(3, 1, 4).contiguous()
    out = _both(loc[:, :50], conf[:, :50], same, obj, torch.ones(3, 1, dtype=torch.long))
    _assert_equal(*out)
    assert float(out[1][0].conf) > 0  # positives only: no negative to mine (3 x 50 capped at 0)


def test_static_loss_has_no_data_dependent_shape_and_no_host_sync():
    """Dynamo traces the static form as one graph (a `nonzero`, a boolean index, `.item()` or `int(tensor)`
    would break it: each is a device-to-host synchronisation on a GPU); the sparse form does break."""
    import torch._dynamo as dynamo

    loc, conf, priors, boxes, labels = make_batch(0, B=2, P=120, C=4, M=3)
    dynamo.reset()
    static = torch.compile(MultiBoxLoss(static=True), backend="eager", fullgraph=True)
    ref = MultiBoxLoss(static=False)(loc, conf, priors, boxes, labels)
    assert torch.allclose(static(loc, conf, priors, boxes, labels).total, ref.total, atol=1e-6)
    dynamo.reset()
    sparse = torch.compile(MultiBoxLoss(static=False), backend="eager", fullgraph=True)
    with pytest.raises(dynamo.exc.TorchDynamoException):  # a graph break under fullgraph=True
        sparse(loc, conf, priors, boxes, labels)
    dynamo.reset()
