"""Box geometry, encoding (paper eq. 2) and matching (paper section 2.2) against torchvision."""
from __future__ import annotations

import torch
from torchvision.models.detection._utils import BoxCoder, SSDMatcher
from torchvision.ops import box_iou

from ssd_core.boxes import batched_iou, cxcywh_to_xyxy, decode, encode, match, match_indices, xyxy_to_cxcywh
from tests.support.tensors import random_priors, random_targets


def test_format_round_trip():
    b = torch.tensor([[0.1, 0.2, 0.5, 0.8]])
    c = xyxy_to_cxcywh(b)
    assert torch.allclose(c, torch.tensor([[0.3, 0.5, 0.4, 0.6]]))
    assert torch.allclose(cxcywh_to_xyxy(c), b)


def test_encode_hand_value():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    box = torch.tensor([[0.42, 0.3, 0.62, 0.9]])             # cx .52, cy .6, w .2, h .6
    t = encode(box, prior)
    expected = torch.tensor([[0.02 / (0.1 * 0.2), 0.1 / (0.1 * 0.4), 0.0, torch.log(torch.tensor(1.5)) / 0.2]])
    assert torch.allclose(t, expected, atol=1e-5)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    priors = random_priors(50, g)
    boxes, _ = random_targets(3, 50, 2, g, min_objects=50)     # [3, 50, 4], one per prior
    assert torch.allclose(decode(encode(boxes, priors), priors), boxes, atol=1e-6)


def test_agrees_with_torchvision_box_coder():
    g = torch.Generator().manual_seed(1)
    size = 300.0
    priors = random_priors(40, g)
    boxes, _ = random_targets(1, 40, 2, g, min_objects=40)
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    anchors = cxcywh_to_xyxy(priors) * size
    ref = coder.encode_single(boxes[0] * size, anchors)
    assert torch.allclose(encode(boxes[0], priors), ref, atol=1e-4)
    loc = torch.randn(40, 4, generator=g)
    assert torch.allclose(decode(loc, priors) * size, coder.decode_single(loc, anchors), atol=1e-3)


def test_degenerate_and_wild_values_stay_finite():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    sliver = torch.tensor([[0.5, 0.5, 0.5, 0.9]])             # zero width
    assert torch.isfinite(encode(sliver, priors)).all()
    assert torch.isfinite(decode(torch.full((1, 4), 1e4), priors)).all()


def test_batched_iou_equals_box_iou():
    g = torch.Generator().manual_seed(2)
    priors = random_priors(64, g)
    boxes, _ = random_targets(3, 5, 2, g, min_objects=5)
    iou = batched_iou(boxes, cxcywh_to_xyxy(priors))
    assert iou.shape == (3, 5, 64)
    for b in range(3):
        assert torch.allclose(iou[b], box_iou(boxes[b], cxcywh_to_xyxy(priors)), atol=1e-6)


def test_match_hand_example():
    # Priors: two on the left half, one on the right; ground truth covers the left half.
    priors = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.5, 0.6], [0.5, 0.0, 1.0, 1.0]]))
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[7, 0]])
    loc_t, conf_t = match(boxes, labels, priors)
    assert conf_t.tolist() == [[7, 7, 0]]                     # IoU 1.0 and 0.6 >= 0.5; 0.0 < 0.5
    assert torch.allclose(loc_t[0, 0], torch.zeros(4), atol=1e-6)


def test_best_prior_is_forced_below_threshold():
    priors = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.6, 0.6, 1.0, 1.0]]))
    boxes = torch.tensor([[[0.0, 0.0, 0.1, 0.3]]])            # IoU 0.2 with prior 0: still its match
    assert match_indices(boxes, torch.tensor([[3]]), priors).tolist() == [[0, -1]]


def test_match_equals_torchvision_ssd_matcher():
    g = torch.Generator().manual_seed(3)
    priors = random_priors(500, g)
    boxes, labels = random_targets(6, 8, 5, g)
    idx = match_indices(boxes, labels, priors)
    matcher = SSDMatcher(0.5)
    for b in range(6):
        keep = labels[b] > 0
        ref = matcher(box_iou(boxes[b][keep], cxcywh_to_xyxy(priors)))
        assert torch.equal(idx[b], ref.clamp(min=-1))


def test_padding_and_degenerate_rows_never_match():
    g = torch.Generator().manual_seed(4)
    priors = random_priors(300, g)
    boxes, labels = random_targets(2, 4, 3, g, min_objects=4)
    padded_boxes = torch.cat((boxes, torch.tensor([[0.1, 0.1, 0.6, 0.6]]).expand(2, 2, 4)), dim=1)
    padded_labels = torch.cat((labels, torch.zeros(2, 2, dtype=torch.long)), dim=1)
    degenerate = torch.tensor([[0.3, 0.3, 0.3, 0.8]]).expand(2, 1, 4)      # zero width, label 1
    padded_boxes = torch.cat((padded_boxes, degenerate), dim=1)
    padded_labels = torch.cat((padded_labels, torch.ones(2, 1, dtype=torch.long)), dim=1)
    idx = match_indices(padded_boxes, padded_labels, priors)
    assert torch.equal(idx, match_indices(boxes, labels, priors))
    loc_t, conf_t = match(padded_boxes, padded_labels, priors)
    assert torch.isfinite(loc_t).all() and int(idx.max()) < 4


def test_every_object_gets_a_prior_and_batch_equals_per_image():
    g = torch.Generator().manual_seed(5)
    priors = random_priors(400, g)
    boxes, labels = random_targets(5, 6, 4, g)
    idx = match_indices(boxes, labels, priors)
    for b in range(5):
        n = int((labels[b] > 0).sum())
        assert set(idx[b][idx[b] >= 0].tolist()) == set(range(n))
        assert torch.equal(idx[b], match_indices(boxes[b:b + 1], labels[b:b + 1], priors)[0])


def test_empty_targets_are_all_background():
    priors = random_priors(10, torch.Generator().manual_seed(6))
    for M in (0, 3):
        loc_t, conf_t = match(torch.zeros(2, M, 4), torch.zeros(2, M, dtype=torch.long), priors)
        assert loc_t.shape == (2, 10, 4) and conf_t.shape == (2, 10)
        assert (conf_t == 0).all() and torch.isfinite(loc_t).all()
