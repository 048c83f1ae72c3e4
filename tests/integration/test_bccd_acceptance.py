"""The BCCD acceptance benchmark's config for ours: it must load under the selection rule (a model is
never selected on the split it is reported on) and report BCCD/test at the final weights."""
from benchmarks.bccd_acceptance import DEFAULT_CONFIG, main, ours_config


def test_ours_config_reports_test_and_selects_nothing(tmp_path):
    cfg = ours_config(str(DEFAULT_CONFIG), str(tmp_path), 60.0, str(tmp_path / "out"), seed=3)
    assert cfg.data.val_sets == [] and cfg.data.holdout is None  # no selection: the last epoch is the model
    assert cfg.data.test_sets == ["BCCD/test"] and cfg.data.train_sets == ["BCCD/train"]
    assert cfg.train.time_budget_s == 60.0 and cfg.train.schedule.unit == "time" and cfg.train.seed == 3


def test_bad_config_fails_before_anything_trains(tmp_path, capsys):
    (tmp_path / "BCCD" / "Annotations").mkdir(parents=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batch_size: -1}\n")
    assert main(["--data-root", str(tmp_path), "--config", str(bad), "--quick", "--out", str(tmp_path / "o")]) == 2
    assert "bad.yaml" in capsys.readouterr().err


def test_ours_trains_and_reports_with_fitted_default_boxes(tmp_path):
    """run_ours end to end on a tiny VOC-layout set named like BCCD, with model.prior_scales: auto (the
    shipped config's): a 20-minute acceptance run once died after training, counting the parameters of a
    model built from the unfitted config."""
    import shutil

    import yaml

    from benchmarks.bccd_acceptance import run_ours
    from ssd_core.synth import SYNTH_CLASSES, generate

    generate(tmp_path / "data", images=16, seed=0, image_size=64)
    shutil.move(str(tmp_path / "data" / "SHAPES"), str(tmp_path / "data" / "BCCD"))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny_acceptance", "model": {"backbone": "tiny", "image_size": 48, "prior_scales": "auto"},
        "data": {"train_sets": ["BCCD/train"], "class_names": list(SYNTH_CLASSES)},
        "augment": {"photometric": False, "zoom_out": {"p": 0.0}, "sample_patch": {"enabled": False}},
        "train": {"batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "warmup_iters": 1, "log_every": 1000}}))
    out = run_ours(str(config), str(tmp_path / "data"), 2.0, 1, str(tmp_path / "out"), seed=0)
    assert out["params"] > 1000 and out["iterations"] >= 1 and 0.0 <= out["mAP50"] <= 1.0
    assert "fp32" in out["precision"] or "bf16" in out["precision"]
