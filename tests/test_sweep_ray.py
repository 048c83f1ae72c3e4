"""Sweeps on the real stack: local Ray (one session for the module, 2 CPUs), Ray Tune, Optuna and an
MLflow sqlite store in tmp_path, with a tiny trainable of fit's signature (fast fake epochs that
write last.pt and resume from it)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
import ray.cloudpickle  # noqa: E402

from experiments.sweep import run_sweep  # noqa: E402
from experiments.sweep_spec import load_sweep  # noqa: E402
from experiments.tracking import client_for, experiment_id  # noqa: E402
from ssd_core.errors import NonFiniteLossError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Ray workers cannot import the tests package: ship this module's functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def tiny_fit(cfg, callbacks=(), run_dir=None, resume=False):
    """fit's signature, checkpoints and report keys (`score`, `final`), no network. val/mAP50 = lr * epoch.

    lr >= 0.5 -> NonFiniteLossError at epoch 2. name 'crash' -> the worker dies (os._exit) once at
    epoch 2, flagged by a file in output.dir. `test/start_epoch` records where it resumed from."""
    from ssd_core.checkpoint import load_checkpoint, save_checkpoint

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "last.pt"
    state = load_checkpoint(last) if resume and last.exists() else {"epoch": 0, "history": []}
    start, history = state["epoch"], list(state["history"])
    for cb in callbacks:
        getattr(cb, "on_fit_start", lambda *a: None)(cfg, run_dir)
    for epoch in range(start + 1, cfg.train.epochs + 1):
        time.sleep(cfg.train.time_budget_s or 0.02)  # seconds per fake epoch
        if cfg.train.lr >= 0.5 and epoch == 2:
            raise NonFiniteLossError(f"non-finite loss at epoch {epoch} (lr {cfg.train.lr})")
        flag = Path(cfg.output.dir) / f"crashed-{cfg.train.seed}"
        if cfg.name == "crash" and epoch == 2 and not flag.exists():
            flag.parent.mkdir(parents=True, exist_ok=True)
            flag.write_text("died once")
            os._exit(1)
        metrics = {"train/loss": 1.0 / epoch, "val/mAP50": cfg.train.lr * epoch, "test/start_epoch": start,
                   "epoch": epoch, "score": cfg.train.lr * epoch, "final": float(epoch == cfg.train.epochs)}
        history.append(metrics)
        ckpt = {"model": {}, "config": cfg.model_dump(mode="json"), "class_names": [], "epoch": epoch,
                "history": history}
        save_checkpoint(ckpt, last)
        save_checkpoint(ckpt, run_dir / "best.pt")
        for cb in callbacks:
            cb.on_epoch_end(epoch, metrics, run_dir)
    for cb in callbacks:
        getattr(cb, "on_fit_end", lambda *a: None)(None)


@pytest.fixture(scope="module")
def ray_session():
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


def write_sweep(tmp_path: Path, sweep: dict) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(
        {"name": "tiny", "train": {"epochs": 4, "lr": 0.01}, "output": {"dir": str(tmp_path / "out")},
         "data": {"train_sets": ["S/train"], "val_sets": ["S/val"]}}))
    sweep = {"experiment": "base.yaml", "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, **sweep}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def runs_of(uri: str, experiment: str):
    client = client_for(uri)
    runs = client.search_runs([experiment_id(client, experiment, uri)], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ssdlab.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("ssdlab.kind") == "trial"]
    return client, parents, children


def history(client, run, key="val/mAP50"):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def test_twelve_trials_at_once_nan_and_a_killed_worker(ray_session, tmp_path):
    """12 concurrent trials (4 arms x 3 seeds) log to a fresh store through the driver: none loses
    a metric; the NaN arm fails with its reason while the others finish; the arm whose worker dies
    at epoch 2 resumes from its epoch-1 checkpoint and still has one run with one history."""
    path = write_sweep(tmp_path, {
        "name": "twelve",
        "arms": {"base": {"note": "baseline"},
                 "lr02": {"note": "higher lr", "overrides": {"train.lr": 0.02}},
                 "nan": {"note": "diverges", "overrides": {"train.lr": 0.6}},
                 "crash": {"note": "worker dies once", "overrides": {"name": "crash"}}},
        "overrides": {"train.epochs": 3},
        "seeds": [0, 1, 2],
        "resources": {"cpu": 0.16},
        "failure": {"max_failures": 1},
    })
    spec = load_sweep(path)
    result = run_sweep(spec, tiny_fit, storage=tmp_path / "ray")
    assert result.trials == 12

    client, parents, children = runs_of(spec.file.tracking.uri, "twelve")
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.data.tags["ssdlab.status"] == "finished"
    assert json.loads(parent.data.tags["ssdlab.arms"]) == ["base", "lr02", "nan", "crash"]
    assert parent.data.tags["ssdlab.baseline_arm"] == "base" and parent.data.tags["ssdlab.metric"] == "val/mAP50"
    assert len(children) == 12
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    by_arm = {}
    for r in children:
        by_arm.setdefault(r.data.tags["ssdlab.arm"], []).append(r)
    assert {a: sorted(int(r.data.tags["ssdlab.seed"]) for r in rs) for a, rs in by_arm.items()} == {
        a: [0, 1, 2] for a in ("base", "lr02", "nan", "crash")}
    for arm, lr in (("base", 0.01), ("lr02", 0.02), ("crash", 0.01)):
        for r in by_arm[arm]:
            assert r.data.tags["ssdlab.status"] == "finished" and r.info.status == "FINISHED"
            assert history(client, r) == [(e, pytest.approx(lr * e)) for e in (1, 2, 3)]  # no metric lost
            assert r.data.params["train.lr"] == str(lr) and r.data.params["train.seed"] == r.data.tags["ssdlab.seed"]
            assert r.data.tags["ssdlab.note"] and len(r.data.tags["ssdlab.config_hash"]) == 12
            assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"config.yaml", "checkpoints"}
    for r in by_arm["crash"]:  # resumed from the Tune checkpoint written after epoch 1
        assert history(client, r, "test/start_epoch") == [(1, 0), (2, 1), (3, 1)]
    for r in by_arm["nan"]:
        assert r.data.tags["ssdlab.status"] == "failed" and r.info.status == "FAILED"
        assert r.data.tags["ssdlab.error"].startswith("NonFiniteLossError: non-finite loss at epoch 2")
        assert history(client, r) == [(1, pytest.approx(0.6))]


DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.test_sweep_ray import tiny_fit
from experiments.sweep import run_sweep
from experiments.sweep_spec import load_sweep
run_sweep(load_sweep(sys.argv[2]), tiny_fit, address=sys.argv[3], storage=sys.argv[4])
"""


