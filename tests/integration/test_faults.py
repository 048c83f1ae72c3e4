"""Faults a sweep must survive, each through the real CLI or driver: a disk that fills under
--storage (a real tmpfs, and an injected ENOSPC), a second driver, a sqlite store another process holds
locked, a finished run without a test value. The sweeps run on the test session's local Ray (conftest's
ray_session; driver subprocesses join it with --address)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.fake_fit import REPO, history, runs_of, write_sweep

TINY_MODEL = {"model.backbone": "tiny", "model.image_size": 64, "model.width_mult": 0.5}


def _sweep(tmp_path, name, epochs=4, seconds=0.3, store=True, **extra):
    return write_sweep(tmp_path, {"name": name, "arms": {"a": {}, "b": {"overrides": {"train.lr": 0.02}}},
                                  "seeds": [0, 1], "resources": {"cpu": 1}, "max_concurrent": 2,
                                  "overrides": {"train.epochs": epochs, "train.time_budget_s": seconds, **TINY_MODEL},
                                  **extra}, store=store)


DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.support.fake_fit import tiny_fit
import ssd_core.train
ssd_core.train.fit = tiny_fit
from ssdlab.cli import main
sys.exit(main(["sweep", sys.argv[2], "--storage", sys.argv[3], "--quiet", *sys.argv[4:]]))
"""


def _driver(sweep, storage, *extra, cwd):
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO), str(sweep), str(storage), *extra], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("ssdlab")]


