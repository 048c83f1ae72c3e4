"""A dataset a user brings, end to end without Ray: `ssdlab init` (its choices, its files, no overwrite), the
input it picks from the objects' sizes, the image check before a sweep or `ssdlab train` starts, and a run with
data.skip_bad recording what it left out, in its run dir and in MLflow (with its dataset inputs)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import yaml

import ssdlab.cli
from experiments.schema import Artifact, Tag
from experiments.starter import plan_starter
from ssd_core import rundir as RD
from ssd_core.config import load_config, validate_config
from ssd_core.prior_fit.choose import TARGET, choose_input
from tests.unit.test_data_formats import NAMES, write_yolo

RECIPE = {"model": {"backbone": "mobilenet_v2", "lite_heads": True}, "data": {"root": "/nowhere"}}


def _boxes(n, side, seed=0):
    """n square-ish boxes of `side` (fraction of the image) at random places, normalised xyxy."""
    rng = np.random.default_rng(seed)
    s = side * rng.uniform(0.8, 1.25, (n, 2))
    c = rng.uniform(s / 2, 1 - s / 2)
    return np.concatenate([c - s / 2, c + s / 2], 1), rng.integers(1, 3, n)


def test_large_objects_get_stride_16_and_tiny_ones_stride_8_or_a_larger_input():
    cfg = validate_config(RECIPE)
    big = choose_input(cfg, *_boxes(300, 0.45), NAMES, max_side=640)
    assert (big.chosen.image_size, big.chosen.stride) == (320, 16) and big.reached_target
    assert big.chosen.coverage >= TARGET and big.chosen.gflops == min(c.gflops for c in big.candidates)
    tiny = choose_input(cfg, *_boxes(300, 0.03), NAMES, max_side=640)
    assert tiny.chosen.stride == 8 or tiny.chosen.image_size > 320
    cheaper = [c for c in tiny.candidates if c.gflops < tiny.chosen.gflops]
    assert cheaper and all(c.coverage < min(TARGET, max(x.coverage for x in tiny.candidates) - 0.02) for c in cheaper)
    assert {c.image_size for c in choose_input(cfg, *_boxes(50, 0.45), NAMES, max_side=400).candidates} == {320, 384}


def _yolo_set(root, n=24, bad=()):
    objects = {f"i{k:02d}": [(k % 2, (8 + k % 5, 6, 40 + k % 7, 30)), (1, (30, 20, 60, 44))] for k in range(n)}
    data = write_yolo(root, objects=objects)
    for k in bad:
        (root / "train/images" / f"i{k:02d}.jpg").write_bytes(b"not a jpeg")
    return data


def test_init_writes_a_config_and_a_sweep_that_run_as_is_and_says_why(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ssdlab.cli, "COMMAND_MODULES", ("ssdlab.commands.init",))
    data = _yolo_set(tmp_path / "pets")
    assert ssdlab.cli.main(["init", str(data), "--root", str(tmp_path), "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "NO TEST SPLIT" in out and "no validation split" in out and "input: " in out and "budget: " in out
    cfg = load_config(tmp_path / "experiments/configs/pets.yaml")
    assert (cfg.data.format, cfg.data.train_sets, cfg.data.holdout, cfg.data.test_holdout) == ("yolo", ["train"], 0.15, 0.15)
    assert cfg.data.class_names == NAMES and cfg.model.prior_scales == "auto" and cfg.train.amp == "auto"
    assert cfg.model.output_stride == 16  # 64 px images, objects a third of the image and more
    sweep = yaml.safe_load((tmp_path / "sweeps/pets_ablation.yaml").read_text())
    assert list(sweep["arms"]) == ["initial", "+photometric", "+sample_patch", "+zoom_out"]
    assert sweep["name"] == "pets-ablation" and sweep["seeds"]["start"] == 2 and sweep["overrides"]["eval.test_at"]
    assert ssdlab.cli.main(["init", str(data), "--root", str(tmp_path), "--no-measure"]) == 2   # no overwrite
    assert "pets.yaml: already exists" in capsys.readouterr().err
    assert ssdlab.cli.main(["init", str(data), "--root", str(tmp_path), "--no-measure", "--force"]) == 0


def test_the_starter_measures_an_iteration_and_prices_the_budget(tmp_path):
    said = []
    starter = plan_starter(_yolo_set(tmp_path / "m", n=10), "m", measure=True, say=said.append)
    budget = next(line for line in said if line.startswith("budget: "))
    assert "one iteration takes" in budget and " h a trial" in budget
    assert starter.config["train"]["epochs"] * 1 >= 30 and starter.sweep["experiment"] == "../experiments/configs/m.yaml"


def _tiny(root, out, **data):
    return validate_config({
        "name": "user", "model": {"backbone": "mobilenet_v2", "image_size": 64, "width_mult": 0.35, "lite_heads": True},
        "data": {"format": "yolo", "root": str(root), "train_sets": ["train"], "holdout": 0.25, **data},
        "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 3e-3, "device": "cpu", "log_every": 100},
        "output": {"dir": str(out)}}, source="user.yaml")


def test_an_unreadable_image_stops_train_and_sweep_before_they_start(tmp_path, capsys, monkeypatch):
    from ssd_core.errors import DataError
    from ssd_core.train import fit

    data = _yolo_set(tmp_path / "d", n=12, bad=(3, 7))
    with pytest.raises(DataError, match=r"user.yaml: data: 2 image\(s\) cannot be read: .*i07\.jpg \(train\), .*i03\.jpg \(val\)"):
        fit(_tiny(data, tmp_path / "runs"), run_dir=tmp_path / "runs/r")
    assert not (tmp_path / "runs/r").exists()                       # nothing made, nothing to clean up
    cfg_path = tmp_path / "user.yaml"
    cfg_path.write_text(yaml.safe_dump(_tiny(data, tmp_path / "runs").model_dump(mode="json")))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "experiment": str(cfg_path), "arms": {"a": {"overrides": {}}},
                                     "seeds": [0], "tracking": {"uri": f"sqlite:///{tmp_path}/m.db", "experiment": "s"}}))
    monkeypatch.setattr(ssdlab.cli, "COMMAND_MODULES", ("ssdlab.commands.sweep", "ssdlab.commands.train"))
    assert ssdlab.cli.main(["sweep", str(sweep), "--storage", str(tmp_path / "ray")]) == 2
    err = capsys.readouterr().err
    assert "i03.jpg" in err and "data.skip_bad" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ray").exists()                          # refused before Ray or any state
    assert ssdlab.cli.main(["train", str(cfg_path), "--no-tracking"]) == 2
    assert "i07.jpg" in capsys.readouterr().err


def test_skip_bad_trains_past_them_and_the_run_records_which(tmp_path):
    from mlflow.tracking import MlflowClient

    from experiments.tracking.train_run import MLflowCallback
    from experiments.tracking.writer import SKIPPED_IMAGES
    from ssd_core.train import fit

    data = _yolo_set(tmp_path / "d", n=12, bad=(3,))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cb = MLflowCallback(uri, "user", log_checkpoint=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(_tiny(data, tmp_path / "runs", skip_bad=True, test_holdout=0.25), [cb], run_dir=tmp_path / "r")
    record = json.loads((tmp_path / "r" / RD.DATA_RECORD).read_text())
    by_split = {r["split"]: r for r in record}
    assert set(by_split) == {"train", "val", "test"} and sum(r["images"] for r in record) == 11
    skipped = [line for r in record for line in r["skipped"]]
    assert len(skipped) == 1 and "i03.jpg" in skipped[0]
    assert len({r["digest"] for r in record}) == 3 and "(test slice)" in by_split["test"]["name"]
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("user").experiment_id])[0]
    assert run.data.tags[Tag.DATA_SKIPPED] == "1"
    text = client.download_artifacts(run.info.run_id, f"{Artifact.DATA}/{SKIPPED_IMAGES}", str(tmp_path))
    assert "i03.jpg" in open(text).read()
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"} and inputs["train"].digest == by_split["train"]["digest"]
    # another version of the data (a box moved in each label file) is another dataset in the runs table
    for label in (tmp_path / "d/train/labels").glob("*.txt"):
        label.write_text(label.read_text().replace(" 0.", " 0.0", 1))
    from ssd_core.build import build_dataset
    from ssd_core.data.record import digest
    assert digest(build_dataset(_tiny(data, tmp_path / "runs", skip_bad=True, test_holdout=0.25), "train", train=False,
                                transform=False)) != by_split["train"]["digest"]
