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
