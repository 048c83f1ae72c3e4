"""Post-processing against torchvision's SSD.postprocess_detections; the grouped NMS back ends."""
from __future__ import annotations

import types

import pytest
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD
from torchvision.ops import batched_nms

from ssd_core import postprocess as pp
from ssd_core.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from ssd_core.postprocess import Detections, grouped_nms, postprocess
from tests.support.tensors import random_priors


def torchvision_postprocess(loc, conf, priors, top_k=400, max_detections=200):
    """torchvision's loop over images and classes, on anchors in [0, 1] (image size 1 x 1)."""
    ssd = types.SimpleNamespace(box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)), score_thresh=0.01,
                                nms_thresh=0.45, detections_per_img=max_detections, topk_candidates=top_k)
    B = loc.shape[0]
    heads = {"bbox_regression": loc, "cls_logits": conf}
    return SSD.postprocess_detections(ssd, heads, [cxcywh_to_xyxy(priors)] * B, [(1, 1)] * B)


def trained_like(B, P, C, g):
    """Background logit +12, 2% of priors +14 on one random class: ~0.02 P candidates per image."""
    conf = torch.randn(B, P, C, generator=g)
    conf[..., 0] += 12
    hit = (torch.rand(B, P, generator=g) < 0.02).float() * 14
    conf.scatter_add_(2, torch.randint(1, C, (B, P, 1), generator=g), hit.unsqueeze(-1))
    return conf


def assert_same(ours: Detections, ref: list[dict]):
    assert ours.boxes.shape[1] == ours.scores.shape[1] == ours.labels.shape[1]
    for i, r in enumerate(ref):
        n = int(ours.counts[i])
        assert n == len(r["scores"])
        assert torch.allclose(ours.scores[i, :n], r["scores"], atol=1e-6)
        assert torch.equal(ours.labels[i, :n], r["labels"])
        assert torch.allclose(ours.boxes[i, :n], r["boxes"], atol=1e-6)
        assert (ours.scores[i, n:] == 0).all() and (ours.labels[i, n:] == 0).all()


@pytest.mark.parametrize("kind", ["trained", "random"])
def test_equals_torchvision_postprocess(kind):
    g = torch.Generator().manual_seed(0)
    B, P, C = 2, 1500, 6
    priors = random_priors(P, g)
    loc = torch.randn(B, P, 4, generator=g)
    conf = trained_like(B, P, C, g) if kind == "trained" else torch.randn(B, P, C, generator=g)
    ours = postprocess(loc, conf, priors)
    assert ours.boxes.shape == (B, 200, 4) and ours.labels.dtype == torch.long
    if kind == "random":
        assert (ours.counts == 200).all()                     # capped at max_detections
    assert_same(ours, torchvision_postprocess(loc, conf, priors))


@pytest.mark.parametrize("top_k", [3, 400])
def test_top_k_per_class_and_both_nms_back_ends(monkeypatch, top_k):
    g = torch.Generator().manual_seed(1)
    B, P, C = 3, 800, 4
    priors = random_priors(P, g)
    loc = torch.randn(B, P, 4, generator=g) * 0.5
    conf = trained_like(B, P, C, g)
    ref = torchvision_postprocess(loc, conf, priors, top_k=top_k, max_detections=20)
    assert_same(postprocess(loc, conf, priors, top_k=top_k, max_detections=20), ref)
    monkeypatch.setattr(pp, "DENSE_NMS_MAX_ELEMENTS", 0)     # force torchvision's batched_nms back end
    monkeypatch.setattr(pp, "SPARSE_CANDIDATES_PER_IMAGE", 0)  # and the dense top-k candidate path
    assert_same(postprocess(loc, conf, priors, top_k=top_k, max_detections=20), ref)


def test_grouped_nms_equals_batched_nms():
    g = torch.Generator().manual_seed(2)
    n = 300
    xy = torch.rand(n, 2, generator=g) * 0.6
    boxes = torch.cat((xy, xy + torch.rand(n, 2, generator=g) * 0.3 + 0.05), 1)
    scores = torch.rand(n, generator=g)
    group = torch.randint(0, 7, (n,), generator=g)
    order = torch.argsort(scores, descending=True)
    order = order[torch.argsort(group[order], stable=True)]   # grouped, score-descending
    keep = grouped_nms(boxes[order], group[order], 0.45)
    ref = batched_nms(boxes, scores, group, 0.45)
    assert sorted(order[keep].tolist()) == sorted(ref.tolist())


