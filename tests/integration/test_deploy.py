"""ssd_core.deploy + `ssdlab export | deploy bench`: the ONNX export with NMS in the graph against the PyTorch
inference path, the INT8 model, the deploy/* metrics and their MLflow logging (a tiny model trained here)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from ssd_core import deploy as DP  # noqa: E402
from ssd_core import metrics as M  # noqa: E402
from ssd_core import onnx_export as OX  # noqa: E402
from ssd_core.build import build_dataset  # noqa: E402
from ssd_core.config import validate_config  # noqa: E402
from ssd_core.inference import detect, evaluate_model, model_from_checkpoint  # noqa: E402
from ssd_core.model import build_ssd  # noqa: E402
from ssd_core.postprocess import postprocess  # noqa: E402
from ssdlab.cli import main  # noqa: E402

CLASSES = ["circle", "square", "triangle", "cross"]
BCCD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bccd"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SSD trained ~60 iterations on easy synthetic shapes (test mAP@0.5 ~0.2): (checkpoint, model, cfg)."""
    from ssd_core.train import fit

    base = tmp_path_factory.mktemp("deploy")
    cfg = validate_config({
        "name": "deploy_tiny",
        "model": {"backbone": "tiny", "image_size": 64},
        "data": {"root": str(base / "shapes"), "train_sets": ["SHAPES/train"], "test_sets": ["SHAPES/test"],
                 "class_names": CLASSES,
                 "synthetic": {"images": 100, "seed": 0, "image_size": 64, "min_side": 0.3, "max_side": 0.7,
                               "max_objects": 2, "clutter": False}},
        "augment": {"photometric": False, "zoom_out": {"p": 0.0}, "sample_patch": {"enabled": False}, "flip": True},
        "train": {"epochs": 8, "batch_size": 8, "optimizer": "adamw", "lr": 5e-3, "weight_decay": 1e-4,
                  "no_decay_norm_bias": True, "warmup_iters": 10, "schedule": {"type": "cosine"}, "device": "cpu",
                  "log_every": 1000},
        "eval": {"every_epochs": 100},
        "output": {"dir": str(base / "runs")},
    }, source="deploy_tiny.yaml")
    result = fit(cfg, run_dir=base / "run")
    model, names, cfg = model_from_checkpoint(result.best_checkpoint)
    assert names == CLASSES
    return result.best_checkpoint, model, cfg


@pytest.fixture(scope="module")
def core(trained):
    return OX.export_core(trained[1])


def test_export_matches_pytorch_on_real_images(trained, core, tmp_path):
    """The exported model (one file, NMS inside) gives detect()'s detections: same labels, scores within
    1e-5, boxes within 1e-4, at batch 1 and batch 12."""
    ckpt, model, cfg = trained
    path = OX.export_onnx(model, tmp_path / "m.onnx", DP.NMSSettings.of(cfg.eval), CLASSES, core=core)
    ds = build_dataset(cfg, "test", train=False, class_names=CLASSES)
    images = torch.stack([ds[i][0] for i in range(12)])
    ref = detect(model, images, cfg, torch.device("cpu"))
    sess = DP.session(path, threads=1)
    got = OX.detections_of(sess.run(None, {OX.INPUT: images.numpy()}))
    assert got.boxes.shape == ref.boxes.shape == (12, cfg.eval.max_detections, 4)
    assert torch.equal(got.counts, ref.counts) and int(ref.counts.sum()) > 12
    parity = OX.compare_detections(ref, got)
    assert parity.ok, parity
    assert parity.max_score_diff <= 1e-5 and parity.max_box_diff <= 1e-4
    one = OX.detections_of(sess.run(None, {OX.INPUT: images[3:4].numpy()}))  # the batch does not matter
    assert OX.compare_detections(OX.detections_of([o[3:4] for o in (got.boxes, got.scores, got.labels,
                                                                     got.counts)]), one).ok
    meta = {p.key: p.value for p in __import__("onnx").load(str(path)).metadata_props}
    assert json.loads(meta["ssdlab.class_names"]) == CLASSES and meta["ssdlab.image_size"] == "64"


@pytest.mark.parametrize("settings", [DP.NMSSettings(0.01, 0.45, 400, 200),    # the paper's: max_detections binds
                                      DP.NMSSettings(0.2, 0.5, 20, 15),        # top_k binds before NMS
                                      DP.NMSSettings(0.05, 0.45, 1000, 2000)],  # max_detections > (C-1) P: padded
                         ids=["paper", "small_top_k", "padded"])
