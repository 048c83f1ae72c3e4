"""ssd_core: a compact, paper-faithful SSD (Liu et al., 2016, arXiv:1512.02325).

Where each part of the paper lives:

    default boxes (sec. 2.2, scales s_k)     ssd_core/priors.py (eq. 4; fitted to a data set: prior_fit/)
    backbones + extra feature layers (2.1)  ssd_core/backbones.py
    SSD = backbone + heads (fig. 2)         ssd_core/model.py
    matching strategy, offsets (2.2, eq. 2) ssd_core/boxes.py
    MultiBox loss, hard negative mining     ssd_core/loss.py   (eq. 1-3)
    NMS at inference (3.1)                  ssd_core/postprocess.py (its settings: config.EvalConfig)
    data augmentation (2.2, 3.6 zoom out)   ssd_core/augment.py (photometric distortion: photometric.py)
    VOC / COCO / synthetic data             ssd_core/data/ (voc.py, coco.py, dataset.py), ssd_core/synth.py
    VOC07 11-point mAP, COCO AP             ssd_core/evaluate/ (ap.py, voc.py, coco.py, accumulator.py)
    the one training loop                   ssd_core/train.py (config schema: config/schema.py)
    one epoch of training (3)               ssd_core/epoch.py (the Trainer fit drives)

This package imports torch and torchvision only: never Ray or MLflow.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_ssd": "ssd_core.model",
    "SSD": "ssd_core.model",
    "default_boxes": "ssd_core.priors",
    "MultiBoxLoss": "ssd_core.loss",
    "postprocess": "ssd_core.postprocess",
    "Detections": "ssd_core.postprocess",
    "load_config": "ssd_core.config",
    "fit": "ssd_core.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: `import ssd_core` stays cheap and one module's import error does not break the others.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssd_core' has no attribute {name!r}")