def test_hand_example_same_class_suppressed_other_class_kept():
    priors = xyxy_to_cxcywh(torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9]]))
    loc = torch.zeros(1, 3, 4)
    conf = torch.full((1, 3, 3), -10.0)
    conf[0, 0, 1] = 5.0                                       # class 1, best
    conf[0, 1, 1] = 4.0                                       # class 1, IoU 0.9 with prior 0: suppressed
    conf[0, 1, 2] = 4.0                                       # class 2 at the same place: kept
    conf[0, 2, 0] = 5.0                                       # background
    out = postprocess(loc, conf, priors)
    assert out.counts.tolist() == [2]
    assert out.labels[0, :2].tolist() == [1, 2]
    assert torch.allclose(out.boxes[0, 0], torch.tensor([0.1, 0.1, 0.5, 0.5]))
    assert out.scores[0, 0] > out.scores[0, 1] > 0.01


def test_no_detections():
    conf = torch.zeros(2, 50, 5)
    conf[..., 0] = 20.0
    out = postprocess(torch.zeros(2, 50, 4), conf, random_priors(50, torch.Generator().manual_seed(3)))
    assert out.counts.tolist() == [0, 0]
    assert out.boxes.shape == (2, 200, 4) and (out.boxes == 0).all() and (out.labels == 0).all()


@pytest.mark.parametrize("max_steps", [64, 3])
def test_long_suppression_chain(monkeypatch, max_steps):
    # Box i overlaps i+1 (IoU 0.67) but not i+2 (0.43): greedy NMS keeps every other box, and the
    # fixed point needs ~n/2 steps (with 3 allowed steps it hands over to torchvision).
    monkeypatch.setattr(pp, "DENSE_NMS_MAX_STEPS", max_steps)
    x = torch.arange(40) * 0.02
    boxes = torch.stack((x, torch.zeros(40), x + 0.1, torch.ones(40)), dim=1)
    keep = grouped_nms(boxes, torch.zeros(40, dtype=torch.long), 0.45)
    assert keep.nonzero().flatten().tolist() == list(range(0, 40, 2))


def test_the_prior_prefilter_keeps_every_candidate_at_the_threshold_edge():
    """The sparse path only scores priors whose best foreground logit is within log(threshold) of the max
    logit. Scores placed right at the threshold (softmax 0.01 x (1 +- 1e-4)) and foreground classes that are
    the row's max still come out as torchvision's softmax > threshold says."""
    g = torch.Generator().manual_seed(3)
    B, P, C = 2, 600, 5
    priors = random_priors(P, g)
    loc = torch.randn(B, P, 4, generator=g) * 0.5
    conf = trained_like(B, P, C, g)
    edge = torch.rand(B, P, generator=g) < 0.1
    lse_rest = torch.logsumexp(conf[..., [0, 2, 3, 4]], dim=-1)
    sign = torch.where(torch.rand(B, P, generator=g) < 0.5, 1.0, -1.0)
    factor = 1 + sign * (1e-4 + 1e-4 * torch.rand(B, P, generator=g))  # 100-200 ulps of the logits, no ties
    target = 0.01 * factor  # softmax of class 1 = target: logit = lse_rest + log(t / (1 - t))
    conf[..., 1] = torch.where(edge, lse_rest + torch.log(target / (1 - target)), conf[..., 1])
    conf[0, :5, 3] = conf[0, :5].amax(-1) + torch.arange(1.0, 6.0)  # foreground classes that are the max logit
    ours = postprocess(loc, conf, priors)
    ref = torchvision_postprocess(loc, conf, priors)
    for i, r in enumerate(ref):  # as sets: the edge scores agree to a few ulps, so their order may not
        n = int(ours.counts[i])
        mine = {(int(lab), tuple(round(v, 4) for v in box)) for lab, box in
                zip(ours.labels[i, :n].tolist(), ours.boxes[i, :n].tolist())}
        theirs = {(int(lab), tuple(round(v, 4) for v in box)) for lab, box in
                  zip(r["labels"].tolist(), r["boxes"].tolist())}
        assert n == len(r["scores"]) and mine == theirs
    assert int(ours.counts.sum()) > 40 and (ours.scores[ours.scores > 0] < 0.0101).sum() > 5  # edge ones kept
