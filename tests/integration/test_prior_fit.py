"""Default boxes fitted to the data (ssd_core/prior_fit/): coverage by hand, fits that recover label sets of
known sizes and shapes where the paper's VOC boxes do not cover them, fitted models built and restored
without the data."""
from __future__ import annotations

import numpy as np
import pytest

from ssd_core import prior_fit as PF
from ssd_core.errors import ConfigError
from ssd_core.priors import default_steps, paper_prior_spec

MAPS512 = (64, 32, 16, 8, 4, 2, 1)  # SSD512-VGG16's maps
STEPS512 = default_steps(512, MAPS512)


def boxes_of(rng, n, w_px, h_px, size=512):
    """n boxes of w x h pixels at uniform positions in a size x size image, normalised xyxy."""
    w, h = np.full(n, w_px / size), np.full(n, h_px / size)
    x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
    return np.stack([x, y, x + w, y + h], 1)


def test_coverage_by_hand_on_one_map():
    """One 2x2 map of 10 px steps (20 px image), square default boxes of 10 px: a 10 px box centred on a
    cell has IoU 1; one shifted by 5 px in x has IoU 5*10 / (200 - 50) = 1/3."""
    from ssd_core.priors import PriorSpec

    spec = PriorSpec(20, (2,), (10,), (10,), (10,), ((),))  # the extra box sqrt(10 * 10) = 10 too
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], float) / 20
    cov = PF.coverage(spec, boxes, np.array([1, 2]), ["a", "b"])
    assert cov.best_iou == pytest.approx([1.0, 1 / 3])
    assert cov.bpr == 0.5 and cov.per_class() == {"a": 1.0, "b": 0.0} and cov.class_mean() == 0.5
    assert cov.maps_by_class() == {"a": {0: 1}, "b": {0: 1}}
    assert cov.sizes.tolist() == [0, 0]  # 10 x 10 px at the 20 px input: "small" by COCO's areas


MAPS300 = (38, 19, 10, 5, 3, 1)


@pytest.mark.parametrize("case", ["small", "two sizes", "thin 3:1"])
def test_the_fit_covers_label_sets_of_known_sizes_that_the_voc_boxes_miss(case):
    """24 px objects at 512 px (3x the first map's stride: coverable wherever they lie; VOC's first box is 36
    px), 24 and 300 px together, and 72 x 24 px at 300 px (3:1, between VOC's scales; VOC covers 2:1 boxes
    fully with its ratio-2 boxes)."""
    rng = np.random.default_rng(0)
    size, maps = (300, MAPS300) if case == "thin 3:1" else (512, MAPS512)
    if case == "small":
        boxes = boxes_of(rng, 2000, 24, 24)
    elif case == "two sizes":
        boxes = np.concatenate([boxes_of(rng, 1000, 24, 24), boxes_of(rng, 1000, 300, 300)])
    else:
        boxes = boxes_of(rng, 2000, 72, 24, size=300)
    steps = default_steps(size, maps)
    labels = np.ones(len(boxes), np.int64)
    voc = PF.coverage(paper_prior_spec(size, maps), boxes, labels, ["x"])
    fit = PF.fit_sizes(maps, steps, size, boxes, labels, 1)
    spec = paper_prior_spec(size, maps, min_sizes=[size * s for s in fit.sizes[:-1]],
                            max_sizes=[size * s for s in fit.sizes[1:]])
    fitted = PF.coverage(spec, boxes, labels, ["x"])
    assert fitted.bpr >= 0.99, (case, fit.sizes)
    assert voc.bpr < fitted.bpr - 0.15, (case, voc.bpr)
    assert all(b > a for a, b in zip(fit.sizes, fit.sizes[1:]))  # one size per map, increasing with the stride
    if case == "small":
        assert fit.sizes[0] == pytest.approx(24 / 512, rel=0.15) and voc.bpr < 0.1
    assert PF.fit_sizes(maps, steps, size, boxes, labels, 1).sizes == fit.sizes  # deterministic


def test_aspect_auto_finds_the_ratio_of_thin_boxes_within_the_box_cap():
    """5:1 boxes: the paper's ratios reach IoU 0.5 once the sizes are fitted (mean best IoU 0.64); fitting the
    ratios too finds 4 (mean best IoU 0.81) and keeps every cell within the cap, dropping the unused ratios."""
    rng = np.random.default_rng(1)
    boxes = boxes_of(rng, 2000, 200, 40)
    labels = np.ones(len(boxes), np.int64)
    voc = PF.coverage(paper_prior_spec(512, MAPS512), boxes, labels, ["x"])
    paper = PF.fit_sizes(MAPS512, STEPS512, 512, boxes, labels, 1)
    auto = PF.fit_sizes(MAPS512, STEPS512, 512, boxes, labels, 1, aspect=True, max_boxes=6)
    assert voc.bpr < 0.95 and paper.objective[0] >= 0.99 and auto.objective[0] >= 0.99
    assert auto.objective[1] > paper.objective[1] + 0.1
    assert 4.0 in auto.aspect_ratios[0] and all(2 + 2 * len(r) <= 6 for r in auto.aspect_ratios)
    assert sum(map(len, auto.aspect_ratios)) < sum(map(len, paper.aspect_ratios))


