"""A sqlite MLflow store filled with known runs (an ablation sweep `abl` and a search sweep `hpo`), for the
report tests: every number in their tables is computed by hand from the values here. Each run logs its
score beside val/mAP50, as fit does (with_score)."""
from __future__ import annotations

import json

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from experiments.schema import M, Tag

T0 = 1_700_000_000_000  # ms; fixed so the store (and the report) is the same every time
ARMS = ["base", "aug", "lite", "wd"]
NOTES = {"base": "initial implementation", "aug": "stronger augmentation (sample patch, zoom out)",
         "lite": "lite heads", "wd": "weight decay 1e-3"}
# (arm, seed, status, val/mAP50 per epoch)
ABL = [
    ("base", 0, "finished", [0.30, 0.48, 0.47]),
    ("base", 1, "finished", [0.31, 0.50, 0.49]),
    ("base", 2, "finished", [0.20, 0.45, 0.49]),
    ("aug", 0, "finished", [0.40, 0.58, 0.57]),
    ("aug", 1, "finished", [0.35, 0.59, 0.61]),
    ("aug", 2, "finished", [0.57, 0.52, 0.55]),
    ("aug", 3, "failed", [0.05]),
    ("lite", 0, "finished", [0.20, 0.40, 0.39]),
    ("lite", 1, "early_stopped", [0.20]),
    ("lite", 2, "running", [0.10, 0.15]),
    ("wd", 10, "finished", [0.30, 0.52, 0.50]),
    ("wd", 11, "finished", [0.30, 0.50, 0.54]),
]
CLASS_OFFSETS = {"RBC": 0.10, "WBC": 0.05, "Platelets": -0.15}
TEST_GAP = 0.04  # test/mAP50 = the best val/mAP50 - 0.04 (the abl sweep reports the test split; hpo has none)
HPO_SPACE = {"train.lr": {"loguniform": [1e-4, 1e-1]},  # as a sweep file writes it
             "train.weight_decay": {"uniform": [0.0, 1e-3]},
             "model.backbone": {"choice": ["vgg16", "mobilenet_v2"]}}
# (trial, status, lr, wd, backbone, val/mAP50 per epoch)
HPO = [
    ("t00", "finished", 1e-3, 5e-4, "vgg16", [0.40, 0.55]),
    ("t01", "finished", 1e-2, 1e-4, "vgg16", [0.30, 0.45]),
    ("t02", "finished", 3e-4, 9e-4, "mobilenet_v2", [0.20, 0.35]),
    ("t03", "early_stopped", 5e-2, 2e-4, "vgg16", [0.05]),
    ("t04", "finished", 2e-3, 3e-4, "vgg16", [0.50, 0.62]),
    ("t05", "failed", 9e-2, 1e-4, "mobilenet_v2", []),
    ("t06", "finished", 1e-4, 7e-4, "mobilenet_v2", [0.10, 0.22]),
    ("t07", "finished", 5e-3, 6e-4, "vgg16", [0.45, 0.58]),
    ("t08", "early_stopped", 4e-4, 8e-4, "mobilenet_v2", [0.12]),
    ("t09", "finished", 7e-4, 4e-4, "vgg16", [0.42, 0.51]),
]
# the confirm phase retrains the best search trial's configuration (t04) with seeds 1 and 2
CONFIRM = [(1, [0.50, 0.58]), (2, [0.52, 0.60])]
_MLFLOW_END = {"finished": "FINISHED", "early_stopped": "FINISHED", "failed": "FAILED"}


def with_score(metrics, metric: str = "val/mAP50") -> list:
    """`metrics` and, as fit logs it beside each evaluation, the run's score: the best `metric` so far."""
    out, best = list(metrics), None
    for m in sorted((m for m in metrics if m.key == metric), key=lambda m: m.step):
        best = m.value if best is None or m.value > best else best
        out.append(Metric(M.SCORE, best, m.timestamp, m.step))
    return out


def new_run(client, exp_id, start, tags, params=None, metrics=(), status=None, end=None):
    run_id = client.create_run(exp_id, start_time=start, tags=tags).info.run_id
    params = [Param(k, str(v)) for k, v in (params or {}).items()]
    client.log_batch(run_id, metrics=with_score(metrics), params=params)
    if status in _MLFLOW_END:
        client.set_terminated(run_id, _MLFLOW_END[status], end_time=end)
    return run_id


