"""A shared MLflow tracking server on PostgreSQL, as docs/cluster.md runs one (`ssdlab server`: `mlflow
server --backend-store-uri postgresql://... --serve-artifacts` on 127.0.0.1 and a free port), with a fresh
database per test, dropped afterwards. Skipped with the reason when PostgreSQL (127.0.0.1:5432, trust
auth) or its driver is not there.

* the shrunken demo sweep (real fit, on the test session's local Ray) against the server: its report equals
  the same runs read from sqlite;
  `ssdlab train`, `runs` and `ui` against the server;
* two sweeps at once (the tiny trainable) with reports read while they write, and the server stopped for
  a few seconds mid-sweep: no errors, every metric point written (counted in PostgreSQL)."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

psycopg = pytest.importorskip("psycopg", reason="psycopg (PostgreSQL driver) is not installed")
ray = pytest.importorskip("ray")

from experiments.schema import Tag  # noqa: E402
from ssdlab.cli import main  # noqa: E402
from tests.support.configs import shrunken_demo_sweep  # noqa: E402
from tests.support.drivers import DRIVER  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PG = "postgresql://postgres@127.0.0.1:5432"




@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database for one test (dropped afterwards); its SQLAlchemy URI."""
    name = f"ssdlab_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 as postgres: {str(exc).strip()[:200]}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{PG}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Server:
    """`ssdlab server` on 127.0.0.1:<port>; stop() kills the process group it started."""

    def __init__(self, backend: str, artifacts: Path, log: Path, port: int | None = None):
        self.backend, self.artifacts, self.log = backend, artifacts, log
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "Server":
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ssdlab", "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", str(self.artifacts), "--port", str(self.port), "--workers", "1"],
            cwd=REPO, env=env, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"MLflow server not up after {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its uvicorn worker: the group it started
            self.proc.wait(10)


@pytest.fixture
def server(pg_database, tmp_path):
    s = Server(pg_database, tmp_path / "artifacts", tmp_path / "server.log").start()
    try:
        yield s
    finally:
        s.stop()


# --------------------------------------------------------------------------- the demo sweep on the server


