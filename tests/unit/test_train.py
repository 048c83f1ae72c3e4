"""ssd_core.train: the loop on a tiny synthetic set (64 px, MobileNetV2 x0.35, 3 iterations an epoch)."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ssd_core.build import param_groups
from ssd_core.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from ssd_core.config import ExperimentConfig, validate_config
from ssd_core.errors import CheckpointError, ConfigError, NonFiniteLossError
from ssd_core.inference import evaluate_checkpoint
from ssd_core.schedule import lr_factor
from ssd_core.train import Callback, fit
from tests.support.configs import CLASSES, tiny_config


class Recorder(Callback):
    def __init__(self, stop_after: int | None = None):
        self.events, self.stop_after = [], stop_after

    def on_fit_start(self, cfg, run_dir):
        self.events.append(("start", Path(run_dir)))

    def on_epoch_end(self, epoch, metrics, run_dir):
        last = Path(run_dir) / "last.pt"
        self.events.append(("epoch", epoch, dict(metrics), hashlib.sha256(last.read_bytes()).hexdigest()))
        if epoch == self.stop_after:
            raise KeyboardInterrupt(f"stop after epoch {epoch}")

    def on_fit_end(self, result):
        self.events.append(("end", result))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from ssd_core.synth import ensure_synthetic
    root = tmp_path_factory.mktemp("data") / "shapes"
    ensure_synthetic(root, images=40, seed=0, image_size=96)
    return root


@pytest.fixture(scope="module")
def full_run(shapes, tmp_path_factory):
    torch.set_num_threads(1)
    cfg = tiny_config(shapes, tmp_path_factory.mktemp("runs"))
    rec = Recorder()
    result = fit(cfg, callbacks=[rec])
    return cfg, result, rec


def test_fit_reports_checkpoints_and_loss_falls(full_run):
    cfg, result, rec = full_run
    assert [e[0] for e in rec.events] == ["start", "epoch", "epoch", "epoch", "end"]
    assert [e[1] for e in rec.events[1:4]] == [1, 2, 3] and rec.events[-1][1] is result
    assert result.epochs == 3 and result.iterations == 9  # 24 training images / batch 8
    history = result.metrics_history
    assert history[-1]["train/loss"] < 0.9 * history[0]["train/loss"]
    for m in history:
        assert math.isclose(m["train/loss"], m["train/loss_loc"] + m["train/loss_conf"], rel_tol=1e-6)
        assert {"train/lr", "perf/train_img_s", "cost/device_hours", "val/mAP50", "val/mAP50_area"} <= set(m)
        assert {f"val/AP50/{c}" for c in CLASSES} <= set(m)
    assert result.best_metric == max(m["val/mAP50"] for m in history)
    state = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["iteration"] == 9 and state["class_names"] == CLASSES
    assert {"optimizer", "scheduler", "scaler", "rng", "config", "config_hash"} <= set(state)
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python", "loader"}
    best = torch.load(result.run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == result.best_epoch
    assert (result.run_dir / "config.yaml").is_file() and len((result.run_dir / "metrics.jsonl").read_text().splitlines()) == 3


def test_test_split_is_scored_once_at_the_selected_checkpoint(shapes, tmp_path, monkeypatch):
    """val scores that fall after epoch 1 (a fake val) make epoch 1 the selected checkpoint: test/...
    is then best.pt's score on SHAPES/test (as `ssdlab eval` computes it), test_last/... the final
    weights', only the last epoch carries them, and the saved detections re-score to the same mAP."""
    import ssd_core.train as T
    from ssd_core.evaluate import DetectionAccumulator

    fake_val = iter([0.9, 0.5, 0.1])
    real = T.evaluate_model

    def evaluate(model, dataset, cfg, device, prefix="val", **kw):
        out = real(model, dataset, cfg, device, prefix=prefix, **kw)
        if prefix == "val":
            out["val/mAP50"] = next(fake_val)
        return out

    monkeypatch.setattr(T, "evaluate_model", evaluate)
    cfg = tiny_config(shapes, tmp_path)
    result = fit(cfg, run_dir=tmp_path / "run")
    monkeypatch.setattr(T, "evaluate_model", real)
    h = result.metrics_history
    assert result.best_epoch == 1 and result.best_metric == 0.9
    assert [("test/mAP50" in m, "test_last/mAP50" in m) for m in h] == [(False, False)] * 2 + [(True, True)]
    assert [m["final"] for m in h] == [0.0, 0.0, 1.0] and h[-1]["test/selected_epoch"] == 1
    selected = evaluate_checkpoint(cfg, tmp_path / "run" / "best.pt", split="test")
    final = evaluate_checkpoint(cfg, tmp_path / "run" / "last.pt", split="test")
    assert h[-1]["test/mAP50"] == pytest.approx(selected["test/mAP50"], abs=1e-12)
    assert h[-1]["test/AP50/circle"] == pytest.approx(selected["test/AP50/circle"], abs=1e-12)
    assert h[-1]["test_last/mAP50"] == pytest.approx(final["test/mAP50"], abs=1e-12)
    assert result.test_metrics["test/mAP50"] == h[-1]["test/mAP50"]
    saved = DetectionAccumulator.load(tmp_path / "run" / "test_detections.npz")
    assert saved.evaluate()["mAP50"] == pytest.approx(selected["test/mAP50"], abs=1e-12)
    assert saved.image_keys[0].startswith("SHAPES/") and len(saved.image_keys) == 8