def _mount_tmpfs(path: Path, megabytes: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _has_file(root: Path, name: str) -> bool:
    """Whether a file `name` is anywhere under `root`, while a driver writes there: os.walk skips a folder
    that vanishes mid-walk (the workers' temporary checkpoint folders), where Path.rglob raised
    FileNotFoundError and failed the test (seen in a fresh-clone run)."""
    return any(name in files for _, _, files in os.walk(root))


def test_a_disk_that_fills_mid_sweep_stops_it_in_one_line_and_resume_finishes(ray_session, tmp_path):
    """A 120 MB tmpfs holds the sweep; once the first checkpoint exists another file takes all the space.
    The driver stops with one line naming the file and the space (exit 1), MLflow keeps what was logged; with
    the space freed, --resume finishes every trial, each with one run and steps 1..N once each."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 120):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
    try:
        sweep = _sweep(tmp_path, "full")
        filler = disk / "filler"
        proc = _driver(sweep, disk / "ray", "--address", ray_session, cwd=tmp_path)
        deadline = time.monotonic() + 120
        while not _has_file(disk, "last.pt") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=256"], capture_output=True)
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 1, err[-3000:]
        (line,) = [ln for ln in _errors(err) if "error" in ln]
        assert "stopped:" in line and "no space left on the disk holding it" in line and "continue with --resume" in line
        assert "Traceback" not in "\n".join(_errors(err))
        filler.unlink()
        resumed = _driver(sweep, disk / "ray", "--resume", "--address", ray_session, cwd=tmp_path)
        out, err = resumed.communicate(timeout=240)
        assert resumed.returncode == 0, err[-3000:]
        client, parents, children = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "full")
        assert len(parents) == 1 and len(children) == 4
        for r in children:
            assert r.data.tags["ssdlab.status"] == "finished"
            assert [s for s, _ in history(client, r)] == [1, 2, 3, 4]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_write_on_a_full_disk_names_the_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import errno

    import torch

    from ssd_core.checkpoint import load_checkpoint, save_checkpoint
    from ssd_core.errors import DiskFullError

    path = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "config": {}, "class_names": [], "epoch": 1}, path)

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"\0" * 100)  # a partial write, then the disk is full
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(DiskFullError) as err:
        save_checkpoint({"model": {}, "config": {}, "class_names": [], "epoch": 2}, path)
    assert err.value.errno == errno.ENOSPC and str(path) in str(err.value) and "0.0 MB free" in str(err.value)
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_storage_too_small_is_refused_before_anything_is_made(tmp_path, monkeypatch, capsys):
    from ssdlab.cli import main

    monkeypatch.chdir(tmp_path)
    sweep = _sweep(tmp_path, "small", store=False)
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 5_000_000})())
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["sweep", str(sweep), "--storage", str(tmp_path / "ray")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ssdlab sweep: error: --storage") and "5 MB free where this sweep needs about" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no storage folder


def test_a_damaged_tune_state_is_moved_aside_or_the_resume_says_why(tmp_path):
    from experiments.sweep.guards import SweepStopped, check_restorable

    phase = tmp_path / "trials"
    phase.mkdir()
    (phase / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    (phase / "experiment_state-2026-01-02_00-00-00.json").write_text('{"trial_data": [[')  # cut when the disk filled
    check_restorable(str(phase))
    assert sorted(p.name for p in phase.iterdir()) == ["experiment_state-2026-01-01_00-00-00.json",
                                                       "experiment_state-2026-01-02_00-00-00.json.damaged"]
    (phase / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial')
    with pytest.raises(SweepStopped, match="damaged, cut when it was written .* --restart"):
        check_restorable(str(phase))


def test_a_second_driver_is_refused_and_a_killed_drivers_lock_is_not_stuck(ray_session, tmp_path):
    """Driver 1 runs; driver 2 (--resume, as in the report) is refused at once in one line naming driver 1;
    driver 1 is SIGKILLed; driver 3 (--resume) takes the sweep over and finishes it, one run per trial, no
    step logged twice, one model registered."""
    sweep = _sweep(tmp_path, "two", epochs=6, seconds=0.5)
    first = _driver(sweep, tmp_path / "ray", "--address", ray_session, cwd=tmp_path)
    lock = tmp_path / "ray" / ".two.driver.lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    while not _has_file(tmp_path / "ray", "last.pt") and time.monotonic() < deadline:
        time.sleep(0.1)
    second = _driver(sweep, tmp_path / "ray", "--resume", "--address", ray_session, cwd=tmp_path)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 2, err[-2000:]
    (line,) = _errors(err)
    assert f"already being run by driver pid {first.pid} on" in line and str(lock) in line
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    third = _driver(sweep, tmp_path / "ray", "--resume", "--address", ray_session, cwd=tmp_path)
    out, err = third.communicate(timeout=240)
    assert third.returncode == 0, err[-3000:]
    client, parents, children = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "two")
    assert len(children) == 4 and len(parents) == 1
    for r in children:
        steps = [s for s, _ in history(client, r)]
        assert steps == [1, 2, 3, 4, 5, 6], steps
    versions = client.search_model_versions("name='two'")
    assert len(versions) <= 1


def test_a_store_locked_by_another_process_makes_the_writes_wait(ray_session, tmp_path, monkeypatch):
    """Another process holds the sqlite store in an exclusive transaction for 8 s while the sweep runs (and
    sqlite's busy timeout is cut to 1 s, so the writes really fail first): the driver keeps its writes and
    retries them, the sweep ends normally, every step logged once."""
    from experiments.schema import Tag
    from experiments.sweep.driver import run_sweep
    from experiments.sweep.validate import load_sweep
    from experiments.tracking import store
    from tests.support.fake_fit import tiny_fit

    monkeypatch.setattr(store, "SQLITE_BUSY_TIMEOUT_S", 1)
    spec = load_sweep(_sweep(tmp_path, "locked", epochs=6, seconds=0.5))
    db = tmp_path / "mlflow.db"
    held = threading.Event()

    def trial_runs() -> int:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM tags WHERE key = ? AND value = 'trial'", (Tag.KIND,)).fetchone()[0]
        except sqlite3.OperationalError:  # locked by a write this moment
            return 0
        finally:
            con.close()

    def hold():
        deadline = time.monotonic() + 120
        while not (db.exists() and trial_runs()) and time.monotonic() < deadline:
            time.sleep(0.1)  # into the sweep: the parent and the first trial runs exist
        con = sqlite3.connect(db, timeout=30, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(8)
        con.execute("COMMIT")
        con.close()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    result = run_sweep(spec, tiny_fit, storage=tmp_path / "ray", progress=False)
    t.join(30)
    assert held.is_set() and result.counts == {"finished": 4} and result.failures == []
    client, parents, children = runs_of(spec.file.tracking.uri, "locked")
    assert len(children) == 4 and parents[0].data.tags["ssdlab.status"] == "finished"
    for r in children:
        assert [s for s, _ in history(client, r)] == [1, 2, 3, 4, 5, 6]


def test_a_new_sqlite_store_appears_whole_and_opening_it_waits_out_a_lock(tmp_path, monkeypatch):
    """A sweep must not die in its first store check when another process locks the fresh database between
    two of MLflow's migration steps. A new store is built aside and moved in whole (while it is built, the
    database path does not exist; after, it holds MLflow's tables and nothing is left beside it), and
    opening a store that another process holds locked waits (busy timeout cut to 1 s) until it is free."""
    from experiments.tracking import store

    db = tmp_path / "mlflow.db"
    seen = []
    real = store.mlflow_client

    def spy(uri):
        seen.append((uri, db.exists()))
        return real(uri)

    monkeypatch.setattr(store, "mlflow_client", spy)
    uri = f"sqlite:///{db}"
    store.ensure_store(uri)
    assert seen[0][0].endswith(f".mlflow.db.creating-{os.getpid()}") and seen[0][1] is False  # built aside
    tables = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")}
    assert {"experiments", "runs", "metrics", "alembic_version"} <= tables
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]

    monkeypatch.setattr(store, "SQLITE_BUSY_TIMEOUT_S", 1)
    monkeypatch.setattr(store, "RETRY_S", 0.2)
    store._READY.discard(uri)
    con = sqlite3.connect(db, timeout=30, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN EXCLUSIVE")
    threading.Timer(3.0, lambda: con.execute("COMMIT")).start()
    t0 = time.monotonic()
    monkeypatch.setattr(store, "OUTAGE_WAIT_S", 60)
    store.ensure_store(uri)  # without the wait: OperationalError 'database is locked' after 1 s
    assert 2.5 < time.monotonic() - t0 < 30


def test_a_finished_run_without_a_test_value_is_listed_not_averaged(tmp_path):
    from reports.load import read_sweep
    from reports.run_tables import other_runs_table
    from reports.tables import ablation_table
    from tests.support.fake_store import Run
    from tests.support.fake_store import write_sweep as fake_sweep

    runs = [Run("a", s, {"val/mAP50": {1: 0.5}, "test/mAP50": {1: 0.4 + 0.01 * s}}) for s in range(3)]
    runs += [Run("b", s, {"val/mAP50": {1: 0.6}, "test/mAP50": {1: 0.5 if s else float("nan")}}) for s in range(3)]
    uri = f"sqlite:///{tmp_path / 'nan.db'}"
    fake_sweep(uri, "nan", ["a", "b"], runs)
    data = read_sweep("nan", uri)
    abl = ablation_table(data)
    row = next(r for r in abl.rows if r[0] == "b")
    assert row[1] == "2" and "1 finished without a value" in row
    other = other_runs_table(data)
    assert [(r[0], r[1], r[3]) for r in other.rows] == [("b", "0", "finished")]
    assert other.rows[0][6] == "finished, but its test/mAP50 is NaN: not averaged"


def test_a_disk_full_error_from_rays_own_checkpoint_copy_still_names_the_folder_and_the_space(tmp_path):
    """Ray's copy of a checkpoint into storage fails with pyarrow's "Error writing bytes to file" (no file, no
    space): the driver's one line names the trial's storage folder, the free space and the way on."""
    from types import SimpleNamespace

    from experiments.sweep.callback import _disk_full, _disk_full_line

    error = "OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"
    assert _disk_full(error)
    line = _disk_full_line(SimpleNamespace(path=str(tmp_path / "trial_1")), error)
    assert line.startswith(str(tmp_path / "trial_1") + ": no space left on the disk holding it (")
    assert "MB free" in line and "continue with --resume" in line
    ours = "DiskFullError: [Errno 28] /x/last.pt: no space left on the disk holding it (1.0 MB free): free space " \
           "there and continue with --resume"
    assert _disk_full_line(SimpleNamespace(path="/elsewhere"), ours) == ours.split("[Errno 28] ")[1]
