"""experiments/evidence.py: the detection grid a researcher looks at first must say what it shows."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from experiments import evidence as E
from ssd_core.train import fit
from tests.support.configs import tiny_config


def test_tags_of_overlapping_boxes_do_not_cover_each_other_and_stay_inside_the_image():
    img = Image.new("RGB", (120, 120), (0, 0, 0))
    draw, placed, font = ImageDraw.Draw(img), [], E._font(11)
    for _ in range(4):  # four detections of one object: their labels stack instead of overprinting
        E._tag(draw, (0.0, 0.0, 60.0, 50.0), "platelets 0.93", "#e6194b", font, placed, img.size)
    assert len(placed) == 4
    assert not any(E._overlaps(a, [b]) for i, a in enumerate(placed) for b in placed[i + 1:])
    assert all(0 <= r[0] and 0 <= r[1] and r[2] <= 120 and r[3] <= 120 for r in placed)
    px = np.asarray(img)
    assert (px[..., 1] == 255).any()  # white text drawn on the filled red tag


def test_a_difficult_box_is_dashed_and_an_ordinary_one_solid():
    img = Image.new("RGB", (100, 100), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    E._solid(draw, (10, 10, 90, 40), (255, 255, 255))
    E._dashed(draw, (10, 60, 90, 90), (255, 255, 255))
    px = np.asarray(img)[..., 0] == 255
    assert px[10, 10:91].all()                        # solid top edge
    assert 0.35 < px[60, 10:91].mean() < 0.65          # dashes: about half the edge drawn


def test_the_grid_carries_its_legend_with_every_class_colour(tmp_path):
    cfg = tiny_config(tmp_path / "data", tmp_path / "out", epochs=1)
    result = fit(cfg)
    png = E.detection_grid(result.run_dir / "best.pt", images=4, tile=128)
    grid = Image.open(io.BytesIO(png)).convert("RGB")
    names = cfg.data.class_names
    legend = E._legend_height(names, 3 * 128, E._font(11))
    assert grid.size == (3 * 128, 2 * 128 + legend)
    strip = np.asarray(grid)[2 * 128:]
    for c in range(len(names)):  # one swatch per class in the caption strip
        rgb = tuple(int(E.PALETTE[c][k:k + 2], 16) for k in (1, 3, 5))
        assert (strip == rgb).all(axis=-1).sum() >= 100, names[c]