def test_without_a_val_split_the_last_epoch_is_selected(shapes, tmp_path):
    cfg = tiny_config(shapes, tmp_path, epochs=2).model_dump()
    cfg["data"]["val_sets"] = []
    result = fit(validate_config(cfg, "tiny.yaml"), run_dir=tmp_path / "run")
    h = result.metrics_history
    assert not any(k.startswith("val/") for m in h for k in m)
    assert result.best_epoch == 2 and result.best_metric is None
    assert h[-1]["test/selected_epoch"] == 2 and h[-1]["test/mAP50"] == h[-1]["test_last/mAP50"]
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 2


def test_holdout_splits_the_training_images_for_selection(shapes, tmp_path):
    from ssd_core.build import build_dataset
    cfg = tiny_config(shapes, tmp_path).model_dump()
    cfg["data"].update(val_sets=[], holdout=0.25)
    cfg = validate_config(cfg, "tiny.yaml")
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "val", train=False)
    assert len(train) == 18 and len(val) == 6 and not set(train.ids) & set(val.ids)
    assert set(train.ids) | set(val.ids) == set(build_dataset(cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"holdout": None})}), "train", train=True).ids)


def test_resume_reaches_the_same_weights(full_run, tmp_path):
    cfg, result, _ = full_run
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, callbacks=[Recorder(stop_after=2)], run_dir=tmp_path)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2
    resumed = fit(cfg, run_dir=tmp_path, resume=True)
    assert resumed.epochs == 3 and resumed.iterations == 9 and len(resumed.metrics_history) == 3
    want = torch.load(result.run_dir / "last.pt", weights_only=True)["model"]
    got = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)
    assert [m["train/loss"] for m in resumed.metrics_history] == pytest.approx(
        [m["train/loss"] for m in result.metrics_history], abs=1e-6)


def test_budget_points_score_the_test_split_at_the_best_checkpoint_so_far(full_run, shapes, tmp_path):
    """eval.test_at: at each point the test split is scored at the checkpoint best on the selection split so
    far (never chosen on test), logged at that epoch with its fraction, its detections kept; the final point
    is the reported test value itself; the training, the selection and the test value do not change."""
    from ssd_core import rundir as RD
    from ssd_core.config import apply_overrides, config_hash
    from ssd_core.evaluate import DetectionAccumulator

    cfg, plain, _ = full_run
    pts = apply_overrides(cfg, {"train.epochs": 3, "eval.test_at": [0.1, 0.3, 0.5, 1.0]})
    assert config_hash(pts) == config_hash(cfg)
    result = fit(pts, run_dir=tmp_path)
    h = result.metrics_history
    # 0.1 and 0.3 are both passed by epoch 1 (1/3 of the iterations) and collapse into 0.3
    points = {m["epoch"]: m["test_at/fraction"] for m in h if "test_at/fraction" in m}
    assert points == {1: 0.3, 2: 0.5, 3: 1.0}
    for m in h:
        best = max(range(m["epoch"]), key=lambda e: (h[e]["val/mAP50"], -e)) + 1  # first best val epoch so far
        if "test_at/fraction" in m:
            assert m["test_at/selected_epoch"] == best
            saved = DetectionAccumulator.load(tmp_path / RD.detections_at(m["test_at/fraction"])).evaluate()
            assert m["test_at/mAP50"] == pytest.approx(saved["mAP50"], abs=1e-12)
    assert h[-1]["test_at/mAP50"] == h[-1]["test/mAP50"] == plain.metrics_history[-1]["test/mAP50"]
    assert [m["val/mAP50"] for m in h] == [m["val/mAP50"] for m in plain.metrics_history]
    assert [p.name for p in RD.detections_at_points(tmp_path)] == [
        "test_detections_at_0.3.npz", "test_detections_at_0.5.npz", "test_detections_at_1.npz"]


