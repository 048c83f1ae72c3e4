"""Deployment arms: the `deploy` config section, deploy/* measured at the end of training
(`ssdlab train` and a sweep trial), a multi-objective search (search.objectives), and the report's accuracy
against speed table, plot and Pareto front, every number checked by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

mlflow = pytest.importorskip("mlflow")
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from experiments.schema import SEARCH_OBJECTIVES, Tag, pareto_front  # noqa: E402
from ssd_core import metrics as M  # noqa: E402
from ssd_core.config import DeployConfig, apply_overrides, config_hash, flatten, to_yaml, validate_config  # noqa: E402
from ssd_core.errors import ConfigError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "experiments" / "configs" / "demo_shapes.yaml"
T0 = 1_700_000_000_000
T975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (3 seeds)


# ---------------------------------------------------------------- config and the front


def test_deploy_section_is_off_by_default_omitted_from_dumps_and_out_of_the_hash():
    cfg = validate_config({"name": "x"})
    assert cfg.deploy == DeployConfig() and not cfg.deploy.bench
    assert "deploy" not in to_yaml(cfg) and not any(k.startswith("deploy.") for k in flatten(cfg))
    on = apply_overrides(cfg, {"deploy.bench": True, "deploy.int8": False, "deploy.repeats": 5})
    assert "deploy:" in to_yaml(on) and flatten(on)["deploy.repeats"] == 5
    assert config_hash(on) == config_hash(cfg)  # it measures the trained weights, never changes them
    with pytest.raises(ConfigError, match="deploy.repeats"):
        apply_overrides(cfg, {"deploy.repeats": 0})
    with pytest.raises(ConfigError, match="deploy.colour"):
        apply_overrides(cfg, {"deploy.colour": 1})


def test_pareto_front_by_hand():
    # (mAP max, latency min): b dominates c (better and faster) and f (as good, faster); e has a nan
    points = [(0.50, 10.0), (0.60, 20.0), (0.55, 30.0), (0.40, 5.0), (math.nan, 1.0), (0.60, 25.0)]
    assert pareto_front(points, ["max", "min"]) == [True, True, False, True, False, False]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)], ["max", "min"]) == [True, True]  # equal points: both stay
    assert pareto_front([(3.0,), (1.0,)], ["min"]) == [False, True]


def test_mean_ci_by_hand():
    from reports.stats import mean_ci

    low, high = mean_ci([0.60, 0.62, 0.64])
    half = T975_2 * 0.02 / math.sqrt(3)
    assert (low, high) == (pytest.approx(0.62 - half), pytest.approx(0.62 + half))
    assert all(math.isnan(v) for v in mean_ci([0.5]))


# ---------------------------------------------------------------- sweep files with search.objectives


def _sweep(tmp_path: Path, search: dict, **extra) -> Path:
    sweep = {"name": "mo", "experiment": str(DEMO), "seeds": [0],
             "overrides": {"deploy.bench": True, **extra.pop("overrides", {})},
             "search": {"sampler": "tpe", "num_samples": 4,
                        "space": {"train.lr": {"loguniform": [1e-3, 1e-2]}}, **search}, **extra}
    path = tmp_path / "mo.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


@pytest.mark.parametrize("search, extra, message", [
    ({"objectives": ["deploy/latency"]}, {}, "search.objectives[0]: 'deploy/latency': not a cost"),
    ({"objectives": ["deploy/latency_ms", "deploy/latency_ms"]}, {}, "repeats an objective"),
    ({"objectives": ["deploy/latency_ms"], "sampler": "gp"}, {}, "search.sampler: 'gp' does not search several"),
    ({"objectives": ["deploy/latency_ms"]}, {"scheduler": {"asha": {"grace_period": 1}}}, "scheduler: early stopping"),
    ({"objectives": ["deploy/latency_ms"]}, {"overrides": {"deploy.bench": False}}, "deploy.bench, which is off"),
    ({"objectives": ["deploy/int8/latency_ms"]}, {"overrides": {"deploy.int8": False}}, "needs deploy.int8: true"),
])
def test_objectives_are_validated_naming_the_key(tmp_path, search, extra, message):
    from experiments.sweep.validate import load_sweep

    with pytest.raises(ConfigError, match=r"mo\.yaml") as err:
        load_sweep(_sweep(tmp_path, search, **extra))
    assert message in str(err.value)


def test_objectives_reach_the_parent_tags_and_the_optuna_searcher(tmp_path):
    pytest.importorskip("ray")
    from experiments.sweep.plan import parent_tags
    from experiments.sweep.validate import load_sweep

    spec = load_sweep(_sweep(tmp_path, {"objectives": ["deploy/latency_ms", "deploy/int8/model_mb"],
                                        "sampler": "nsga2"}))
    assert json.loads(parent_tags(spec)[Tag.OBJECTIVES]) == ["deploy/latency_ms", "deploy/int8/model_mb"]
    assert set(SEARCH_OBJECTIVES) >= {"deploy/latency_ms", "deploy/onnx/latency_ms_1thread", "deploy/params"}


# ---------------------------------------------------------------- deploy/* at the end of training


def _tiny(tmp_path: Path, **deploy) -> Path:
    data = {
        "name": "dep_tiny",
        "model": {"backbone": "tiny", "image_size": 48},
        "data": {"root": str(tmp_path / "shapes"), "train_sets": ["SHAPES/train"], "val_sets": ["SHAPES/val"],
                 "test_sets": ["SHAPES/test"], "class_names": ["circle", "square", "triangle", "cross"],
                 "synthetic": {"images": 24, "seed": 1, "image_size": 48}},
        "augment": {"photometric": False, "zoom_out": {"p": 0.0}, "sample_patch": {"enabled": False}},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adamw", "lr": 3e-3, "warmup_iters": 1,
                  "schedule": {"type": "constant"}, "device": "cpu", "log_every": 1000},
        "deploy": {"bench": True, "onnx": False, "int8": False, "images": 2, "warmup": 0, "repeats": 3, **deploy},
        "tracking": {"experiment": "dep"},
        "output": {"dir": str(tmp_path / "runs")},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_ssdlab_train_logs_deploy_metrics_with_the_final_epoch(tmp_path, monkeypatch):
    from ssdlab.cli import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    assert main(["train", str(_tiny(tmp_path)), "--tracking-uri", uri, "--run-dir", str(run_dir)]) == 0
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dep").experiment_id])
    saved = json.loads((run_dir / "deploy.json").read_text())
    for key in (M.DEPLOY_LATENCY, M.DEPLOY_LATENCY_1THREAD, M.DEPLOY_PARAMS, M.DEPLOY_GFLOPS, M.deploy("mAP50")):
        (point,) = client.get_metric_history(run.info.run_id, key)
        assert point.step == 1 and point.value == pytest.approx(saved[key])  # with the final epoch, once
    # the FP32 model scored at the selected checkpoint on the test split: the run's own test mAP
    assert saved[M.deploy("mAP50")] == pytest.approx(run.data.metrics[M.map50(M.TEST)], abs=1e-6)
    assert saved[M.DEPLOY_PARAMS] > 1000 and not any(k.startswith("deploy/onnx") for k in saved)


def test_tune_reporter_measures_at_the_final_epoch_and_replays_what_it_measured(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import ray.tune

    import ssd_core.deploy as DP
    from experiments.sweep.job import STATE_FILES
    from experiments.sweep.worker import TuneReporter

    cfg = validate_config({"name": "x", "deploy": {"bench": True}})
    calls, reported = [], []
    monkeypatch.setattr(DP, "bench_with", lambda ckpt, d, data_root=None, threads=None, log=None: (
        calls.append((Path(ckpt).name, threads)) or DP.BenchResult({M.DEPLOY_LATENCY: 7.5, M.DEPLOY_PARAMS: 1e6,
                                                                    M.deploy("mAP50", "int8"): math.nan})))
    monkeypatch.setattr(ray.tune, "report", lambda result, checkpoint=None: reported.append(result))
    monkeypatch.setattr("experiments.evidence.write_evidence", lambda run_dir: None)
    (tmp_path / "best.pt").write_bytes(b"x")
    rep = TuneReporter(cfg=cfg, threads=2)
    rep.on_epoch_end(1, {"score": 0.1, "final": 0.0}, tmp_path)
    rep.on_epoch_end(2, {"score": 0.2, "final": 1.0}, tmp_path)
    assert calls == [("best.pt", 2)]  # once, at the final epoch, on the selected checkpoint, the trial's threads
    assert M.DEPLOY_LATENCY not in reported[0] and reported[1][M.DEPLOY_LATENCY] == 7.5
    assert M.deploy("mAP50", "int8") not in reported[1]  # non-finite values are not sent
    assert json.loads((tmp_path / "deploy.json").read_text()) == {M.DEPLOY_LATENCY: 7.5, M.DEPLOY_PARAMS: 1e6}
    assert "deploy.json" in STATE_FILES  # carried with the trial's checkpoints
    rep.state_epoch = 2  # replaying the final epoch after a restart: the measurement is read back, not redone
    rep.on_epoch_end(2, {"score": 0.2, "final": 1.0}, tmp_path)
    assert len(calls) == 1 and reported[2][M.DEPLOY_LATENCY] == 7.5
    (tmp_path / "deploy.json").unlink()  # killed after the final report, before the measurement: measured now
    rep.on_epoch_end(2, {"score": 0.2, "final": 1.0}, tmp_path)
    assert len(calls) == 2 and reported[3][M.DEPLOY_LATENCY] == 7.5
    off = TuneReporter(cfg=validate_config({"name": "y"}))
    off.on_epoch_end(1, {"score": 0.1, "final": 1.0}, tmp_path / "elsewhere")
    assert len(calls) == 2 and M.DEPLOY_LATENCY not in reported[4]


# ---------------------------------------------------------------- the report


# (arm, seed) -> {backend: (mAP50, latency_ms)}; the same network in both arms: same params and sizes
DEPLOY = {
    ("student", 0): {"torch": (0.60, 10.0), "onnx": (0.60, 6.0), "int8": (0.59, 3.0)},
    ("student", 1): {"torch": (0.62, 11.0), "onnx": (0.62, 6.0), "int8": (0.60, 3.2)},
    ("student", 2): {"torch": (0.64, 12.0), "onnx": (0.64, 6.0), "int8": (0.63, 3.4)},
    ("+distill", 0): {"torch": (0.66, 10.0), "onnx": (0.66, 6.0), "int8": (0.65, 3.0)},
    ("+distill", 1): {"torch": (0.67, 11.0), "onnx": (0.67, 6.0), "int8": (0.66, 3.2)},
    ("+distill", 2): {"torch": (0.68, 12.0), "onnx": (0.68 - 3e-6, 6.0), "int8": (0.66, 3.4)},  # float noise
}


def _store(tmp_path: Path, objectives: list | None = None, searched: bool = False) -> str:
    from experiments.tracking.store import ensure_store
    from tests.support.stores import empty_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(empty_store(uri))
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("ssdlab")
    arms = ["student", "+distill"]
    space = {"train.lr": {"loguniform": [1e-4, 1e-1]}} if searched else {}
    parent = client.create_run(exp, start_time=T0, tags={
        Tag.KIND: "sweep", Tag.SWEEP: "dep", Tag.ARMS: json.dumps(arms), Tag.BASELINE_ARM: "student",
        Tag.SEARCH_SPACE: json.dumps(space), Tag.METRIC: "val/mAP50",
        **({Tag.OBJECTIVES: json.dumps(objectives)} if objectives is not None else {})}).info.run_id
    for i, ((arm, seed), models) in enumerate(DEPLOY.items()):
        start = T0 + 1000 * (i + 1)
        tags = {Tag.PARENT: parent, Tag.KIND: "trial", Tag.SWEEP: "dep", Tag.TRIAL_ID: f"t{i}", Tag.ARM: arm,
                Tag.SEED: str(seed), Tag.STATUS: "finished",
                Tag.PHASE: "search" if searched else "grid",
                **({Tag.SEARCHED: '["train.lr"]'} if searched else {})}
        run = client.create_run(exp, start_time=start, tags=tags).info.run_id
        ts = start + 60_000
        val = models["torch"][0] + 0.01
        ms = [Metric("val/mAP50", val, ts, 1), Metric(M.SCORE, val, ts, 1), Metric(M.map50(M.TEST), models["torch"][0], ts, 1),
              Metric(M.DEPLOY_PARAMS, 2.0e6, ts, 1), Metric(M.DEPLOY_GFLOPS, 1.5, ts, 1),
              Metric(M.DEPLOY_THREADS, 1.0, ts, 1), Metric(M.DEPLOY_CHECKPOINT_MB, 8.0, ts, 1)]
        for backend, (m, lat) in models.items():
            ms += [Metric(M.deploy("mAP50", backend), m, ts, 1), Metric(M.deploy("latency_ms", backend), lat, ts, 1),
                   Metric(M.deploy("latency_ms", backend, one_thread=True), lat, ts, 1)]
            if backend != "torch":
                ms.append(Metric(M.deploy("model_mb", backend), 8.0 if backend == "onnx" else 2.1, ts, 1))
        client.log_batch(run, metrics=ms, params=[mlflow.entities.Param("train.lr", str(0.001 * (i + 1)))])
        client.set_terminated(run, "FINISHED", end_time=start + 120_000)
    return uri


def test_accuracy_speed_rows_intervals_deltas_and_front_by_hand(tmp_path):
    from reports.deploy import accuracy_speed_table, deploy_rows
    from reports.load import read_sweep

    data = read_sweep("dep", _store(tmp_path))
    d = deploy_rows(data)
    assert list(zip(d["arm"], d["backend"])) == [(a, b) for a in ("student", "+distill") for b in ("torch", "onnx", "int8")]
    st = d.iloc[0]
    half = T975_2 * 0.02 / math.sqrt(3)
    assert (st["map"], st["map_std"], st["n"]) == (pytest.approx(0.62), pytest.approx(0.02), 3)
    assert (st["map_low"], st["map_high"]) == (pytest.approx(0.62 - half), pytest.approx(0.62 + half))
    assert st["latency_ms"] == pytest.approx(11.0) and st["size_mb"] == 8.0 and st["params"] == 2.0e6
    int8 = d.iloc[2]  # paired against the same runs' FP32: -0.01, -0.02, -0.01
    sd = math.sqrt(((1 / 3e2) ** 2 * 2 + (2 / 3e2) ** 2) / 2)  # deviations of -0.01, -0.02, -0.01 from -0.04/3
    half = T975_2 * sd / math.sqrt(3)
    assert int8["delta"] == pytest.approx(-0.04 / 3)
    assert (int8["delta_low"], int8["delta_high"]) == (pytest.approx(-0.04 / 3 - half), pytest.approx(-0.04 / 3 + half))
    assert int8["size_mb"] == 2.1 and int8["latency_ms"] == pytest.approx(3.2)
    # the front: +distill's ONNX (0.67 at 6 ms) and INT8 (0.657 at 3.2 ms) dominate every other row
    assert [f"{a}/{b}" for a, b, p in zip(d["arm"], d["backend"], d["pareto"]) if p] == ["+distill/onnx", "+distill/int8"]
    t = accuracy_speed_table(data, d)
    assert t.rows[0][:5] == ["student", "PyTorch FP32", "3", f"0.620 ± 0.020 [{0.62 - T975_2 * 0.02 / math.sqrt(3):.3f}, "
                                                                   f"{0.62 + T975_2 * 0.02 / math.sqrt(3):.3f}]", "reference"]
    # every trial measured with one thread: one latency column
    assert t.columns[5:7] == ["Latency ms (1 thread)", "Size MB"] and t.columns[-1] == "Pareto"
    assert t.rows[2][4].startswith("-0.013 [") and t.rows[4][-1] == "yes" and t.rows[0][-1] == ""


def test_report_shows_the_accuracy_speed_table_and_plot(tmp_path):
    from reports.report import build_report, write_report

    report = build_report("dep", _store(tmp_path))
    names = [t.name for t in report.tables]
    assert names.index("ablation") < names.index("accuracy_speed")  # after the ablation it complements
    assert report.plots["accuracy_speed"][:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "out"
    write_report(report, out, formats=("md", "csv"))
    md = (out / "report.md").read_text()
    assert "Accuracy against speed: dep" in md and "(accuracy_speed.png)" in md
    import pandas as pd
    csv = pd.read_csv(out / "accuracy_speed.csv")
    assert csv["pareto"].tolist() == [False, False, False, False, True, True] and csv["latency_ms"].dtype == float


def test_no_deploy_metrics_no_table(report_store):
    from reports.deploy import accuracy_speed_table, has_deploy
    from reports.load import read_sweep

    data = read_sweep("abl", report_store)
    assert not has_deploy(data) and accuracy_speed_table(data) is None


def test_multi_objective_search_table_lists_the_front_first(tmp_path):
    from reports.load import read_sweep
    from reports.search import search_table

    data = read_sweep("dep", _store(tmp_path, objectives=[M.DEPLOY_LATENCY], searched=True))
    t = search_table(data, top_k=2)
    # score = torch mAP + 0.01; latency 10/11/12 per seed: the front of (score max, latency min) is
    # t3 (0.67, 10 ms), t4 (0.68, 11 ms), t5 (0.69, 12 ms); every student trial is dominated by t3..t5
    assert [r[1] for r in t.rows[:3]] == ["t5", "t4", "t3"] and len(t.rows) == 3  # the whole front, past top_k
    assert t.columns[-2:] == [M.DEPLOY_LATENCY, "Front"] and all(r[-1] == "yes" for r in t.rows)
    assert any("Multi-objective search" in n and "3 trial(s) of the Pareto front" in n for n in t.notes)
    (tmp_path / "b").mkdir()
    single = search_table(read_sweep("dep", _store(tmp_path / "b", searched=True)), top_k=2)
    assert "Front" not in single.columns and len(single.rows) == 2


def test_multi_objective_search_end_to_end(ray_session, tmp_path, capsys):
    """A real 3-trial TPE search on mAP and CPU latency (real fit, deploy.bench at each trial's end, the test
    session's local Ray, sqlite): every trial logs its deploy/* metrics with its final epoch, Optuna's study has
    two directions and two values per trial, and the report lists the front with the latency beside the score."""
    pytest.importorskip("ray")
    from ray.tune.search.optuna import OptunaSearch

    from ssdlab.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = {"name": "mo-e2e", "experiment": str(_tiny(tmp_path)), "seeds": [0],
             "overrides": {"deploy.max_images": 4, "deploy.repeats": 2},
             "search": {"sampler": "tpe", "num_samples": 3, "seed": 0, "objectives": [M.DEPLOY_LATENCY],
                        "space": {"train.lr": {"loguniform": [1e-3, 1e-2]},
                                  "model.width_mult": {"choice": [0.5, 1.0]}}},
             "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 2,
             "tracking": {"uri": uri, "experiment": "mo", "log_checkpoints": False}}
    path = tmp_path / "mo.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    storage = tmp_path / "ray"
    assert main(["sweep", str(path), "--storage", str(storage), "--address", ray_session, "--quiet"]) == 0
    client = MlflowClient(tracking_uri=uri)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("mo").experiment_id])
            if r.data.tags.get(Tag.KIND) == "trial"]
    assert len(runs) == 3
    for r in runs:
        (point,) = client.get_metric_history(r.info.run_id, M.DEPLOY_LATENCY)
        assert point.step == 1 and point.value > 0 and r.data.metrics[M.DEPLOY_THREADS] == 1
    (state,) = list(storage.glob("mo-e2e/*/searcher-state-*.pkl"))
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(state.parent))
    study = searcher._ot_study
    assert len(study.directions) == 2 and len(study.trials) == 3
    assert all(t.values is not None and len(t.values) == 2 for t in study.trials)
    out = tmp_path / "report"
    assert main(["report", "--sweep", "mo-e2e", "--tracking-uri", uri, "--format", "md", "--out", str(out),
                 "--no-log"]) == 0
    md = (out / "report.md").read_text()
    assert "Multi-objective search" in md and "| Front |" in md and "Accuracy against speed: mo-e2e" in md