def test_no_boxes_is_one_clear_error():
    with pytest.raises(ConfigError, match="no boxes with an area"):
        PF.fit_sizes(MAPS512, STEPS512, 512, np.zeros((3, 4)), np.ones(3, np.int64), 1)


def test_a_fitted_model_builds_from_the_config_and_its_heads_match_its_boxes():
    import torch

    from ssd_core.config import ModelConfig
    from ssd_core.model import build_ssd, feature_map_sizes

    n = len(feature_map_sizes(ModelConfig(backbone="tiny", image_size=96)))  # 4 maps: 12, 6, 3, 1
    sizes = [0.1, 0.25, 0.45, 0.7, 1.0]
    ratios = [[2.0], [2.0, 4.0], [], [3.0]]
    assert n == 4
    m = ModelConfig(backbone="tiny", image_size=96, prior_scales="auto", prior_sizes=sizes + [1.2],
                    prior_aspect="auto", prior_aspect_ratios=ratios)
    with pytest.raises(ConfigError, match="6 sizes for 4 feature maps: expected 5"):
        build_ssd(m, 3)
    m = m.model_copy(update={"prior_sizes": sizes})
    model = build_ssd(m, 3)
    assert model.prior_spec.boxes_per_cell() == [4, 6, 2, 4]
    assert model.prior_spec.min_sizes == pytest.approx([96 * v for v in sizes[:-1]])
    loc, conf = model(torch.zeros(2, 3, 96, 96))
    assert loc.shape == (2, model.priors.shape[0], 4) and conf.shape == (2, model.priors.shape[0], 3)
    with pytest.raises(ConfigError, match="not been fitted"):
        build_ssd(ModelConfig(backbone="tiny", image_size=96, prior_scales="auto"), 3)
    with pytest.raises(Exception, match="prior_first_ratio 6.0: prior_scales auto fits the sizes"):
        ModelConfig(prior_scales="auto", prior_first_ratio=6)


def test_auto_priors_are_fitted_once_recorded_and_restored_without_the_data(tmp_path):
    """fit with prior_scales auto: the fitted sizes are in the checkpoint's config and the run's coverage
    metrics; the checkpoint evaluates to the logged mAP and exports with the training data gone."""
    import shutil

    from ssd_core.config import apply_overrides, to_yaml
    from ssd_core.inference import evaluate_checkpoint, model_from_checkpoint
    from ssd_core.synth import ensure_synthetic
    from ssd_core.train import fit
    from tests.support.configs import tiny_config

    root = tmp_path / "shapes"
    ensure_synthetic(root, images=24, seed=0, image_size=96)
    cfg = apply_overrides(tiny_config(root, tmp_path / "runs", epochs=1), {"model.prior_scales": "auto"})
    resolved = PF.resolve_priors(cfg)
    assert resolved.model.prior_sizes is not None and cfg.model.prior_sizes is None
    result = fit(cfg, run_dir=tmp_path / "run")
    first = result.metrics_history[0]
    assert 0 <= first["data/coverage50"] <= 1 and "data/coverage50/circle" in first
    model, names, saved = model_from_checkpoint(result.best_checkpoint)
    assert saved.model.prior_sizes == resolved.model.prior_sizes and "prior_sizes" in to_yaml(saved)
    logged = result.metrics_history[-1]["test/mAP50"]
    test_only = tmp_path / "test_only"
    shutil.copytree(root, test_only)
    (test_only / "SHAPES" / "ImageSets" / "Main" / "train.txt").unlink()  # no training split: nothing to fit on
    again = evaluate_checkpoint(apply_overrides(cfg, {"data.root": str(test_only)}), result.best_checkpoint, "test")
    assert again["test/mAP50"] == pytest.approx(logged, abs=1e-9)
    shutil.rmtree(root)  # the data is gone: the checkpoint still exports
    from ssdlab.cli import main
    assert main(["export", str(result.best_checkpoint), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 1000


def test_data_check_prints_coverage_before_and_after_the_fit_and_config_show_the_fitted_sizes(tmp_path, capsys):
    import yaml

    from ssd_core.synth import ensure_synthetic
    from ssdlab.cli import main
    from tests.support.configs import tiny_config

    root = tmp_path / "shapes"
    ensure_synthetic(root, images=24, seed=0, image_size=96)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(root, tmp_path / "runs").model_dump(mode="json")))
    assert main(["data", "check", "--config", str(path), "--fit"]) == 0
    out = capsys.readouterr().out
    assert "fitted model.prior_sizes: [" in out and out.count("training boxes; IoU >= 0.5 for") == 3
    assert "paper VOC default boxes, 64 px" in out and "matched on map 0" in out
    assert main(["config", "show", str(path), "-o", "model.prior_scales=auto"]) == 0
    shown = capsys.readouterr().out
    assert "prior_sizes:" in shown and "fitted to the training boxes" in shown
    (root / "SHAPES" / "ImageSets" / "Main" / "train.txt").write_text("")
    assert main(["config", "show", str(path), "-o", "model.prior_scales=auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.prior_scales: auto" in err[0] and "no boxes" in err[0]