def test_killed_driver_resumes_without_duplicate_runs(ray_session, tmp_path):
    """A search sweep (TPE + ASHA) whose driver is SIGKILLed mid-sweep, then `--resume`d: every
    trial still has exactly one MLflow run with one continuous history, and ASHA's stops are
    tagged early_stopped, not passed off as finished."""
    path = write_sweep(tmp_path, {
        "name": "resumable",
        "overrides": {"train.time_budget_s": 0.4},  # the tiny trainable's seconds per epoch
        "search": {"sampler": "tpe", "num_samples": 4, "seed": 1,
                   "space": {"train.lr": {"loguniform": [1.0e-3, 1.0e-1]}}},
        "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}},
        "resources": {"cpu": 1},
    })
    spec = load_sweep(path)
    uri = spec.file.tracking.uri
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO), str(path), ray_session, str(tmp_path / "ray")],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 150
        while time.time() < deadline:  # kill once some trial has logged two epochs
            time.sleep(1)
            if (tmp_path / "mlflow.db").exists():
                try:
                    client, _, children = runs_of(uri, "resumable")
                except Exception:  # the driver is still creating the store
                    continue
                if any(len(history(client, r)) >= 2 for r in children):
                    break
        assert driver.poll() is None, "the driver ended before it could be killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    _, _, before = runs_of(uri, "resumable")
    assert 1 <= len(before) < 4 or any(r.data.tags["ssdlab.status"] == "running" for r in before)

    result = run_sweep(spec, tiny_fit, resume=True, storage=tmp_path / "ray")
    assert result.trials == 4
    client, parents, children = runs_of(uri, "resumable")
    assert len(parents) == 1 and parents[0].data.tags["ssdlab.status"] == "finished"
    lost = [r for r in children if r.data.tags["ssdlab.status"] == "lost"]  # see SweepTracker.mark_lost
    assert all(r.info.status == "KILLED" and r.data.tags["ssdlab.error"].startswith("lost:") for r in lost)
    children = [r for r in children if r.data.tags["ssdlab.status"] != "lost"]
    assert len(children) == 4 and len({r.data.tags["ssdlab.trial_id"] for r in children}) == 4
    for r in children:
        steps = [s for s, _ in history(client, r)]
        assert steps == list(range(1, len(steps) + 1)), steps  # continuous, no step twice
        status = r.data.tags["ssdlab.status"]
        lr = float(r.data.params["train.lr"])
        assert 1e-3 <= lr <= 1e-1 and json.loads(r.data.tags["ssdlab.searched"]) == ["train.lr"]
        if status == "finished":
            assert steps[-1] == 4
        else:
            assert status == "early_stopped" and steps[-1] < 4
    assert sum(r.data.tags["ssdlab.status"] == "early_stopped" for r in children) >= 1
