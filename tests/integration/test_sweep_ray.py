"""Sweeps on the real stack: local Ray (the test session's, 2 CPUs: conftest's ray_session), Ray Tune, Optuna and an
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
import ray.cloudpickle  # noqa: E402, F811 (the submodule, bound onto the importorskip'd module)

from experiments.schema import Tag  # noqa: E402
from experiments.sweep.driver import run_sweep  # noqa: E402
from experiments.sweep.validate import load_sweep  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# Ray workers cannot import the tests package: ship this module's functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
from tests.support.drivers import KILL_DRIVER  # noqa: E402
from tests.support.fake_fit import history, runs_of, tiny_fit, write_sweep  # noqa: E402


def test_eight_trials_at_once_nan_and_a_killed_worker(ray_session, tmp_path):
    """8 concurrent trials (4 arms x 2 seeds) log to a fresh store through the driver: none loses
    a metric; the NaN arm fails with its reason while the others finish; the arm whose worker dies
    at epoch 2 resumes from its epoch-1 checkpoint and still has one run with one history."""
    path = write_sweep(tmp_path, {
        "name": "eight",
        "arms": {"base": {"note": "baseline"},
                 "lr02": {"note": "higher lr", "overrides": {"train.lr": 0.02}},
                 "nan": {"note": "diverges", "overrides": {"train.lr": 0.6}},
                 "crash": {"note": "worker dies once", "overrides": {"name": "crash"}}},
        "overrides": {"train.epochs": 3},
        "seeds": [0, 1],
        "resources": {"cpu": 0.25},
        "failure": {"max_failures": 1},
    }, store=True)
    spec = load_sweep(path)
    result = run_sweep(spec, tiny_fit, storage=tmp_path / "ray")
    assert result.trials == 8
    assert result.counts == {"failed": 2, "finished": 6}  # what `ssdlab sweep` prints, exiting 1
    assert sorted(tid for tid, _, _ in result.failures) == sorted(
        r.data.tags["ssdlab.trial_id"] for r in runs_of(spec.file.tracking.uri, "eight")[2]
        if r.data.tags["ssdlab.arm"] == "nan")
    assert all(err.startswith("NonFiniteLossError: non-finite loss at epoch 2") for _, _, err in result.failures)

    client, parents, children = runs_of(spec.file.tracking.uri, "eight")
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.data.tags["ssdlab.status"] == "finished"
    assert json.loads(parent.data.tags["ssdlab.counts"]) == {"failed": 2, "finished": 6}
    assert parent.data.tags["ssdlab.error"].startswith("2 of 8 trials failed: ")
    assert json.loads(parent.data.tags["ssdlab.arms"]) == ["base", "lr02", "nan", "crash"]
    assert parent.data.tags["ssdlab.baseline_arm"] == "base" and parent.data.tags["ssdlab.metric"] == "val/mAP50"
    # the parent's summary: the best trial by the schema's rule (lr02 scores highest), registered as a model
    best = client.get_run(parent.data.tags[Tag.BEST_RUN])
    assert best.data.tags[Tag.ARM] == "lr02" and parent.data.tags[Tag.BEST_TRIAL] == best.data.tags[Tag.TRIAL_ID]
    name, version = parent.data.tags[Tag.REGISTERED_MODEL].split("/")
    mv = client.get_model_version(name, version)
    assert name == "eight" and mv.run_id == best.info.run_id and mv.source.startswith("models:/m-")  # a pyfunc model
    assert str(client.get_model_version_by_alias(name, "best").version) == version
    assert parent.data.metrics["score"] == pytest.approx(0.06)  # the best trial's score on the parent row
    assert all("score" in r.data.metrics for r in children if r.data.tags[Tag.STATUS] == "finished")
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"sweep.yaml"}
    # provenance and descriptions
    assert len(parent.data.tags[Tag.GIT_COMMIT]) == 40 and parent.data.tags[Tag.GIT_DIRTY] in ("true", "false")
    assert "torch" in json.loads(parent.data.tags[Tag.VERSIONS]) and parent.data.tags[Tag.DESCRIPTION]
    assert len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    by_arm = {}
    for r in children:
        by_arm.setdefault(r.data.tags["ssdlab.arm"], []).append(r)
    assert {a: sorted(int(r.data.tags["ssdlab.seed"]) for r in rs) for a, rs in by_arm.items()} == {
        a: [0, 1] for a in ("base", "lr02", "nan", "crash")}
    for arm, lr in (("base", 0.01), ("lr02", 0.02), ("crash", 0.01)):
        for r in by_arm[arm]:
            assert r.data.tags["ssdlab.status"] == "finished" and r.info.status == "FINISHED"
            assert history(client, r) == [(e, pytest.approx(lr * e)) for e in (1, 2, 3)]  # no metric lost
            assert r.data.params["train.lr"] == str(lr) and r.data.params["train.seed"] == r.data.tags["ssdlab.seed"]
            assert r.data.tags["ssdlab.note"] and len(r.data.tags["ssdlab.config_hash"]) == 12
            assert r.data.tags[Tag.DESCRIPTION].startswith(f"grid trial: arm {arm} (")
            assert len(history(client, r, "sys/rss_mb")) == 3  # system metrics, every epoch
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
from tests.support.fake_fit import tiny_fit
from experiments.sweep.driver import run_sweep
from experiments.sweep.validate import load_sweep
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
    }, store=True)
    spec = load_sweep(path)
    uri = spec.file.tracking.uri
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO), str(path), ray_session, str(tmp_path / "ray")],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 150
        while time.time() < deadline:  # kill once some trial has logged two epochs
            time.sleep(0.5)
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
            assert r.info.run_name.endswith(" [early-stopped]")  # visible in the runs list
    assert sum(r.data.tags["ssdlab.status"] == "early_stopped" for r in children) >= 1
    _assert_one_study_holds_every_trial(tmp_path, parents[0], children)


def _assert_one_study_holds_every_trial(tmp_path, parent, children):
    """The search's Optuna study (optuna.db beside mlflow.db, experiments/sweep/study.py) survived the kill as ONE
    study: each ended trial is in it once, COMPLETE with the value Tune reported (the trial's score: its best
    val metric so far), its lr equal to the MLflow run's; a suggestion the killed driver never saved is FAIL,
    not left RUNNING; best_hyperparameters.yaml holds the best trial's lr, and `-o @FILE` reads it."""
    import optuna
    from optuna.trial import TrialState

    from ssd_core.config import parse_overrides

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(url)
    assert summary.study_name == f"resumable/search/{parent.info.run_id[:8]}"
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    assert study.user_attrs["mlflow_parent_run"] == parent.info.run_id
    trials = study.get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and all(t.state == TrialState.FAIL for t in trials if t not in complete)
    for t in complete:  # the params hold the exact float (experiments.tracking.writer.param_text)
        (run,) = [r for r in children if float(r.data.params["train.lr"]) == t.params["train.lr"]]
        assert t.value == pytest.approx(run.data.metrics["score"], abs=1e-9)
    best = max(children, key=lambda r: (r.data.tags["ssdlab.status"] == "finished", r.data.metrics["score"]))
    text = (tmp_path / "ray" / "resumable" / "search" / "best_hyperparameters.yaml").read_text()
    assert float(yaml.safe_load(text)["train.lr"]) == pytest.approx(float(best.data.params["train.lr"]))
    assert parse_overrides([f"@{tmp_path / 'ray' / 'resumable' / 'search' / 'best_hyperparameters.yaml'}"]) == \
        {"train.lr": pytest.approx(float(best.data.params["train.lr"]))}