def test_budget_points_land_on_evaluated_epochs_and_survive_a_resume(shapes, tmp_path):
    """With eval.every_epochs 2 a point waits for the next evaluated epoch (no extra selection-split
    evaluation); a run stopped and resumed takes each point once; metrics.jsonl follows last.pt."""
    cfg = tiny_config(shapes, tmp_path, epochs=4)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"every_epochs": 2, "test_at": [0.25, 0.5, 1.0]})})
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, callbacks=[Recorder(stop_after=2)], run_dir=tmp_path / "a")
    (tmp_path / "a" / "metrics.jsonl").write_text("")  # as if killed before the line was appended
    h = fit(cfg, run_dir=tmp_path / "a", resume=True).metrics_history
    assert {m["epoch"]: m.get("test_at/fraction") for m in h} == {1: None, 2: 0.5, 3: None, 4: 1.0}
    assert [m["epoch"] for m in h if "val/mAP50" in m] == [2, 4]
    import json
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4] and lines == h


def test_resume_refuses_another_config(full_run, tmp_path):
    cfg, result, _ = full_run
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 1e-3})})
    with pytest.raises(CheckpointError, match="last.pt: written by config"):
        fit(other, run_dir=result.run_dir, resume=True)


def test_evaluate_checkpoint_reproduces_the_logged_map(full_run):
    cfg, result, _ = full_run
    metrics = evaluate_checkpoint(cfg, result.best_checkpoint, split="val")
    logged = result.metrics_history[result.best_epoch - 1]
    assert metrics["val/mAP50"] == pytest.approx(logged["val/mAP50"], abs=1e-9)
    assert metrics.keys() == {k for k in logged if k.startswith("val/")}
    test = evaluate_checkpoint(cfg, result.best_checkpoint, split="test")  # data.test_sets
    assert set(test) >= {"test/mAP50", "test/AP50/circle"} and 0 <= test["test/mAP50"] <= 1
    assert test["test/mAP50"] == pytest.approx(result.metrics_history[-1]["test/mAP50"], abs=1e-9)
    by_name = evaluate_checkpoint(cfg, result.best_checkpoint, split="SHAPES/test")  # an image set by name
    assert by_name["SHAPES/test/mAP50"] == pytest.approx(test["test/mAP50"], abs=1e-12)


