"""Past one machine: a real 2-node Ray cluster on this host, as docs/cluster.md sets one up (`ray start
--head` + `ray start --address`, one CPU each, token authentication on), driven by `ssdlab sweep --address`
with storage given as a URI; the worker node's raylet is SIGKILLed while its trial trains. And the safe
default, a local sweep's Ray on 127.0.0.1 only: `LoopbackWatch` here, used by tests/integration/test_demo_e2e.py while
its sweep runs (no Ray started for it alone).

The sweeps use the tiny trainable of tests/integration/test_sweep_ray.py (fit's signature, fake 1 s epochs) in place
of ssd_core.train.fit; everything else is the real `ssdlab sweep`."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from tests.support.drivers import DRIVER  # noqa: E402
from tests.support.fake_fit import history, runs_of, write_sweep  # noqa: E402
from tests.support.processes import descendants, free_port, named  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")











class RayNode:
    """One `ray start ... --block` process and what it starts; stopped by the ids it started."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log
        self.proc = subprocess.Popen([str(RAY), "start", *args, "--block", "--disable-usage-stats"], env=env,
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.pids: set[int] = set()

    def raylet(self, timeout: float = 90) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.pids |= set(descendants(self.proc.pid))
            found = named(self.pids, "raylet")
            if found:
                return found[0]
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.3)
        raise AssertionError(f"no raylet after {timeout} s: {self.log.read_text()[-3000:]}")

    def node_id(self) -> str:
        cmd = Path(f"/proc/{self.raylet()}/cmdline").read_text()
        return re.search(r"--node_id=([0-9a-f]+)", cmd).group(1)

    def stop(self) -> None:
        self.pids |= set(descendants(self.proc.pid)) if self.proc.poll() is None else set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for pid in [self.proc.pid, *self.pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head + worker node, 1 CPU each, Ray token authentication on with a token of the test's own."""
    from ray._private.services import get_node_ip_address

    logs = tmp_path_factory.mktemp("ray-nodes")
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under it
    token = logs / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), OMP_NUM_THREADS="1",
               SSDLAB_SCRATCH=str(logs / "scratch"))  # each node's run dirs: <scratch>/<node id>/<trial id>
    ip = get_node_ip_address()
    port = free_port()  # never Ray's default 6379: Redis has it here
    # node failure noticed in ~3 s instead of Ray's ~30 s (docs/cluster.md: the defaults suit real clusters)
    fast = json.dumps({"health_check_period_ms": 1000, "health_check_failure_threshold": 3})
    head = RayNode(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp}",
                    f"--system-config={fast}"], env, logs / "head.log")
    worker = None
    try:
        head.raylet()
        worker = RayNode([f"--address={ip}:{port}", "--num-cpus=1"], env, logs / "worker.log")
        worker.raylet()
        yield {"address": f"{ip}:{port}", "env": env, "head": head, "worker": worker}
    finally:
        for node in (worker, head):
            if node is not None:
                node.stop()
        shutil.rmtree(temp, ignore_errors=True)