def test_driver_killed_right_after_a_report_resumes_each_trial_from_its_last_pt(ray_session, tmp_path):
    """The driver dies (SIGKILL, injected by a hook, see kill_driver_after_logging) right after a trial's
    epoch k was reported and logged, with epoch k + 1 on the trial's last.pt but never seen by the driver
    or saved in Tune's state. After `--resume` every trial has one run whose MLflow steps are 1..N once
    each, every step carries the attempt that trained it (the attempt id logged per epoch equals
    last.pt's history and metrics.jsonl, step by step: nothing spliced from two attempts), and the
    killed trial went on from its last.pt (epoch k + 1 replayed from its history), not from scratch."""
    from ssd_core.checkpoint import load_checkpoint

    epochs, k = 8, 2
    path = write_sweep(tmp_path, {
        "name": "kill-after-report", "arms": {"a": {}}, "seeds": [0, 1],
        "overrides": {"train.epochs": epochs, "train.time_budget_s": 0.3},  # seconds per fake epoch
        "resources": {"cpu": 1},
    }, store=True)
    spec = load_sweep(path)
    uri, storage = spec.file.tracking.uri, tmp_path / "ray"
    driver = subprocess.run([sys.executable, "-c", KILL_DRIVER, str(REPO), str(path), ray_session, str(storage), str(k)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})  # Tune's state on disk early
    assert driver.returncode == -signal.SIGKILL, f"the hook did not kill the driver: {driver.stderr[-3000:]}"
    client, _, before = runs_of(uri, "kill-after-report")
    logged = {r.data.tags["ssdlab.trial_id"]: [s for s, _ in history(client, r, "test/attempt")] for r in before}
    victim = next(t for t, steps in logged.items()
                  if len(steps) >= k and (storage / spec.name / "trials" / t / "last.pt").is_file()
                  and load_checkpoint(storage / spec.name / "trials" / t / "last.pt")["epoch"] == len(steps) + 1)

    result = run_sweep(spec, tiny_fit, resume=True, storage=storage)
    client, parents, children = runs_of(uri, "kill-after-report")
    assert result.trials == 2 and result.counts == {"finished": 2} and result.failures == []
    assert len(parents) == 1 and json.loads(parents[0].data.tags["ssdlab.counts"]) == {"finished": 2}
    ids = [r.data.tags["ssdlab.trial_id"] for r in children]
    assert len(children) == len(set(ids)) == 2 and set(logged) <= set(ids)  # one run per trial, the same runs
    for r in children:
        assert r.data.tags["ssdlab.status"] == "finished" and r.info.status == "FINISHED"
        run_dir = storage / spec.name / "trials" / r.data.tags["ssdlab.trial_id"]
        kept = load_checkpoint(run_dir / "last.pt")["history"]
        jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        attempts = history(client, r, "test/attempt")
        assert [s for s, _ in attempts] == list(range(1, epochs + 1))  # steps 1..N, once each
        assert attempts == [(m["epoch"], m["test/attempt"]) for m in kept]  # each step from the attempt on last.pt
        assert jsonl == kept  # metrics.jsonl and the checkpoint history agree
        assert history(client, r) == [(e, pytest.approx(0.01 * e)) for e in range(1, epochs + 1)]
    (cut,) = [r for r in children if r.data.tags["ssdlab.trial_id"] == victim]
    by_attempt = [a for _, a in history(client, cut, "test/attempt")]
    first_attempt = by_attempt.count(by_attempt[0])
    assert first_attempt == len(logged[victim]) + 1 < epochs  # MLflow had k; last.pt's k + 1 was replayed
    assert history(client, cut, "test/start_epoch")[first_attempt] == (first_attempt + 1, first_attempt)