def copy_runs(src_uri: str, dst_uri: str, experiment: str) -> dict[str, str]:
    """Every run of `experiment` from one store into another, as it is: tags (parent ids mapped), params,
    full metric histories, artifacts, times and status. Returns {source run id: copy's run id}."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from experiments.tracking.store import client_for, experiment_id
    from experiments.tracking.writer import log_batch

    src, dst = MlflowClient(tracking_uri=src_uri), client_for(dst_uri)
    exp = src.get_experiment_by_name(experiment)
    dst_exp = experiment_id(dst, experiment, dst_uri)
    runs = src.search_runs([exp.experiment_id], max_results=10_000)
    ids: dict[str, str] = {}
    for r in sorted(runs, key=lambda r: Tag.PARENT in r.data.tags):  # parents first
        tags = {k: ids.get(v, v) for k, v in r.data.tags.items()}
        new = dst.create_run(dst_exp, start_time=r.info.start_time, tags=tags, run_name=r.info.run_name).info.run_id
        ids[r.info.run_id] = new
        metrics = [m for key in r.data.metrics for m in src.get_metric_history(r.info.run_id, key)]
        log_batch(dst, new, metrics=metrics, params=[Param(k, v) for k, v in r.data.params.items()])
        with tempfile.TemporaryDirectory() as tmp:
            if src.list_artifacts(r.info.run_id):
                local = src.download_artifacts(r.info.run_id, "", tmp)
                dst.log_artifacts(new, local)
        dst.set_terminated(new, r.info.status, end_time=r.info.end_time)
    for r in runs:  # tags that name other runs (the parent's best run)
        for k, v in r.data.tags.items():
            if v in ids and k != Tag.PARENT:
                dst.set_tag(ids[r.info.run_id], k, ids[v])
    return ids


def demo_sweep(tmp_path: Path, uri: str) -> Path:
    """The shrunken demo sweep of tests/integration/test_demo_e2e.py, 1 epoch, checkpoints logged."""
    return shrunken_demo_sweep(tmp_path, uri, "e2e-server", epochs=1, log_checkpoints=True)


def test_demo_sweep_on_a_postgres_server_reports_as_from_sqlite(server, ray_session, tmp_path, capsys):
    from reports.report import build_report

    t0 = time.time()
    path = demo_sweep(tmp_path, server.uri)
    assert main(["sweep", str(path), "--storage", str(tmp_path / "ray"), "--address", ray_session]) == 0
    t_sweep = time.time() - t0
    sqlite = f"sqlite:///{tmp_path / 'copy.db'}"
    ids = copy_runs(server.uri, sqlite, "e2e-server")
    assert len(ids) == 7  # the parent + 6 trials

    from_server = build_report("e2e-server", server.uri)
    from_sqlite = build_report("e2e-server", sqlite)
    back = {new: old for old, new in ids.items()}

    def cells(report):
        return [(t.title, list(t.columns), [[back.get(str(c), str(c)) for c in row] for row in t.rows])
                for t in report.tables]

    assert [t.title for t in from_server.tables] == [t.title for t in from_sqlite.tables]
    assert len(from_server.tables) >= 4  # summary, ablation, search, per-class AP at least
    assert cells(from_server) == cells(from_sqlite)  # same tables, same numbers
    md_server, md_sqlite = from_server.markdown(), from_sqlite.markdown()
    for new, old in back.items():
        md_sqlite = md_sqlite.replace(new, old)
    assert md_server == md_sqlite
    assert sorted(from_server.plots) == sorted(from_sqlite.plots)
    assert len(from_server.data.detections) == len(from_sqlite.data.detections) > 0  # the bootstrap's artifacts

    # the other commands on the server
    capsys.readouterr()
    assert main(["report", "--sweep", "e2e-server", "--tracking-uri", server.uri, "--no-plots", "--no-log",
                 "--out", str(tmp_path / "report")]) == 0
    assert "Experiment summary" in (tmp_path / "report" / "report.md").read_text()
    capsys.readouterr()
    assert main(["runs", "--sweep", "e2e-server", "--tracking-uri", server.uri]) == 0
    runs = capsys.readouterr().out
    assert sum(1 for line in runs.splitlines() if "e2e-server" in line.split()[:2]) == 6, runs
    assert main(["ui", "--tracking-uri", server.uri]) == 0
    assert capsys.readouterr().out.strip().startswith(f"MLflow UI: {server.uri}")
    from tests.support.configs import tiny_yaml

    cfg = tiny_yaml(tmp_path)
    assert main(["train", str(cfg), "-o", "train.epochs=1", "--tracking-uri", server.uri]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cli-test").experiment_id])
    assert run.data.tags[Tag.KIND] == "train" and run.info.status == "FINISHED"
    assert "checkpoints" in {a.path for a in client.list_artifacts(run.info.run_id)}
    print(f"\nFIGURES demo sweep on the PostgreSQL server: {t_sweep:.0f} s; report from the server == report "
          f"from sqlite: {len(from_server.tables)} tables, {sum(len(t.rows) for t in from_server.tables)} rows, "
          f"{len(from_server.plots)} plots")


# --------------------------------------------------------------------------- concurrency and an outage



def tiny_sweep(tmp_path: Path, name: str, uri: str, epochs: int) -> Path:
    (tmp_path / f"{name}.base.yaml").write_text(yaml.safe_dump(
        {"name": "tiny", "train": {"epochs": epochs, "lr": 0.01, "time_budget_s": 0.4},
         "output": {"dir": str(tmp_path / "out")}, "data": {"train_sets": ["S/train"], "val_sets": ["S/val"]}}))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "experiment": f"{name}.base.yaml", "arms": {"a": {}},
                                    "seeds": [0, 1], "resources": {"cpu": 0.5},
                                    "tracking": {"uri": uri, "experiment": "shared"}}, sort_keys=False))
    return path


def points(db_uri: str) -> dict[tuple[str, str], list[int]]:
    """(trial id, metric key) -> the steps stored, counted in PostgreSQL itself."""
    with psycopg.connect(db_uri) as con:
        rows = con.execute("SELECT t.value, m.key, m.step FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
                           "AND t.key = %s ORDER BY m.step", (Tag.TRIAL_ID,)).fetchall()
    out: dict[tuple[str, str], list[int]] = {}
    for tid, key, step in rows:
        out.setdefault((tid, key), []).append(int(step))
    return out


def test_two_sweeps_at_once_reports_while_writing_and_a_server_outage(server, pg_database, ray_session, tmp_path):
    """Two sweeps log to one server at once while reports read it; mid-sweep the server is killed and
    started again a few seconds later. Both sweeps finish without an error, the trials went on during the
    outage (one attempt each, epochs reported while the server was down), and PostgreSQL holds every
    metric point exactly once."""
    from reports.load import read_sweep

    epochs = 20
    paths = [tiny_sweep(tmp_path, name, server.uri, epochs) for name in ("left", "right")]
    logs = [tmp_path / f"{p.stem}.log" for p in paths]
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO), "sweep", str(p), "--address", ray_session,
                                 "--storage", str(tmp_path / "ray")], cwd=tmp_path, stdout=open(log, "w"),
                                stderr=subprocess.STDOUT) for p, log in zip(paths, logs)]
    reads = errors = 0
    outage = None
    try:
        deadline = time.time() + 200
        while time.time() < deadline and any(d.poll() is None for d in drivers):
            time.sleep(0.5)
            if outage is None:
                try:  # a report read while both sweeps write
                    logged = [read_sweep(n, server.uri, curves=True, detections=False) for n in ("left", "right")]
                    reads += 1
                except Exception as exc:  # the parents may not exist yet in the first moments
                    if reads:
                        errors += 1
                        print("report read failed:", exc)
                    continue
                if all(len(d.runs) == 2 and (d.runs["last_step"] >= 2).all() for d in logged):
                    server.stop()  # the outage: both sweeps mid-training
                    outage = [time.time()]
                    time.sleep(3)
                    server.start()
                    outage.append(time.time())
        codes = [d.wait(240) for d in drivers]
    finally:
        for d in drivers:
            if d.poll() is None:
                d.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], [t[-3000:] for t in texts]
    assert outage is not None and reads >= 1 and errors == 0
    assert all("did not answer" in t and "answers again" in t for t in texts), [t[-2000:] for t in texts]

    stored = points(pg_database)
    trials = {tid for tid, _ in stored}
    assert len(trials) == 4
    expected = 0
    for (tid, key), steps in stored.items():
        assert steps == list(range(1, epochs + 1)), (tid, key, steps)  # each point once, none lost
        expected += epochs
    keys = {key for _, key in stored}
    assert {"train/loss", "val/mAP50", "test/start_epoch", "test/attempt"} <= keys
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)
    down_ms = (int(outage[0] * 1000), int(outage[1] * 1000))
    during = 0
    for tid in trials:
        (run,) = client.search_runs([client.get_experiment_by_name("shared").experiment_id],
                                    filter_string=f"tags.`{Tag.TRIAL_ID}` = '{tid}'")
        assert run.data.tags[Tag.STATUS] == "finished"
        attempts = client.get_metric_history(run.info.run_id, "test/attempt")
        assert len({m.value for m in attempts}) == 1  # the trial went on: one attempt, never restarted
        during += sum(down_ms[0] <= m.timestamp <= down_ms[1]
                      for m in client.get_metric_history(run.info.run_id, "val/mAP50"))
    assert during >= 1  # epochs reported while the server was down, written when it came back
    total = sum(len(s) for s in stored.values())
    print(f"\nFIGURES two sweeps + outage: {reads} report reads while writing, 0 errors; server down "
          f"{outage[1] - outage[0]:.0f} s, {during} epochs reported meanwhile; metric points written {total} "
          f"of {4 * len(keys) * epochs} expected ({4} trials x {len(keys)} keys x {epochs} epochs)")
    assert total == expected == 4 * len(keys) * epochs


def test_ssdlab_server_runs_mlflow_server_on_loopback_unless_told(capsys):
    args = ["server", "--backend-store-uri", "postgresql://mlflow@db.internal:5432/mlflow",
            "--artifacts-destination", "s3://bucket/mlflow", "--dry-run"]
    assert main(args) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[1:4] == ["-m", "mlflow", "server"] and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--artifacts-destination") + 1] == "s3://bucket/mlflow"
    assert main(args + ["--host", "0.0.0.0", "--allowed-hosts", "mlflow.internal:5000"]) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--allowed-hosts") + 1] == "mlflow.internal:5000"
    assert main(["server", "--backend-store-uri", "mlruns", "--artifacts-destination", "/tmp/a", "--dry-run"]) == 2
    assert "--backend-store-uri mlruns: expected a database URI" in capsys.readouterr().err
