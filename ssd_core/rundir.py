"""A training run's directory, named once: what `fit` writes there and everyone else reads.

    last.pt                  the newest state, everything needed to resume exactly (checkpoint.TrainState)
    best.pt                  the selected checkpoint: the best epoch on the selection split (the last without one)
    metrics.jsonl            one JSON line per epoch: the metrics reported through the callbacks
    config.yaml              the resolved config
    test_detections.npz      the reported split's detections at the selected checkpoint (+ ground truth)
    test_detections_at_<f>.npz   the same at budget point f (eval.test_at)
    data.json                what the run trained and was scored on: one record per split (name, digest of
                             the images and annotations, source, counts, the unreadable images data.skip_bad
                             left out; ssd_core/data/record.py)
    NONFINITE_LOSS.txt       (sweep trials) a non-finite loss ended the trial: a retry fails at once
    detections.png           the evidence experiments/evidence.py draws at the end: the selected checkpoint's
    pr_curves.png            detections on a few images, the reported split's precision-recall curves
    deploy.json              the deploy/* metrics ssd_core.deploy.measure_run measured at the end (deploy.bench)

Sweep trials also keep Ray's markers beside these.
"""
from __future__ import annotations

from pathlib import Path

LAST, BEST, METRICS, CONFIG = "last.pt", "best.pt", "metrics.jsonl", "config.yaml"
TEST_DETECTIONS = "test_detections.npz"
DATA_RECORD = "data.json"
NONFINITE_MARKER = "NONFINITE_LOSS.txt"
DETECTIONS_PNG, PR_CURVES_PNG = "detections.png", "pr_curves.png"
DEPLOY_RECORD = "deploy.json"
_TEST_AT_PREFIX, _NPZ = "test_detections_at_", ".npz"


def detections_at(fraction: float) -> str:
    """The file of the test detections at budget point `fraction`: test_detections_at_0.25.npz."""
    return f"{_TEST_AT_PREFIX}{fraction:g}{_NPZ}"


def point_of(name: str) -> float | None:
    """The budget point of a `detections_at` file name (None for any other name)."""
    if not (name.startswith(_TEST_AT_PREFIX) and name.endswith(_NPZ)):
        return None
    try:
        return float(name[len(_TEST_AT_PREFIX):-len(_NPZ)])
    except ValueError:
        return None


def detections_at_points(run_dir: Path) -> list[Path]:
    """The run's budget-point detection files, by fraction."""
    found = [(point_of(p.name), p) for p in Path(run_dir).glob(f"{_TEST_AT_PREFIX}*{_NPZ}")]
    return [p for f, p in sorted((f, p) for f, p in found if f is not None)]