def test_postprocess_graph_matches_postprocess_under_load(settings):
    """An untrained model (hundreds of candidates per class): the graph's top_k, NMS and max_detections
    handling equals ssd_core.postprocess (as sets: near-equal scores may swap places)."""
    torch.manual_seed(0)
    model = build_ssd("tiny", 5, 48).eval()
    for head in model.conf_heads:
        nn.init.normal_(head.weight, std=0.05)
    full = OX.add_postprocess(OX.export_core(model), model.priors.shape[0], model.num_classes, settings)
    images = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8)
    got = OX.detections_of(DP.session(full, threads=1).run(None, {OX.INPUT: images.numpy()}))
    with torch.no_grad():
        loc, conf = model(model.normalize(images))
    ref = postprocess(loc, conf, model.priors, *settings)
    assert got.scores.shape == ref.scores.shape == (3, settings.max_detections)
    assert torch.equal(got.counts, ref.counts) and int(ref.counts.min()) > 0
    if settings.max_detections <= (model.num_classes - 1) * model.priors.shape[0] and settings.top_k < 400:
        assert int(ref.counts.max()) == settings.max_detections
    parity = OX.compare_detections(ref, got)
    assert parity.ok, parity
    assert not got.scores[:, int(got.counts.max()):].any()  # padding rows are zero


def test_int8_model_runs_and_scores_close_to_fp32(trained, core, tmp_path):
    ckpt, model, cfg = trained
    calib = OX.calibration_images(cfg, CLASSES, 16)
    assert len(calib) == 16 and calib[0].dtype == np.uint8 and calib[0].shape == (1, 3, 64, 64)
    settings = DP.NMSSettings.of(cfg.eval)
    int8 = OX.export_onnx(model, tmp_path / "int8.onnx", settings, CLASSES, core=OX.quantize_core(core, calib))
    fp32 = OX.export_onnx(model, tmp_path / "fp32.onnx", settings, CLASSES, core=core)
    assert DP.file_mb(int8) < 0.5 * DP.file_mb(fp32)
    names = {n.op_type for n in __import__("onnx").load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "NonMaxSuppression"} <= names
    test = build_dataset(cfg, "test", train=False, class_names=CLASSES)
    ref = evaluate_model(model, test, cfg, torch.device("cpu"), prefix="test")["test/mAP50"]
    assert ref > 0.1
    assert OX.evaluate_onnx(DP.session(fp32), test, cfg, "test")["test/mAP50"] == pytest.approx(ref, abs=1e-6)
    q = OX.evaluate_onnx(DP.session(int8), test, cfg, "test")["test/mAP50"]
    assert abs(q - ref) < 0.05, (q, ref)


def test_gflops_counts_two_per_multiply_add():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert DP.gflops(conv, image_size=10) == pytest.approx(2 * 8 * 3 * 9 * 10 * 10 / 1e9)


def test_time_stages_medians():
    t = DP.time_stages([("a_ms", lambda x: x + 1), ("b_ms", lambda x: x * 2)], [1, 2, 3], warmup=1, repeats=5)
    assert set(t) == {"a_ms", "b_ms", "latency_ms"} and all(v >= 0 for v in t.values())
    assert t["latency_ms"] >= max(t["a_ms"], t["b_ms"])


def test_deploy_bench_cli_logs_metrics_onto_the_run(trained, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    ckpt = trained[0]
    from experiments.tracking.store import client_for, experiment_id
    from tests.support.stores import empty_store
    uri = empty_store(f"sqlite:///{tmp_path / 'mlflow.db'}")  # the run a training logged: a store that exists
    client = client_for(uri)
    run_id = client.create_run(experiment_id(client, "deploy-test", uri)).info.run_id
    out = tmp_path / "bench.json"
    code = main(["deploy", "bench", str(ckpt), "--images", "3", "--warmup", "1", "--repeats", "3",
                 "--calib-images", "8", "--max-images", "8", "--json", str(out), "--out-dir", str(tmp_path / "models"),
                 "--run-id", run_id, "--tracking-uri", uri])
    assert code == 0
    printed = capsys.readouterr().out
    assert "onnx int8" in printed and f"onto MLflow run {run_id}" in printed
    metrics = json.loads(out.read_text())["metrics"]
    expected = {M.DEPLOY_PARAMS, M.DEPLOY_GFLOPS, M.DEPLOY_CHECKPOINT_MB, M.DEPLOY_THREADS, M.DEPLOY_LATENCY,
                M.DEPLOY_LATENCY_1THREAD}
    for backend in M.DEPLOY_BACKENDS:
        expected |= {M.deploy(k, backend, one) for k in M.DEPLOY_TIMINGS for one in (False, True)}
        expected.add(M.deploy("mAP50", backend))
    expected |= {M.deploy("model_mb", "onnx"), M.deploy("model_mb", "int8")}
    assert expected <= set(metrics), expected - set(metrics)
    assert metrics[M.DEPLOY_PARAMS] == sum(p.numel() for p in trained[1].parameters())
    assert all(metrics[k] > 0 for k in expected if not k.endswith("mAP50"))
    assert metrics[M.deploy("mAP50", "onnx")] == pytest.approx(metrics[M.deploy("mAP50")], abs=1e-6)
    assert (tmp_path / "models" / "model.onnx").is_file() and (tmp_path / "models" / "model_int8.onnx").is_file()
    logged = MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics
    assert {k: pytest.approx(v) for k, v in metrics.items()} == {k: v for k, v in logged.items()}
    step = torch.load(ckpt, weights_only=True)["epoch"]
    assert {m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, M.DEPLOY_LATENCY)} == {step}


