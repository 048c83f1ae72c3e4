"""Default boxes: the paper's / Caffe's scales, counts, known values and the reference ordering."""
from __future__ import annotations

import math
from itertools import product

import pytest
import torch

from ssd_core.errors import ConfigError
from ssd_core.priors import PriorSpec, caffe_sizes, default_boxes, default_steps, paper_prior_spec

MAPS_300 = (38, 19, 10, 5, 3, 1)
MAPS_512 = (64, 32, 16, 8, 4, 2, 1)


def reference_prior_box(spec: PriorSpec) -> torch.Tensor:
    """ssd.pytorch's PriorBox.forward, loops and all (the reference ordering)."""
    mean = []
    for k, f in enumerate(spec.feature_maps):
        for i, j in product(range(f), repeat=2):
            f_k = spec.image_size / spec.steps[k]
            cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
            s_k = spec.min_sizes[k] / spec.image_size
            mean += [cx, cy, s_k, s_k]
            s_k_prime = math.sqrt(s_k * (spec.max_sizes[k] / spec.image_size))
            mean += [cx, cy, s_k_prime, s_k_prime]
            for ar in spec.aspect_ratios[k]:
                mean += [cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)]
                mean += [cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)]
    return torch.tensor(mean).view(-1, 4).clamp(0, 1)


def test_ssd300_voc_is_the_paper_layout():
    spec = paper_prior_spec(300, MAPS_300)
    assert spec.min_sizes == (30, 60, 111, 162, 213, 264)
    assert spec.max_sizes == (60, 111, 162, 213, 264, 315)
    assert spec.steps == (8, 16, 32, 64, 100, 300)
    assert spec.aspect_ratios == ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    assert spec.boxes_per_cell() == [4, 6, 6, 6, 4, 4]
    boxes = default_boxes(spec)
    assert boxes.shape == (8732, 4) and boxes.dtype == torch.float32
    assert spec.num_priors() == 8732


def test_ssd300_coco_sizes():
    spec = paper_prior_spec(300, MAPS_300, "coco")
    assert spec.min_sizes == (21, 45, 99, 153, 207, 261)
    assert spec.max_sizes == (45, 99, 153, 207, 261, 315)


def test_ssd512_voc_and_coco_sizes():
    voc = paper_prior_spec(512, MAPS_512)
    assert voc.min_sizes == pytest.approx((35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8))
    assert voc.max_sizes == pytest.approx((76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6))
    assert voc.steps == (8, 16, 32, 64, 128, 256, 512)
    assert voc.boxes_per_cell() == [4, 6, 6, 6, 6, 4, 4]
    assert default_boxes(voc).shape == (24564, 4)
    coco = paper_prior_spec(512, MAPS_512, "coco")  # Caffe ssd_coco.py, SSD512
    assert coco.min_sizes == pytest.approx((20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8))
    assert coco.max_sizes == pytest.approx((51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72))


def test_caffe_rule_for_other_map_counts():
    # m = 5: step = floor(70 / 3) = 23 -> ratios 20, 43, 66, 89
    mins, maxs = caffe_sizes(100, 5, 20, 90, 10)
    assert mins == pytest.approx((10, 20, 43, 66, 89))
    assert maxs == pytest.approx((20, 43, 66, 89, 112))
    # m = 11: step = 7 would give 11 ratios from range(20, 91, 7); only m - 1 = 10 are used
    mins, maxs = caffe_sizes(100, 11, 20, 90, 10)
    assert len(mins) == len(maxs) == 11 and mins[-1] == pytest.approx(83)
    assert caffe_sizes(100, 1, 20, 90, 10) == ((10.0,), (20.0,))


def test_default_steps_round_like_the_reference():
    assert default_steps(300, MAPS_300) == (8, 16, 32, 64, 100, 300)
    assert default_steps(512, MAPS_512) == (8, 16, 32, 64, 128, 256, 512)
    assert default_steps(128, (16, 8, 4, 2, 1)) == (8, 16, 32, 64, 128)
    assert default_steps(160, (20, 10, 5, 3, 1)) == (8, 16, 32, pytest.approx(160 / 3), 160)
    assert default_steps(33, (5, 3, 1)) == (6.6, 11, 33)  # odd sizes: spread evenly, 1x1 map centred