def test_non_finite_loss_names_iteration_and_keeps_last_checkpoint(shapes, tmp_path, monkeypatch):
    from ssd_core import loss as loss_module
    original, calls = loss_module.MultiBoxLoss.forward, []

    def poisoned(self, *args):
        parts = original(self, *args)
        calls.append(1)
        return type(parts)(parts.total * float("nan"), parts.loc, parts.conf) if len(calls) == 5 else parts

    monkeypatch.setattr(loss_module.MultiBoxLoss, "forward", poisoned)
    rec = Recorder()
    with pytest.raises(NonFiniteLossError) as info:
        fit(tiny_config(shapes, tmp_path, epochs=3), callbacks=[rec], run_dir=tmp_path / "run")
    message = str(info.value)
    assert "iteration 5 (epoch 2, lr " in message and "total=nan" in message and "last.pt" in message
    epoch1_hash = rec.events[1][3]
    assert hashlib.sha256((tmp_path / "run" / "last.pt").read_bytes()).hexdigest() == epoch1_hash
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_class_list_that_does_not_match_the_data(shapes, tmp_path):
    cfg = tiny_config(shapes, tmp_path).model_dump()
    cfg["data"]["class_names"] = ["circle", "square"]
    with pytest.raises(ConfigError, match=r"tiny\.yaml: data\.class_names .*Annotations/.*\.xml"):
        fit(validate_config(cfg, "tiny.yaml"), run_dir=tmp_path / "run")


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="corrupt.pt: cannot read checkpoint"):
        load_checkpoint(corrupt)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {}, "config": {}, "class_names": [], "obj": ExperimentConfig()}, pickled)
    with pytest.raises(CheckpointError, match=r"pickled.pt: not a checkpoint this tool will load: it holds a pickled "
                                              r"Python object \(ssd_core.config.experiment.ExperimentConfig\)") as refused:
        load_checkpoint(pickled)
    assert "\n" not in str(refused.value) and "weights_only=False" not in str(refused.value)
    partial = save_checkpoint({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial.pt: not a ssdlab checkpoint: missing keys \['config', 'class_names'\]"):
        load_checkpoint(partial)
    with pytest.raises(CheckpointError, match="other.pt: checkpoint does not match the model"):
        load_model_state(nn.Linear(2, 3), {"model": nn.Linear(2, 4).state_dict()}, tmp_path / "other.pt")
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes leave no temporary files


def test_lr_factor_warmup_and_schedules():
    base = {"train": {"warmup_iters": 4, "schedule": {"type": "multistep", "milestones": [10, 20], "gamma": 0.1}}}
    f = lr_factor(ExperimentConfig.model_validate(base), iters_per_epoch=5, total_iters=30)
    assert [f(i) for i in (0, 1, 3, 9, 10, 19, 20, 29)] == pytest.approx([0.25, 0.5, 1, 1, 0.1, 0.1, 0.01, 0.01])
    base["train"]["schedule"].update(unit="epoch", milestones=[2])
    f = lr_factor(ExperimentConfig.model_validate(base), iters_per_epoch=5, total_iters=30)
    assert [f(i) for i in (9, 10, 29)] == pytest.approx([1, 0.1, 0.1])
    f = lr_factor(ExperimentConfig.model_validate({"train": {"schedule": {"type": "cosine"}}}), 5, 100)
    assert [f(0), f(50), f(100)] == pytest.approx([1, 0.5, 0], abs=1e-12)
    f = lr_factor(ExperimentConfig.model_validate({"train": {"schedule": {"type": "constant"}}}), 5, 100)
    assert f(0) == f(99) == 1


def test_lr_factor_on_the_time_budget():
    """schedule.unit time: the schedule's position is the clock over train.time_budget_s, whatever the
    iteration; warmup still counts iterations; milestones are fractions of the budget."""
    now = [0.0]
    cfg = ExperimentConfig.model_validate({"train": {"warmup_iters": 2, "time_budget_s": 100,
                                                     "schedule": {"type": "cosine", "unit": "time"}}})
    f = lr_factor(cfg, iters_per_epoch=5, total_iters=10, clock=lambda: now[0])
    assert f(0) == pytest.approx(0.5)
    for t, expected in [(0, 1), (50, 0.5), (100, 0), (250, 0)]:
        now[0] = t
        assert f(7) == f(10_000) == pytest.approx(expected, abs=1e-12)
    cfg = ExperimentConfig.model_validate({"train": {"time_budget_s": 100, "schedule": {
        "type": "multistep", "unit": "time", "milestones": [0.6, 0.9], "gamma": 0.1}}})
    f = lr_factor(cfg, 5, 10, clock=lambda: now[0])
    assert [(now.__setitem__(0, t), f(3))[1] for t in (59, 60, 89, 95)] == pytest.approx([1, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="needs a clock"):
        lr_factor(cfg, 5, 10)


def test_fit_on_a_time_schedule_anneals_when_the_budget_ends(shapes, tmp_path):
    """A fake clock that advances 5 s at every reading (fit reads it at the scheduler step and at the
    budget check of each iteration, once at the start, LambdaLR's first step, and at each checkpoint):
    with a 45 s budget the cosine reaches exactly 0 at iteration 4, which then stops the run."""
    readings = iter(range(10_000))
    cfg = tiny_config(shapes, tmp_path, epochs=50, warmup_iters=0, time_budget_s=45,
                      schedule={"type": "cosine", "unit": "time"})
    result = fit(cfg, run_dir=tmp_path / "run", clock=lambda: 5.0 * next(readings))
    assert result.stopped_by_budget and result.iterations == 4 and result.epochs == 2
    lrs = [m["train/lr"] for m in result.metrics_history]
    assert lrs == pytest.approx([3e-3 * 0.5 * (1 + math.cos(math.pi * 30 / 45)), 0.0], abs=1e-12)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["elapsed_seconds"] == 55.0


def test_progress_eta_is_capped_by_the_time_budget():
    import io

    from ssd_core.schedule import Progress
    stream = io.StringIO()
    progress = Progress(total=10**9, initial=0, log_every=1, stream=stream, remaining=lambda: 42.0)
    progress.update(1, 1.0, 1e-3, 3.0)
    assert progress.eta(1) == 42.0 and stream.getvalue().endswith("eta 42s\n")
    assert Progress(total=10, initial=0, log_every=1, stream=io.StringIO()).eta(0) == float("inf")


def test_prior_ratios_from_the_config_reach_the_default_boxes(shapes, tmp_path):
    from ssd_core.build import build_model
    from ssd_core.config import apply_overrides
    cfg = tiny_config(shapes, tmp_path)
    default = build_model(cfg, 5).prior_spec
    spec = build_model(apply_overrides(cfg, {"model.prior_first_ratio": 5, "model.prior_max_ratio": 80}), 5).prior_spec
    assert default.min_sizes[0] == pytest.approx(0.10 * 64) and spec.min_sizes[0] == pytest.approx(0.05 * 64)
    assert spec.max_sizes[0] == default.max_sizes[0] == pytest.approx(0.20 * 64)  # the VOC min_ratio 20 kept
    assert spec.max_sizes[-1] < default.max_sizes[-1] and spec.feature_maps == default.feature_maps


def test_no_decay_for_norms_and_biases():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    decay, rest = param_groups(net, 5e-4, no_decay_norm_bias=True)
    assert [p.shape for p in decay["params"]] == [(4, 3, 3, 3)] and decay["weight_decay"] == 5e-4
    assert len(rest["params"]) == 3 and rest["weight_decay"] == 0
    (everything,) = param_groups(net, 5e-4, no_decay_norm_bias=False)
    assert len(everything["params"]) == 4