def driver(args: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO), *args], cwd=cwd, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def test_worker_node_killed_mid_sweep_resumes_its_trial_on_the_head_from_storage(cluster, tmp_path):
    """Two trials, one per node; the worker node's raylet is SIGKILLed after its trial logged 3 epochs.
    The trial is retried on the head from its last checkpoint in storage (a file:// URI: no node reads
    another's run dir), the sweep finishes, MLflow holds one run per trial with a continuous history and
    the nodes each ran on, and the report reads the same. An arm whose data root no node has fails at once,
    naming the node and the path."""
    epochs = 8
    path = write_sweep(tmp_path, {
        "name": "two-nodes",
        "arms": {"a": {"note": "trains"},
                 "nodata": {"note": "no node has its data", "overrides": {"data.root": "/nonexistent/ssdlab-data"}}},
        "seeds": [0, 1],
        "overrides": {"train.epochs": epochs, "train.time_budget_s": 0.6},  # tiny_fit: seconds per epoch
        "resources": {"cpu": 1},
        "failure": {"max_failures": 1},
    })
    storage = f"file://{tmp_path / 'shared-storage'}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    head_id, worker_id = cluster["head"].node_id(), cluster["worker"].node_id()
    start = time.time()
    proc = driver(["sweep", str(path), "--address", cluster["address"], "--storage", storage], tmp_path,
                  cluster["env"], tmp_path / "driver.log")
    try:
        killed_after = None
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None:  # the worker's trial, 3 epochs in
            time.sleep(0.5)
            try:
                client, _, children = runs_of(uri, "two-nodes")
                on_worker = [r for r in children if r.data.tags.get("ssdlab.node", "").endswith(worker_id)]
                logged = len(history(client, on_worker[0])) if on_worker else 0
            except Exception:  # the driver is still creating the store
                continue
            if logged >= 3:
                killed_after = logged
                victim = on_worker[0].data.tags["ssdlab.trial_id"]
                os.kill(cluster["worker"].raylet(), signal.SIGKILL)
                break
        assert killed_after is not None, (tmp_path / "driver.log").read_text()[-4000:]
        rc = proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "driver.log").read_text()
    assert rc == 1, log[-4000:]  # the two nodata trials failed (their errors printed), the rest finished
    wall = time.time() - start

    client, parents, children = runs_of(uri, "two-nodes")
    assert len(parents) == 1 and json.loads(parents[0].data.tags["ssdlab.counts"]) == {"failed": 2, "finished": 2}
    assert len(children) == len({r.data.tags["ssdlab.trial_id"] for r in children}) == 4  # one run per trial
    nodata = [r for r in children if r.data.tags["ssdlab.arm"] == "nodata"]
    for r in nodata:
        error = r.data.tags["ssdlab.error"]
        assert re.match(r"DataError: node \S+/\S+/[0-9a-f]+ cannot read data.root /nonexistent/ssdlab-data: "
                        r"no such folder", error), error
        assert error.split()[2].rsplit("/", 1)[1] in (head_id, worker_id)
    trained = {r.data.tags["ssdlab.trial_id"]: r for r in children if r.data.tags["ssdlab.arm"] == "a"}
    first_nodes = {json.loads(r.data.tags["ssdlab.nodes"])[0].rsplit("/", 1)[1] for r in trained.values()}
    assert first_nodes == {head_id, worker_id}  # both nodes got trials
    cut = trained[victim]
    assert [n.rsplit("/", 1)[1] for n in json.loads(cut.data.tags["ssdlab.nodes"])] == [worker_id, head_id]
    assert cut.data.tags["ssdlab.node"].endswith(head_id)
    for r in trained.values():
        assert r.data.tags["ssdlab.status"] == "finished" and r.info.status == "FINISHED"
        assert history(client, r) == [(e, pytest.approx(0.01 * e)) for e in range(1, epochs + 1)]  # continuous
        assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"config.yaml", "checkpoints"}
    # the retry went on from the last checkpoint the worker node had put in storage, not from epoch 0
    starts = [v for _, v in history(client, cut, "test/start_epoch")]
    resumed = int(starts[-1])
    assert resumed >= killed_after >= 3 and starts == [0] * resumed + [resumed] * (epochs - resumed), starts
    attempts = [v for _, v in history(client, cut, "test/attempt")]
    assert len(set(attempts)) == 2 and attempts == [attempts[0]] * resumed + [attempts[-1]] * (epochs - resumed)
    # node-local scratch: the dead node's run dir of the trial is still there, never read by the head
    scratch = Path(cluster["env"]["SSDLAB_SCRATCH"])
    from ssd_core.checkpoint import load_checkpoint

    assert load_checkpoint(scratch / worker_id / victim / "last.pt")["epoch"] >= killed_after
    assert not (scratch / head_id / victim).exists()  # finished there, its state in storage: scratch removed
    # storage: every checkpoint keeps its marker, only the newest two keep weights
    (trial_dir,) = {c.parent for c in (tmp_path / "shared-storage" / "two-nodes").rglob("checkpoint_*")
                    if victim in c.parent.name}
    ckpts = sorted(trial_dir.glob("checkpoint_*"))
    assert len(ckpts) == epochs and all((c / "reported.json").is_file() for c in ckpts)
    assert [c.name for c in ckpts if (c / "last.pt").is_file()] == [c.name for c in ckpts[-2:]]
    # the report reads the same sweep back
    from reports.load import read_sweep

    data = read_sweep("two-nodes", uri)
    got = {r.trial_id: (r.status, round(float(r.score), 6), int(r.last_step)) for r in data.runs.itertuples()
           if r.trial_id in trained}
    assert got == {t: ("finished", round(0.01 * epochs, 6), epochs) for t in trained}
    assert sorted(data.runs["status"]) == ["failed", "failed", "finished", "finished"]
    print(f"\nFIGURES two-node sweep: {wall:.0f} s; trials per node (first attempt): "
          f"head {sum(json.loads(r.data.tags['ssdlab.nodes'])[0].endswith(head_id) for r in trained.values())}, "
          f"worker {sum(json.loads(r.data.tags['ssdlab.nodes'])[0].endswith(worker_id) for r in trained.values())}; "
          f"worker killed after MLflow had epoch {killed_after}; resumed on the head at epoch {resumed + 1} "
          f"(from the checkpoint of epoch {resumed})")




