"""Knowledge distillation as a training option (config section `distill`, off while distill.teacher is null).

    distiller = build_distiller(cfg, class_names, student, device)   # None when off
    loss = multibox.total + distiller(images_uint8, loc, conf, priors, gt_boxes, gt_labels)

The teacher is a trained ssdlab checkpoint, rebuilt from the config it carries (any backbone: VGG16, a
wider MobileNetV2, ...), in eval mode, without gradients, fed the same uint8 batch through its own input
normalisation (ssd_core.inference.prepare). It must have the student's classes (same names, same order)
and the same default boxes (same count and coordinates: same image size and layout); both are checked
before training, with a ConfigError naming distill.teacher. The loss is ssd_core.loss.DistillationLoss.
The student's checkpoints are ordinary: the teacher is neither saved in them nor needed to load them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ssd_core.config import ExperimentConfig
from ssd_core.errors import ConfigError


def teacher_path(cfg: ExperimentConfig) -> Path:
    """distill.teacher: absolute, else from the cwd, else from the repository root (as data.root)."""
    path = Path(cfg.distill.teacher).expanduser()
    if not path.is_absolute() and not path.exists():
        repo = Path(__file__).resolve().parent.parent
        if (repo / path).exists():
            path = repo / path
    return path


def load_teacher(cfg: ExperimentConfig, class_names: Sequence[str], student: nn.Module,
                 device: torch.device) -> nn.Module:
    """The teacher of `cfg` (eval mode, no gradients, on `device`), checked against the student: ConfigError
    (or CheckpointError for an unreadable file) naming distill.teacher. The global RNG is left untouched,
    so switching distillation on does not change the student's initialisation or data order."""
    from ssd_core.inference import model_from_checkpoint

    where = f"{cfg.source}: distill.teacher"
    path = teacher_path(cfg)
    if not path.is_file():
        raise ConfigError(f"{where}: {path}: checkpoint not found (expected a trained ssdlab checkpoint, e.g. "
                          f"runs/<run>/best.pt)")
    with torch.random.fork_rng(devices=[]):
        teacher, names, tcfg = model_from_checkpoint(path, device)
    if list(names) != list(class_names):
        raise ConfigError(f"{where}: {path} was trained on classes {list(names)}, the student on "
                          f"{list(class_names)}: distillation needs the same classes in the same order")
    tp, sp = teacher.priors, student.priors.to(teacher.priors.device)
    if tp.shape != sp.shape or not torch.allclose(tp, sp, atol=1e-6):
        raise ConfigError(f"{where}: {path} has {tp.shape[0]} default boxes at {tcfg.model.image_size} px, the "
                          f"student {sp.shape[0]} at {cfg.model.image_size} px"
                          + ("" if tp.shape != sp.shape else " with other coordinates")
                          + ": distillation needs the same default boxes (model.image_size, output_stride and "
                            "prior_* keys)")
    teacher.eval().requires_grad_(False)
    return teacher


class Distiller:
    """Teacher + DistillationLoss: called with the batch's uint8 images and the student's outputs, returns the
    weighted distillation loss (a scalar with the student's gradients)."""

    def __init__(self, cfg: ExperimentConfig, teacher: nn.Module, device: torch.device):
        from ssd_core.loss import DistillationLoss

        d = cfg.distill
        self.cfg, self.teacher, self.device = cfg, teacher, device
        self.loss = DistillationLoss(d.temperature, d.weight, d.box_weight)

    def __call__(self, images: Tensor, loc: Tensor, conf: Tensor, priors: Tensor, gt_boxes: Tensor,
                 gt_labels: Tensor) -> Tensor:
        from ssd_core.inference import autocast, prepare

        with torch.no_grad(), autocast(self.cfg, self.device, training=True):
            t_loc, t_conf = self.teacher(prepare(self.teacher, images, self.cfg, self.device))
        return self.loss(loc, conf, t_loc, t_conf, priors, gt_boxes, gt_labels).total


def build_distiller(cfg: ExperimentConfig, class_names: Sequence[str], student: nn.Module,
                    device: torch.device) -> Optional[Distiller]:
    """None while distill.teacher is null; else the checked teacher wrapped with its loss."""
    if cfg.distill.teacher is None:
        return None
    return Distiller(cfg, load_teacher(cfg, class_names, student, device), device)