def fill(uri: str) -> None:
    try:
        from experiments.tracking.store import ensure_store
        from tests.support.stores import empty_store
        ensure_store(empty_store(uri))
    except ImportError:
        pass
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("ssdlab")
    parent = new_run(client, exp, T0, {Tag.KIND: "sweep", Tag.SWEEP: "abl",
                                        Tag.ARMS: json.dumps(ARMS), Tag.BASELINE_ARM: "base",
                                        Tag.SEARCH_SPACE: "{}", Tag.METRIC: "val/mAP50"})
    for i, (arm, seed, status, curve) in enumerate(ABL):
        start = T0 + 1000 * (i + 1)
        ms = []
        for step, v in enumerate(curve):
            ts = start + 60_000 * (step + 1)
            ms += [Metric("val/mAP50", v, ts, step), Metric("train/loss", 3.0 - v - 0.1 * step, ts, step),
                   Metric("perf/train_img_s", 100.0 + 10 * i + step, ts, step),
                   Metric("cost/device_hours", 0.01 * (step + 1), ts, step)]
            if arm in ("base", "aug"):
                ms += [Metric(f"val/AP50/{c}", v + o + 0.001 * step, ts, step) for c, o in CLASS_OFFSETS.items()]
        if status == "finished":  # the test split, scored once at the end at the best val epoch
            ts, step = start + 60_000 * len(curve), len(curve) - 1
            ms += [Metric("test/mAP50", max(curve) - TEST_GAP, ts, step),
                   Metric("test_last/mAP50", curve[-1] - TEST_GAP - 0.01, ts, step)]
            if arm in ("base", "aug"):
                ms += [Metric(f"test/AP50/{c}", max(curve) - TEST_GAP + o, ts, step) for c, o in CLASS_OFFSETS.items()]
        tags = {Tag.PARENT: parent, Tag.KIND: "trial", Tag.SWEEP: "abl",
                Tag.ARM: arm, Tag.SEED: str(seed), Tag.NOTE: NOTES[arm],
                Tag.TRIAL_ID: f"abl_{i:03d}", Tag.STATUS: status, Tag.SEARCHED: "[]"}
        if status == "failed":
            tags[Tag.ERROR] = "Traceback ...\nNonFiniteLossError: loss is nan at epoch 1"
        new_run(client, exp, start, tags, {"train.epochs": 3, "train.lr": 0.001, "train.seed": seed},
                 ms, status, end=start + 60_000 * len(curve) + 5_000)
    hp = new_run(client, exp, T0 + 100_000, {  # a search sweep without arms, as sweep.py logs it
        Tag.KIND: "sweep", Tag.SWEEP: "hpo", Tag.ARMS: "[]", Tag.BASELINE_ARM: "",
        Tag.SEARCH_SPACE: json.dumps(HPO_SPACE), Tag.NOTE: "TPE over lr, wd and backbone",
        Tag.METRIC: "val/mAP50"})
    for i, (tid, status, lr, wd, bb, curve) in enumerate(HPO):
        start = T0 + 200_000 + 1000 * i
        ms = [Metric("val/mAP50", v, start + 60_000 * (s + 1), s) for s, v in enumerate(curve)]
        tags = {Tag.PARENT: hp, Tag.KIND: "trial", Tag.SWEEP: "hpo",
                Tag.SEED: "0", Tag.TRIAL_ID: tid, Tag.PHASE: "search",
                Tag.STATUS: status, Tag.SEARCHED: json.dumps(sorted(HPO_SPACE))}
        new_run(client, exp, start, tags, {"train.lr": lr, "train.weight_decay": wd,
                                            "model.backbone": bb, "train.epochs": 2}, ms, status,
                 end=start + 200_000)
    for seed, curve in CONFIRM:
        start = T0 + 400_000 + 1000 * seed
        ms = [Metric("val/mAP50", v, start + 60_000 * (s + 1), s) for s, v in enumerate(curve)]
        tags = {Tag.PARENT: hp, Tag.KIND: "trial", Tag.SWEEP: "hpo",
                Tag.SEED: str(seed), Tag.TRIAL_ID: f"c{seed}", Tag.PHASE: "confirm", Tag.SOURCE_TRIAL: "t04",
                Tag.STATUS: "finished"}
        new_run(client, exp, start, tags, {"train.lr": 2e-3, "train.weight_decay": 3e-4,
                                            "model.backbone": "vgg16", "train.epochs": 2}, ms,
                 "finished", end=start + 200_000)
