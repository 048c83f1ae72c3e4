"""`ssdlab config show | train | eval | detect` end to end through ssdlab.cli.main (tiny synthetic run)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ssd_core.config import config_hash, load_config
from ssdlab.cli import main

REPO = Path(__file__).resolve().parents[2]


from tests.support.configs import tiny_yaml  # noqa: E402


def test_config_show_prints_resolved_yaml_and_hash(capsys):
    path = REPO / "experiments" / "configs" / "demo_shapes.yaml"
    assert main(["config", "show", str(path), "-o", "train.lr=0.01", "-o", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["train"]["lr"] == 0.01 and shown["train"]["epochs"] == 2
    assert f"# config_hash: {config_hash(load_config(path, ['train.lr=0.01', 'train.epochs=2']))}" in out


def test_config_show_errors_exit_2_naming_file_and_key(capsys, tmp_path):
    path = REPO / "experiments" / "configs" / "demo_shapes.yaml"
    assert main(["config", "show", str(path), "-o", "train.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "demo_shapes.yaml: train.lr:" in err and "greater than 0" in err


def test_train_eval_detect_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = tiny_yaml(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    assert main(["train", str(cfg_path), "--tracking-uri", uri, "--run-dir", str(run_dir),
                 "-o", "train.seed=3"]) == 0
    assert "done: 2 epochs" in capsys.readouterr().out
    best = run_dir / "best.pt"
    assert best.is_file() and (run_dir / "last.pt").is_file()

    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cli-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["ssdlab.kind"] == "train" and run.info.status == "FINISHED"
    assert run.data.params["train.seed"] == "3" and run.data.params["model.backbone"] == "mobilenet_v2"
    assert run.data.tags["ssdlab.config_hash"] == config_hash(load_config(cfg_path, ["train.seed=3"]))
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
    assert "val/AP50/circle" in run.data.metrics and "val/mAP50" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts and "checkpoints" in artifacts and "test_detections.npz" in artifacts
    evidence = {a.path for a in client.list_artifacts(run.info.run_id, "evidence")}
    assert evidence == {"evidence/detections.png", "evidence/pr_curves.png"}  # drawn at the selected checkpoint
    for a in evidence:
        assert open(client.download_artifacts(run.info.run_id, a, str(tmp_path)), "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    out_json = tmp_path / "eval.json"
    assert main(["eval", str(cfg_path), "--checkpoint", str(best), "--split", "test", "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "circle" in table and "mAP50 (VOC07)" in table
    metrics = json.loads(out_json.read_text())["metrics"]
    assert {"test/mAP50", "test/AP50/cross"} <= set(metrics)

    images = sorted((tmp_path / "shapes" / "SHAPES" / "JPEGImages").glob("*.jpg"))[:2]
    out_dir = tmp_path / "detections"
    assert main(["detect", "--checkpoint", str(best), *map(str, images), "--out", str(out_dir), "--score", "0.05"]) == 0
    report = json.loads((out_dir / "detections.json").read_text())
    assert [Path(r["image"]).name for r in report["images"]] == [p.name for p in images]
    for r, image in zip(report["images"], images):
        png = out_dir / f"{image.stem}.png"
        assert png.is_file() and r["output"] == str(png)
        for d in r["detections"]:
            assert d["class"] in {"circle", "square", "triangle", "cross"} and d["score"] >= 0.05
            x1, y1, x2, y2 = d["box_xyxy"]
            assert 0 <= x1 <= x2 <= r["width"] and 0 <= y1 <= y2 <= r["height"]


def test_eval_with_a_corrupt_checkpoint_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    cfg_path = tiny_yaml(tmp_path)
    assert main(["eval", str(cfg_path), "--checkpoint", str(bad)]) == 2
    assert "bad.pt: cannot read checkpoint" in capsys.readouterr().err
    assert main(["detect", "--checkpoint", str(bad), "x.jpg", "--out", str(tmp_path / "o")]) == 2