def test_known_box_values():
    boxes = default_boxes(paper_prior_spec(300, MAPS_300))
    s, s_prime = 0.1, math.sqrt(0.1 * 0.2)
    expected_first_cell = torch.tensor(
        [
            [4 / 300, 4 / 300, s, s],
            [4 / 300, 4 / 300, s_prime, s_prime],
            [4 / 300, 4 / 300, s * math.sqrt(2), s / math.sqrt(2)],
            [4 / 300, 4 / 300, s / math.sqrt(2), s * math.sqrt(2)],
        ]
    )
    torch.testing.assert_close(boxes[:4], expected_first_cell)
    # second cell of conv4_3 is one step (8 px) to the right: cell-major, x inner
    torch.testing.assert_close(boxes[4, :2], torch.tensor([12 / 300, 4 / 300]))
    # the last box: the 1x1 map, centre (0.5, 0.5), ratio 1/2 of s = 264/300, clipped height
    torch.testing.assert_close(boxes[-1], torch.tensor([0.5, 0.5, 0.88 / math.sqrt(2), 1.0]))
    # first box of the 19x19 map (after 38*38*4 boxes): 6 per cell with ratios 3 and 1/3 last
    fc7 = boxes[38 * 38 * 4 : 38 * 38 * 4 + 6]
    torch.testing.assert_close(fc7[4, 2:], torch.tensor([0.2 * math.sqrt(3), 0.2 / math.sqrt(3)]))
    torch.testing.assert_close(fc7[:, :2], torch.full((6, 2), 8 / 300))


@pytest.mark.parametrize("size,maps", [(300, MAPS_300), (512, MAPS_512), (160, (20, 10, 5, 3, 1))])
def test_equals_the_reference_loop_ordering(size, maps):
    spec = paper_prior_spec(size, maps)
    torch.testing.assert_close(default_boxes(spec), reference_prior_box(spec), rtol=0, atol=1e-7)


def test_equals_torchvision_default_box_generator():
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_convert

    # torchvision clamps only w, h; ssd.pytorch (and we) clamp cx, cy as well, which matters where a
    # step does not divide the image (10 x 32 px > 300 px): compare unclipped
    spec = paper_prior_spec(300, MAPS_300, clip=False)
    scales = [m / 300 for m in spec.min_sizes] + [spec.max_sizes[-1] / 300]
    generator = DefaultBoxGenerator(
        [list(r) for r in spec.aspect_ratios], scales=scales, steps=list(spec.steps), clip=False
    )
    images = ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)])
    theirs = generator(images, [torch.zeros(1, 1, f, f) for f in MAPS_300])[0]  # xyxy pixels
    ours = box_convert(default_boxes(spec) * 300, "cxcywh", "xyxy")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_clip_and_overrides():
    clipped = default_boxes(paper_prior_spec(300, MAPS_300))
    assert clipped.min() >= 0 and clipped.max() <= 1
    raw = default_boxes(paper_prior_spec(300, MAPS_300, clip=False))
    assert raw[-2, 2].item() == pytest.approx(0.88 * math.sqrt(2))  # ratio 2 on the 1x1 map: w > 1
    spec = paper_prior_spec(
        300, MAPS_300, min_sizes=(10, 20, 30, 40, 50, 60), aspect_ratios=[(2, 3)] * 6, steps=(8, 16, 30, 60, 100, 300)
    )
    assert spec.min_sizes == (10, 20, 30, 40, 50, 60) and spec.max_sizes == (60, 111, 162, 213, 264, 315)
    assert spec.boxes_per_cell() == [6] * 6
    assert default_boxes(spec).shape == (6 * sum(f * f for f in MAPS_300), 4)
    custom = paper_prior_spec(300, MAPS_300, min_ratio=10, max_ratio=80, first_ratio=5)
    assert custom.min_sizes[:2] == (15, 30) and custom.max_sizes[0] == 30


def test_bad_specs_are_config_errors():
    with pytest.raises(ConfigError, match="min_sizes"):
        paper_prior_spec(300, MAPS_300, min_sizes=(30, 60))
    with pytest.raises(ConfigError, match="prior_scales"):
        paper_prior_spec(300, MAPS_300, "kitti")
    with pytest.raises(ConfigError, match="aspect_ratios"):
        paper_prior_spec(300, MAPS_300, aspect_ratios=[(2, -1)] * 6)
