"""Knowledge distillation (config `distill`, ssd_core.loss.DistillationLoss, ssd_core/distill.py): the loss
against hand-computed numbers, a fit with a teacher, and the checks on the teacher."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ssd_core import metrics as M
from ssd_core.checkpoint import save_checkpoint
from ssd_core.config import apply_overrides, config_hash, load_config, validate_config
from ssd_core.errors import CheckpointError, ConfigError
from ssd_core.loss import DistillationLoss, hard_negative_mask, hard_negative_sum
from ssd_core.model import build_ssd

CLASSES = ["circle", "square", "triangle", "cross"]

# Five disjoint default boxes in a row; the one ground-truth box is the first of them.
PRIORS = torch.tensor([[0.1 + 0.2 * i, 0.1, 0.1, 0.1] for i in range(5)])
GT_BOXES, GT_LABELS = torch.tensor([[[0.05, 0.05, 0.15, 0.15]]]), torch.tensor([[1]])


def test_distillation_loss_hand_computed():
    """One positive (box 0) -> 3 hard negatives mined of the 4 by the student's background cross-entropy:
    boxes 1, 2, 3 (logit of class 1: 2, 1, 3), not box 4 (-1). Teacher logits (ln 3, 0) everywhere: p_t =
    (3/4, 1/4). With student logits (0, x): KL(p_t || p_s) = ln(1 + e^x) + 3/4 ln 3/4 + 1/4 ln 1/4 - x/4:
      x = 0: 0.130812   x = 2: 1.064593   x = 1: 0.500927   x = 3: 1.736252   -> mean 0.858146 (T = 1)
    Box term on the positive only: offsets differ by (0, 0, 0.5, 2) -> Smooth L1 0.125 + 1.5 = 1.625.
    total = 0.5 * 0.858146 + 2 * 1.625 = 3.679073."""
    conf = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [0.0, 1.0], [0.0, 3.0], [0.0, -1.0]]], requires_grad=True)
    loc = torch.tensor([[[0.1, 0.2, 0.3, 0.4]] + [[0.0] * 4] * 4], requires_grad=True)
    t_conf = torch.tensor([[[math.log(3.0), 0.0]] * 5], requires_grad=True)
    t_loc = torch.tensor([[[0.1, 0.2, 0.8, 2.4]] + [[5.0] * 4] * 4])  # negatives' offsets never count

    loss = DistillationLoss(temperature=1.0, weight=0.5, box_weight=2.0)
    pos, selected = loss.selection(conf, PRIORS, GT_BOXES, GT_LABELS)
    assert pos.tolist() == [[True, False, False, False, False]]
    assert selected.tolist() == [[True, True, True, True, False]]
    parts = loss(loc, conf, t_loc, t_conf, PRIORS, GT_BOXES, GT_LABELS)
    assert parts.cls.item() == pytest.approx(0.858146, abs=1e-6)
    assert parts.box.item() == pytest.approx(1.625, abs=1e-6)
    assert parts.total.item() == pytest.approx(3.679073, abs=1e-6)
    parts.total.backward()
    assert t_conf.grad is None                                    # the teacher is a target, never trained
    assert conf.grad[0, 4].abs().sum() == 0 and conf.grad[0, :4].abs().sum() > 0
    assert loc.grad[0, 1:].abs().sum() == 0 and loc.grad[0, 0].tolist() == pytest.approx([0, 0, -1.0, -2.0])


def test_distillation_temperature_scales_by_t_squared():
    """A single positive box, nothing to mine. T = 2: p_t = softmax((ln 3, 0) / 2) = (0.633975, 0.366025),
    p_s = (1/2, 1/2): KL = 0.633975 ln 1.267949 + 0.366025 ln 0.732051 = 0.036341; x T^2 = 0.145364."""
    priors, gt = PRIORS[:1], GT_BOXES
    conf, t_conf = torch.zeros(1, 1, 2), torch.tensor([[[math.log(3.0), 0.0]]])
    parts = DistillationLoss(temperature=2.0)(torch.zeros(1, 1, 4), conf, torch.zeros(1, 1, 4), t_conf, priors,
                                              gt, GT_LABELS)
    assert parts.cls.item() == pytest.approx(0.145364, abs=1e-5)
    assert parts.box.item() == 0 and parts.total.item() == pytest.approx(0.145364, abs=1e-5)  # box_weight 0: off
    same = DistillationLoss()(torch.zeros(1, 1, 4), t_conf, torch.zeros(1, 1, 4), t_conf, priors, gt, GT_LABELS)
    assert same.total.item() == pytest.approx(0.0, abs=1e-7)


def test_no_object_no_selection_is_zero():
    conf = torch.randn(2, 5, 3, requires_grad=True)
    parts = DistillationLoss()(torch.zeros(2, 5, 4), conf, torch.zeros(2, 5, 4), torch.randn(2, 5, 3), PRIORS,
                               torch.zeros(2, 1, 4), torch.zeros(2, 1, dtype=torch.long))
    assert parts.total.item() == 0
    parts.total.backward()
    assert torch.isfinite(conf.grad).all()


def test_hard_negative_mask_is_what_hard_negative_sum_sums():
    torch.manual_seed(0)
    neg = torch.randn(3, 50)
    neg[0, :5] = float("-inf")  # positives
    num = torch.tensor([7, 0, 50])
    mask = hard_negative_mask(neg, num)
    assert mask.sum(dim=1).tolist() == [7, 0, 50]
    assert torch.where(mask, neg, 0.0).sum().item() == pytest.approx(hard_negative_sum(neg, num).item(), rel=1e-6)


# ---------------------------------------------------------------- fit with a teacher


def tiny(root: Path, out: Path, **distill):
    data = {
        "name": "distill_tiny",
        "model": {"backbone": "tiny", "image_size": 64},
        "data": {"root": str(root), "train_sets": ["SHAPES/train"], "val_sets": ["SHAPES/val"],
                 "class_names": CLASSES, "synthetic": {"images": 40, "seed": 0, "image_size": 64}},
        "augment": {"photometric": False, "zoom_out": {"p": 0.0}, "sample_patch": {"enabled": False}},
        "train": {"epochs": 2, "batch_size": 8, "optimizer": "adamw", "lr": 3e-3, "warmup_iters": 2,
                  "device": "cpu", "log_every": 1000},
        "eval": {"every_epochs": 1, "score_threshold": 0.05},
        "output": {"dir": str(out)},
    }
    if distill:
        data["distill"] = distill
    return validate_config(data, source="distill_tiny.yaml")


def teacher_checkpoint(path: Path, classes=CLASSES, **model) -> Path:
    """A teacher checkpoint as fit writes one (weights, config, class names): a wider tiny base by default."""
    cfg = tiny(path.parent / "unused", path.parent, **{})
    cfg = apply_overrides(cfg, {f"model.{k}": v for k, v in {"width_mult": 1.5, **model}.items()})
    torch.manual_seed(1)
    net = build_ssd(cfg.model, len(classes) + 1)
    return save_checkpoint({"model": net.state_dict(), "config": cfg.model_dump(mode="json"),
                            "class_names": list(classes)}, path)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from ssd_core.synth import ensure_synthetic
    root = tmp_path_factory.mktemp("distill") / "shapes"
    ensure_synthetic(root, images=40, seed=0, image_size=64)
    return root


def test_fit_with_teacher_logs_loss_distill_and_writes_an_ordinary_checkpoint(shapes, tmp_path):
    from ssd_core.inference import model_from_checkpoint
    from ssd_core.train import fit

    teacher = teacher_checkpoint(tmp_path / "teacher.pt")
    cfg = tiny(shapes, tmp_path / "runs", teacher=str(teacher), temperature=2.0, weight=1.0, box_weight=0.5)
    result = fit(cfg, run_dir=tmp_path / "student")
    assert len(result.metrics_history) == 2
    for epoch in result.metrics_history:
        assert math.isfinite(epoch[M.TRAIN_LOSS_DISTILL]) and epoch[M.TRAIN_LOSS_DISTILL] > 0
        assert M.map50(M.VAL) in epoch
    teacher.unlink()  # the student's checkpoint needs no teacher
    model, names, loaded = model_from_checkpoint(result.best_checkpoint)
    assert names == CLASSES and loaded.distill.teacher == str(teacher)
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in build_ssd(apply_overrides(loaded, {"model.width_mult": 1.5}).model, 5).parameters())


def test_zero_weight_distillation_trains_exactly_like_no_distillation(shapes, tmp_path):
    """The teacher is loaded without touching the RNG and a zero-weighted term adds exact zeros: the same
    per-epoch metrics as a plain fit (only train/loss_distill is new)."""
    from ssd_core.train import fit

    one = {"train.epochs": 1}  # every metric of every epoch is compared: one epoch each is enough
    plain = fit(apply_overrides(tiny(shapes, tmp_path / "a"), one), run_dir=tmp_path / "plain").metrics_history
    teacher = teacher_checkpoint(tmp_path / "teacher.pt")
    zero = fit(apply_overrides(tiny(shapes, tmp_path / "b", teacher=str(teacher), weight=0.0), one),
               run_dir=tmp_path / "zero").metrics_history
    assert M.TRAIN_LOSS_DISTILL not in plain[0] and M.TRAIN_LOSS_DISTILL in zero[0]
    drop = lambda h: [{k: v for k, v in m.items() if not k.startswith(("perf/", "cost/", M.TRAIN_LOSS_DISTILL))}
                      for m in h]  # noqa: E731
    assert drop(plain) == drop(zero)


# ---------------------------------------------------------------- config and teacher checks


def test_distill_is_off_by_default_and_leaves_dumps_and_hash_as_before(tmp_path):
    """Untouched, the section is not in the dump (config.yaml, MLflow params, checkpoints, config_hash are
    what they were before distillation existed); set, it is, and it changes the hash."""
    import yaml

    from ssd_core.config import flatten, to_yaml

    cfg = tiny(tmp_path, tmp_path)
    assert cfg.distill.teacher is None
    assert "distill" not in cfg.model_dump() and "distill" not in yaml.safe_load(to_yaml(cfg))
    assert not any(k.startswith("distill.") for k in flatten(cfg))
    on = apply_overrides(cfg, {"distill.teacher": "t.pt", "distill.weight": 0.5})
    assert on.model_dump()["distill"] == {"teacher": "t.pt", "temperature": 2.0, "weight": 0.5, "box_weight": 0.0}
    assert flatten(on)["distill.teacher"] == "t.pt"
    assert config_hash(on) != config_hash(cfg)
    assert config_hash(apply_overrides(on, {"distill.temperature": 5.0})) != config_hash(on)
    assert validate_config(yaml.safe_load(to_yaml(on))).distill == on.distill  # round trip
    # a value set while the teacher is not yet: kept across later overrides
    later = apply_overrides(apply_overrides(cfg, {"distill.temperature": 4.0}), {"distill.teacher": "t.pt"})
    assert later.distill.temperature == 4.0


@pytest.mark.parametrize("override, message", [
    ("distill.temperature=0", "distill.temperature"),
    ("distill.weight=-1", "distill.weight"),
    ("distill.box_weight=-0.5", "distill.box_weight"),
    ("distill.temprature=2", "did you mean 'distill.temperature'"),
])
def test_distill_values_are_validated(override, message):
    repo = Path(__file__).resolve().parents[2]
    with pytest.raises(ConfigError, match=message):
        load_config(repo / "experiments" / "configs" / "demo_shapes.yaml", [override])


def _fit_error(shapes, tmp_path, teacher):
    from ssd_core.train import fit
    return fit(tiny(shapes, tmp_path / "runs", teacher=str(teacher)), run_dir=tmp_path / "student")


def test_missing_teacher_is_a_config_error_before_training(shapes, tmp_path):
    with pytest.raises(ConfigError, match=r"distill_tiny.yaml: distill.teacher: .*nope.pt: checkpoint not found"):
        _fit_error(shapes, tmp_path, tmp_path / "nope.pt")
    assert not (tmp_path / "student" / "last.pt").exists()


def test_teacher_with_other_classes_is_refused(shapes, tmp_path):
    teacher = teacher_checkpoint(tmp_path / "t.pt", classes=["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match=r"distill.teacher: .*t.pt was trained on classes \['a', 'b', 'c', 'd'\]"):
        _fit_error(shapes, tmp_path, teacher)


def test_teacher_with_other_default_boxes_is_refused(shapes, tmp_path):
    teacher = teacher_checkpoint(tmp_path / "t.pt", image_size=96)
    with pytest.raises(ConfigError, match=r"distill.teacher: .*default boxes at 96 px, the student .* at 64 px"):
        _fit_error(shapes, tmp_path, teacher)


def test_teacher_that_is_not_a_checkpoint_names_the_file(shapes, tmp_path):
    bad = tmp_path / "teacher.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"teacher.pt: cannot read checkpoint"):
        _fit_error(shapes, tmp_path, bad)