def test_export_cli_writes_and_checks(trained, tmp_path, capsys):
    ckpt = trained[0]
    code = main(["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--int8", str(tmp_path / "q.onnx"),
                 "--calib-images", "8", "--check", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "q.onnx").is_file()
    line = next(ln for ln in out.splitlines() if ln.startswith(f"{tmp_path / 'm.onnx'}: vs PyTorch"))
    matched, total = line.split(": vs PyTorch: ")[1].split(" ")[0].split("/")
    assert matched == total and int(total) > 0 and "ms per image" in line


@pytest.mark.parametrize("argv, message", [
    (["--run-id", "0123456789abcdef"], "--run-id 0123456789abcdef: no such run"),
    (["--tracking-uri", "sqlite:///x.db"], "--tracking-uri needs --run-id"),
    (["--repeats", "0"], "--repeats 0"),
])
def test_deploy_bench_bad_input_is_one_line(trained, tmp_path, capsys, argv, message):
    if argv[0] == "--run-id":
        argv = argv + ["--tracking-uri", f"sqlite:///{tmp_path / 'store.db'}"]
    assert main(["deploy", "bench", str(trained[0]), *argv]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if " INFO mlflow" not in ln]  # a new store's log
    assert len(err) == 1 and err[0].startswith("ssdlab deploy: error: ") and message in err[0]


def test_deploy_bench_missing_checkpoint(tmp_path, capsys):
    assert main(["deploy", "bench", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.skipif(not (BCCD / "BCCD" / "Annotations").is_dir(), reason=f"BCCD not found at {BCCD}")
def test_export_on_bccd_images():
    """Real photographs (BCCD, 320 px, the shipped MobileNetV2 SSDLite layout, random weights: hundreds of
    candidates per image, top_k and max_detections binding): the post-processing graph, fed PyTorch's decoded
    boxes and scores, equals postprocess. (An untrained network's scores are near-ties by the hundred, which
    ~1e-6 differences between two float implementations reorder, so the network graph is compared end to end
    on a trained model: test_export_matches_pytorch_on_real_images, ~1e-7.)"""
    from ssd_core.boxes import decode
    from ssd_core.config import load_config

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "experiments" / "configs" / "bccd_mobilenet_v2.yaml", [f"data.root={BCCD}"])
    from ssd_core.prior_fit import resolve_priors

    torch.manual_seed(0)
    model = build_ssd(resolve_priors(cfg).model, 4)
    for m in model.modules():  # BatchNorm statistics of these images, not of nothing (features collapse)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    ds = build_dataset(cfg, "test", train=False, class_names=cfg.data.class_names)
    images = torch.stack([ds[i][0] for i in range(3)])
    with torch.no_grad():
        model.train()(model.normalize(torch.stack([ds[i][0] for i in range(3, 6)])))
        loc, conf = model.eval()(model.normalize(images))
    boxes = decode(loc, model.priors).clamp(0, 1)
    scores = torch.softmax(conf, dim=-1)[..., 1:].transpose(1, 2).contiguous()
    for settings in (DP.NMSSettings(0.05, 0.45, 100, 50), DP.NMSSettings(0.01, 0.45, 400, 200)):
        post = DP.session(OX.postprocess_model(model.priors.shape[0], 4, settings))
        got = OX.detections_of(post.run(None, dict(zip(OX.CORE_OUTPUTS, (boxes.numpy(), scores.numpy())))))
        ref = postprocess(loc, conf, model.priors, *settings)
        assert int(ref.counts.min()) == settings.max_detections
        parity = OX.compare_detections(ref, got)
        assert parity.ok, parity