def test_a_yolo_dataset_trains_through_ray_and_each_trial_logs_its_dataset(ray_session, tmp_path):
    """The real fit in a Ray worker on a YOLO set whose data.root is its data.yaml (a file, which the worker's
    data-root check accepts for format yolo); the child run carries its splits as MLflow dataset inputs, sent
    from the worker with its results (job.DATA_KEY)."""
    from tests.unit.test_data_formats import write_yolo

    data = write_yolo(tmp_path / "pets", objects={f"i{k}": [(k % 2, (8, 6, 40, 30))] for k in range(10)})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "name": "pets", "model": {"backbone": "tiny", "image_size": 48},
        "data": {"format": "yolo", "root": str(data), "train_sets": ["train"], "holdout": 0.3},
        "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "log_every": 1000},
        "output": {"dir": str(tmp_path / "out")}}))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "pets", "experiment": "base.yaml", "arms": {"a": {"note": "one"}},
                                     "seeds": [0], "resources": {"cpu": 0.5},
                                     "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "pets"}}))
    result = run_sweep(load_sweep(sweep), storage=tmp_path / "ray")
    assert result.counts == {"finished": 1}, result.failures
    client, _, (child,) = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "pets")
    contexts = {i.tags[0].value: i.dataset.name for i in child.inputs.dataset_inputs}
    assert set(contexts) == {"train", "val"} and "(val slice)" in contexts["val"]
    assert child.data.tags[Tag.DATA_SKIPPED] == "0"
