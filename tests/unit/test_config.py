"""ssd_core.config: schema, errors naming file and key, overrides, flatten, hash stability."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ssd_core.config import (
    HASH_EXCLUDED,
    ExperimentConfig,
    apply_overrides,
    config_hash,
    config_keys,
    flatten,
    load_config,
    parse_overrides,
    resolve_data_root,
    to_yaml,
    validate_config,
)
from ssd_core.errors import ConfigError, UserError

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


def write(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    again = load_config(write(tmp_path, yaml.safe_load(to_yaml(cfg))))
    assert again.model_dump() == cfg.model_dump() and config_hash(again) == config_hash(cfg)


def test_paper_recipe_is_encoded():
    cfg = load_config(CONFIGS / "ssd300_voc_vgg16.yaml")
    t = cfg.train
    assert (t.batch_size, t.optimizer, t.lr, t.momentum, t.weight_decay) == (32, "sgd", 1e-3, 0.9, 5e-4)
    assert t.max_iters == 120_000 and t.schedule.unit == "iter" and t.schedule.milestones == [80_000, 100_000]
    assert cfg.data.train_sets == ["VOC2007/trainval", "VOC2012/trainval"] and cfg.data.test_sets == ["VOC2007/test"]
    assert cfg.data.val_sets == [] and cfg.data.holdout is None  # the final iteration is the model, as in the paper
    assert (cfg.eval.nms_threshold, cfg.eval.score_threshold, cfg.eval.max_detections) == (0.45, 0.01, 200)


@pytest.mark.parametrize("data, key, expected", [
    ({"train": {"lr": 0}}, "train.lr", "greater than 0"),
    ({"train": {"lr": -1e-3}}, "train.lr", "greater than 0"),
    ({"train": {"lrr": 0.1}}, "train.lrr", "unknown key (did you mean 'train.lr'?)"),
    ({"modle": {}}, "modle", "unknown key"),
    ({"train": {"epochs": "ten"}}, "train.epochs", "valid integer"),
    ({"model": {"backbone": "vgg19"}}, "model.backbone", "'vgg16'"),
    ({"model": {"backbone": "vgg16", "image_size": 16}}, "model.image_size", "cannot be taken by backbone 'vgg16'"),
    ({"model": {"backbone": "resnet50", "image_size": 2048}}, "model.image_size", "image_size <= 1024"),
    ({"model": {"backbone": "resnet50", "width_mult": 0.5}}, "model.width_mult", "mobilenet_v2 and tiny only"),
    ({"train": {"schedule": {"milestones": [100, 50]}}}, "train.schedule.milestones", "strictly increasing"),
    ({"augment": {"zoom_out": {"p": 1.5}}}, "augment.zoom_out.p", "less than or equal to 1"),
    ({"augment": {"sample_patch": {"min_ious": [0.1, 1.2]}}}, "augment.sample_patch.min_ious", "outside [0, 1]"),
    ({"data": {"class_names": ["a", "b", "a"]}}, "data.class_names", "repeats ['a']"),
    ({"eval": {"metric": "coco"}}, "eval.metric", "needs data.format 'coco'"),
    ({"model": {"prior_first_ratio": 30, "prior_min_ratio": 20}}, "model.prior_first_ratio",
     "must be smaller than prior_min_ratio 20"),
    ({"model": {"prior_min_ratio": 90, "prior_max_ratio": 20}}, "model.prior_max_ratio", "greater than prior_min_ratio"),
    ({"train": {"schedule": {"unit": "time"}}}, "train.schedule.unit", "needs train.time_budget_s"),
    ({"train": {"time_budget_s": 60, "schedule": {"unit": "time", "milestones": [0.5, 2]}}}, "train.schedule.milestones",
     "fractions of train.time_budget_s"),
])
def test_bad_values_name_file_and_key(tmp_path, data, key, expected):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}: {key}: " in message and expected in message
    assert isinstance(info.value, UserError)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping"):
        load_config(bad)


def test_parse_overrides_reads_yaml_scalars():
    got = parse_overrides(["train.lr=1e-2", "train.epochs=3", "model.pretrained=false", "data.root=null",
                           "data.class_names=[a, b]", "name=x=y", "train.grad_clip="])
    assert got == {"train.lr": 0.01, "train.epochs": 3, "model.pretrained": False, "data.root": None,
                   "data.class_names": ["a", "b"], "name": "x=y", "train.grad_clip": None}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["train.lr"])


def test_overrides_apply_validate_and_name_unknown_keys(tmp_path):
    path = write(tmp_path, {"name": "t", "train": {"lr": 0.1}})
    cfg = load_config(path, ["train.lr=0.02", "augment.zoom_out.p=0", "data.synthetic.images=12"])
    assert cfg.train.lr == 0.02 and cfg.augment.zoom_out.p == 0 and cfg.data.synthetic.images == 12
    assert cfg.data.synthetic.seed == 0  # the rest of a section created by an override takes defaults
    assert load_config(path, {"train.epochs": 7}).train.epochs == 7
    with pytest.raises(ConfigError, match=r"exp\.yaml: override train\.lrr: unknown key \(did you mean 'train\.lr'\?\)"):
        load_config(path, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"exp\.yaml: train\.lr: .*greater than 0"):
        apply_overrides(cfg, {"train.lr": -1})
    # apply_overrides returns a new config and keeps the source for later error messages
    other = apply_overrides(cfg, {"train.momentum": 0.5})
    assert other.train.momentum == 0.5 and cfg.train.momentum == 0.9 and other.source == str(path)


def test_model_validate_and_defaults():
    cfg = ExperimentConfig.model_validate({"model": {"backbone": "mobilenet_v2", "image_size": 128, "width_mult": 0.5}})
    assert cfg.model.width_mult == 0.5 and cfg.train.lr == 1e-3 and cfg.num_classes is None
    cfg = ExperimentConfig.model_validate({"data": {"class_names": ["RBC", "WBC", "Platelets"]}})
    assert cfg.num_classes == 4


def test_flatten_and_config_keys_agree():
    cfg = load_config(CONFIGS / "ssd300_voc_vgg16.yaml")
    flat = flatten(cfg)
    assert flat["train.lr"] == 1e-3 and flat["model.backbone"] == "vgg16"
    assert json.loads(flat["train.schedule.milestones"]) == [80000, 100000]
    assert json.loads(flat["data.train_sets"]) == ["VOC2007/trainval", "VOC2012/trainval"]
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in flat.values())
    keys = config_keys()
    assert set(flat) <= keys and "data.synthetic" in keys and "data.synthetic.images" in keys
    assert {"train.schedule.gamma", "augment.sample_patch.min_ious", "eval.nms_threshold"} <= keys


def test_config_hash_is_stable_and_ignores_bookkeeping(tmp_path):
    cfg = ExperimentConfig()
    h = config_hash(cfg)
    assert all(c in "0123456789abcdef" for c in h) and len(h) == 12
    assert config_hash(ExperimentConfig.model_validate(json.loads(json.dumps(cfg.model_dump(mode="json"))))) == h
    # bookkeeping keys do not change the hash; anything that changes the weights does
    same = apply_overrides(cfg, {"name": "other", "tracking.uri": "file:///x", "output.dir": "elsewhere",
                                 "data.root": "/data", "train.log_every": 1, "data.cache_images": True})
    assert config_hash(same) == h
    for key, value in [("train.lr", 0.002), ("train.seed", 1), ("augment.flip", False), ("eval.top_k", 100)]:
        assert config_hash(apply_overrides(cfg, {key: value})) != h, key
    assert "tracking" in HASH_EXCLUDED and "data.root" in HASH_EXCLUDED


def test_config_hash_is_pinned():
    """The hash of the default config must not drift silently (sweeps dedupe runs by it)."""
    data = ExperimentConfig().model_dump(mode="json")
    import hashlib
    for key in HASH_EXCLUDED:
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.get(p) or {}
        node.pop(last, None)  # sections left at their defaults (distill, deploy) are not in the dump at all
    expected = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    assert config_hash(ExperimentConfig()) == expected
    # the literal values, unchanged since the `distill` and `deploy` sections were added (both omitted at defaults)
    assert config_hash(ExperimentConfig()) == "2dcd654cd60c"
    # with train.amp auto and prior_scales auto (a changed default moves this hash: say why in the commit)
    assert config_hash(load_config(CONFIGS / "bccd_mobilenet_v2.yaml")) == "7eaec3747301"


def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SSDLAB_DATA_ROOT", raising=False)
    cfg = ExperimentConfig.model_validate({"data": {"default_root": "fallback"}})
    assert resolve_data_root(cfg) == Path("fallback")
    monkeypatch.setenv("SSDLAB_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root(cfg) == tmp_path / "env"
    assert resolve_data_root(apply_overrides(cfg, {"data.root": "given"})) == Path("given")
    monkeypatch.delenv("SSDLAB_DATA_ROOT")
    with pytest.raises(ConfigError, match="data.root: not set"):
        resolve_data_root(ExperimentConfig())


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_no_shipped_config_selects_on_its_test_split(path):
    """Selection (val_sets / holdout) and reporting (test_sets) are different images in every shipped
    config, and every config that has real data names the split it reports."""
    d = load_config(path).data
    assert d.test_sets, f"{path.name}: no test_sets: nothing to report"
    assert not set(d.val_sets) & set(d.test_sets)
    assert not any(s.endswith(("/test", "test2017")) for s in d.val_sets), d.val_sets


@pytest.mark.parametrize("data, expected", [
    ({"val_sets": ["B/test"], "test_sets": ["B/test"]}, "x.yaml: data.test_sets: test_sets ['B/test'] also in val_sets"),
    ({"train_sets": ["B/train"], "test_sets": ["B/train"]}, "also in train_sets"),
    ({"val_sets": ["B/val"], "holdout": 0.1}, "two selection splits"),
    ({"holdout": 1.5}, "data.holdout"),
])
def test_split_rules_name_the_key(data, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        validate_config({"data": {"train_sets": ["B/train"], **data}}, "x.yaml")


def test_a_bare_yaml_off_for_train_amp_means_off(tmp_path):
    """YAML 1.1 reads `amp: off` (and `-o train.amp=off`) as false; a sweep with it was refused ("got False")."""
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain: {amp: off}\n")
    assert load_config(path).train.amp == "off"
    assert load_config(path, ["train.amp=off"]).train.amp == "off"
    assert config_hash(load_config(path)) == config_hash(load_config(path, ['train.amp="off"']))
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(path, ["train.amp=true"])  # only the false that means off is read kindly
