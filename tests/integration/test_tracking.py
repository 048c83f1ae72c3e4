"""experiments.tracking: store creation under a lock, the train callback, the sweep's single writer."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from experiments.tracking import writer
from experiments.tracking.store import client_for, ensure_store, experiment_id
from experiments.tracking.sweep_tracker import SweepTracker
from experiments.tracking.train_run import MLflowCallback
from experiments.tracking.writer import find_run
from ssd_core.config import ExperimentConfig, config_hash, flatten

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def uri(tmp_path) -> str:
    """A new sqlite store, its schema copied in (tests/support/stores.py): these tests are about what is written."""
    from tests.support.stores import empty_store

    return empty_store(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_fresh_store_opened_by_many_processes_at_once(tmp_path):
    """Three processes race to open one fresh sqlite store; the lock lets exactly one migrate it."""
    uri = f"sqlite:///{tmp_path / 'race' / 'mlflow.db'}"
    code = ("import sys; from experiments.tracking.store import client_for, experiment_id;"
            "c = client_for(sys.argv[1]); eid = experiment_id(c, 'race', sys.argv[1]);"
            "c.create_run(eid, run_name=sys.argv[2])")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, f"p{i}"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(3)]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, outs
    client = client_for(uri)
    runs = client.search_runs([experiment_id(client, "race", uri)])
    assert sorted(r.info.run_name for r in runs) == ["p0", "p1", "p2"]


def test_ensure_store_leaves_servers_alone_and_is_idempotent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # no file yet: ensure_store creates the store
    assert ensure_store("http://tracking.invalid:5000") == "http://tracking.invalid:5000"  # nothing to create
    assert ensure_store(uri) == uri == ensure_store(uri)
    assert Path(uri[len("sqlite:///"):]).is_file()


def test_params_are_text_and_truncated():
    params = writer.params_of({"a": 1, "b": "x" * 600, "c": [1, 2], "d": None, "e": True})
    got = {p.key: p.value for p in params}
    assert got["a"] == "1" and got["c"] == "[1, 2]" and got["d"] == "None" and got["e"] == "True"
    assert len(got["b"]) == writer.PARAM_MAX_CHARS


def test_metrics_skip_non_numbers():
    ms = writer.metrics_of({"train/loss": 1.5, "note": "x", "flag": True, "n": 3}, step=4)
    assert {(m.key, m.value, m.step) for m in ms} == {("train/loss", 1.5, 4), ("n", 3.0, 4)}


def test_log_batch_chunks_past_mlflow_limits(uri):
    client = client_for(uri)
    run_id = client.create_run(experiment_id(client, "chunks", uri)).info.run_id
    params = writer.params_of({f"p{i}": i for i in range(250)})
    metrics = writer.metrics_of({f"m{i}": float(i) for i in range(1500)}, step=0)
    writer.log_batch(client, run_id, metrics=metrics, params=params, tags={f"t{i}": i for i in range(120)})
    data = client.get_run(run_id).data
    assert len(data.params) == 250 and len(data.metrics) == 1500
    assert len([t for t in data.tags if t.startswith("t")]) == 120 and data.metrics["m1499"] == 1499.0


def _fit_like(cb, cfg, run_dir: Path, epochs, best=True):
    cb.on_fit_start(cfg, run_dir)
    for e in epochs:
        cb.on_epoch_end(e, {"train/loss": 1.0 / (e + 1), "val/mAP50": 0.1 * e}, run_dir)
    if best:
        from ssd_core.checkpoint import save_checkpoint
        save_checkpoint({"model": {"w": torch.ones(2)}, "config": cfg.model_dump(mode="json"), "class_names": ["a"],
                         "optimizer": {"state": {}, "param_groups": []}, "epoch": 2}, run_dir / "best.pt")
    cb.on_fit_end(SimpleNamespace(run_dir=run_dir))


def test_mlflow_callback_logs_one_train_run(uri, tmp_path):
    cfg = ExperimentConfig(name="cb")
    _fit_like(MLflowCallback(uri, "train-exp", tags={"ssdlab.note": "hello"}), cfg, tmp_path / "run", range(3))
    client = client_for(uri)
    (run,) = client.search_runs([experiment_id(client, "train-exp", uri)])
    tags, params = run.data.tags, run.data.params
    assert run.info.status == "FINISHED" and run.info.run_name == "cb"
    assert tags["ssdlab.kind"] == "train" and tags["ssdlab.status"] == "finished"
    assert tags["ssdlab.config_hash"] == config_hash(cfg) and tags["ssdlab.note"] == "hello"
    assert params["train.lr"] == str(cfg.train.lr) and len(params) == len(flatten(cfg))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mAP50")] == [0, 1, 2]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"config.yaml", "checkpoints"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    logged = torch.load(client.download_artifacts(run.info.run_id, "checkpoints/best.pt", str(tmp_path)),
                        weights_only=True)
    assert "optimizer" not in logged and logged["epoch"] == 2 and torch.equal(logged["model"]["w"], torch.ones(2))
    # artifacts live next to the database, not in the working directory
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_mlflow_callback_resume_continues_the_same_run(uri, tmp_path):
    cfg = ExperimentConfig(name="cb")
    first = MLflowCallback(uri, "resume-exp", log_checkpoint=False)
    first.on_fit_start(cfg, tmp_path / "run")
    for e in range(3):
        first.on_epoch_end(e, {"train/loss": float(e)}, None)  # killed here: never ends
    again = MLflowCallback(uri, "resume-exp", log_checkpoint=False, resume=True)
    _fit_like(again, cfg, tmp_path / "run", range(1, 5), best=False)  # replays epochs 1, 2
    client = client_for(uri)
    (run,) = client.search_runs([experiment_id(client, "resume-exp", uri)])
    hist = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in hist) == [0, 1, 2, 3, 4]
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == [0.0, 1.0, 2.0, 1 / 4, 1 / 5]


def test_mlflow_callback_error_marks_failed(uri, tmp_path):
    cb = MLflowCallback(uri, "fail-exp")
    cb.on_fit_start(ExperimentConfig(), tmp_path / "run")
    cb.on_fit_error(FloatingPointError("loss is nan at epoch 2"))
    client = client_for(uri)
    (run,) = client.search_runs([experiment_id(client, "fail-exp", uri)])
    assert run.info.status == "FAILED" and run.data.tags["ssdlab.status"] == "failed"
    assert run.data.tags["ssdlab.error"] == "FloatingPointError: loss is nan at epoch 2"


def test_sweep_tracker_identity_survives_a_new_driver(uri):
    tags = {"ssdlab.arms": '["a", "b"]', "ssdlab.baseline_arm": "a", "ssdlab.metric": "val/mAP50",
            "ssdlab.search_space": "{}"}
    tr = SweepTracker(uri, "sw", "demo", "/runs/ray/demo", parent_tags=tags, parent_params={"sweep.seeds": "[0]"})
    tr.child("t1", params={"train.lr": 0.1}, tags={"ssdlab.arm": "a", "ssdlab.seed": 0})
    assert [tr.log_epoch("t1", e, {"val/mAP50": e / 10}) for e in (0, 1, 1)] == [True, True, False]
    # the driver dies; Ray Tune unpickles the callback in a new driver that knows nothing
    tr2 = pickle.loads(pickle.dumps(tr))
    assert tr2.parent_id is None
    tr2.child("t1", params={"train.lr": 0.1}, tags={"ssdlab.arm": "a", "ssdlab.seed": 0})
    assert [tr2.log_epoch("t1", e, {"val/mAP50": e / 10}) for e in (0, 1, 2, 3)] == [False, False, True, True]
    tr2.end_child("t1", "early_stopped", config_yaml="a: 1\n")
    tr2.child("t2", tags={"ssdlab.arm": "b"})
    tr2.end_child("t2", "failed", error="NonFiniteLossError: loss is nan")
    tr2.finish()

    client = client_for(uri)
    eid = experiment_id(client, "sw", uri)
    runs = client.search_runs([eid])
    assert len(runs) == 3  # one parent + two children, nothing duplicated
    parent = find_run(client, eid, {"ssdlab.kind": "sweep", "ssdlab.sweep": "demo"})
    assert parent.data.tags["ssdlab.arms"] == '["a", "b"]' and parent.info.status == "FINISHED"
    assert parent.data.params == {"sweep.seeds": "[0]"}
    c1 = find_run(client, eid, {"ssdlab.trial_id": "t1"})
    c2 = find_run(client, eid, {"ssdlab.trial_id": "t2"})
    assert c1.data.tags["mlflow.parentRunId"] == parent.info.run_id == c2.data.tags["mlflow.parentRunId"]
    assert c1.data.tags["ssdlab.status"] == "early_stopped" and c1.info.status == "FINISHED"
    assert c2.data.tags["ssdlab.status"] == "failed" and c2.info.status == "FAILED"
    assert c2.data.tags["ssdlab.error"] == "NonFiniteLossError: loss is nan"
    assert c1.data.params == {"train.lr": "0.1"} and c1.data.tags["ssdlab.kind"] == "trial"
    for run in (parent, c1, c2):  # provenance on the trial runs too, not only on the parent
        assert len(run.data.tags["mlflow.source.git.commit"]) == 40 and run.data.tags["ssdlab.git_dirty"] in ("true", "false")
        assert "torch" in json.loads(run.data.tags["ssdlab.versions"]) and run.data.tags["ssdlab.command"]
    assert [m.step for m in client.get_metric_history(c1.info.run_id, "val/mAP50")] == [0, 1, 2, 3]
    assert [a.path for a in client.list_artifacts(c1.info.run_id)] == ["config.yaml"]


def test_parent_identity_includes_the_storage_path(uri):
    SweepTracker(uri, "sw", "demo", "/a").start()
    SweepTracker(uri, "sw", "demo", "/a").start()
    SweepTracker(uri, "sw", "demo", "/b").start()
    client = client_for(uri)
    runs = client.search_runs([experiment_id(client, "sw", uri)])
    assert sorted(r.data.tags["ssdlab.storage"] for r in runs) == ["/a", "/b"]


def test_system_metrics_cpu_percent_measures_the_work_since_the_last_call():
    """psutil's cpu_percent(interval=None) compares with the previous call on the same Process object: a new
    object per call always said 0.0 (every trial of the BCCD sweeps logged sys/cpu_percent 0)."""
    import time

    from experiments.sweep.worker import system_metrics

    system_metrics()
    end = time.process_time() + 0.3
    while time.process_time() < end:  # 0.3 s of CPU on this thread
        sum(i * i for i in range(1000))
    m = system_metrics()
    assert m["sys/cpu_percent"] > 20 and m["sys/rss_mb"] > 10


def test_a_server_stopped_mid_answer_is_an_outage_to_wait_out(monkeypatch):
    """A tracking server killed while it sends a response leaves the client a body cut short (requests'
    ChunkedEncodingError inside MLflow's MlflowException): the store did not answer, so a write waits and
    is tried again, like a refused connection; it is not a bad request to raise at once."""
    import socket
    import threading

    from mlflow.tracking import MlflowClient

    from experiments.tracking import store
    from experiments.tracking.store import patient, scoped_env, unreachable

    body = json.dumps({"experiment": {"experiment_id": "0", "name": "Default", "artifact_location": "a",
                                      "lifecycle_stage": "active"}}).encode()
    listener = socket.create_server(("127.0.0.1", 0))
    served = []

    def serve():
        while len(served) < 3:
            con, _ = listener.accept()
            with con:
                con.recv(65536)
                if len(served) >= 2:  # the third answer is whole
                    con.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                else:  # the first two stop mid-answer: a chunk announced, never sent, the socket closed
                    con.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n2\r\n")
            served.append(1)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setattr(store, "RETRY_S", 0.05)
    with scoped_env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}):
        with pytest.raises(Exception) as cut:
            client.get_experiment("0")
        assert unreachable(cut.value), repr(cut.value)
        assert patient(client.get_experiment, "0", wait_s=10).name == "Default"  # the second cut waited out
    server.join(5)
    assert len(served) == 3
