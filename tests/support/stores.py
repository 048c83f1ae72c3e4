"""A new, empty sqlite MLflow store in a moment, for the tests that fill a store of their own (report stores,
tracking fixtures): MLflow builds a new database by running its ~60 schema migrations, about 2-5 s on the
2-core machine each time. Here they run once per test process (experiments.tracking.store.ensure_store,
into a template), and each further store starts as a byte copy of that template; ensure_store then opens
it like any existing store. Creating a store through the lab's own code stays covered where it is the
subject (tests/integration/test_faults.py, test_tracking.py's many processes) and in every real sweep."""
from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

_TEMPLATE: list[Path] = []


def _template() -> Path:
    if not _TEMPLATE:
        from experiments.tracking.store import ensure_store

        folder = Path(tempfile.mkdtemp(prefix="ssdlab-empty-store-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        ensure_store(f"sqlite:///{folder / 'mlflow.db'}")
        _TEMPLATE.append(folder / "mlflow.db")
    return _TEMPLATE[0]


def empty_store(uri: str) -> str:
    """`uri` (a sqlite:/// URI) with an empty MLflow store in place, as a fresh one is, unless its database
    file is there already; returns `uri`. The copy gets what MLflow writes when it creates a store: its
    Default experiment (id 0) with artifacts under the current folder's mlruns, created now."""
    from experiments.tracking.store import sqlite_file

    db = sqlite_file(uri)
    if db is None or (db.exists() and db.stat().st_size > 0):
        return uri
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.copying-{os.getpid()}")
    shutil.copyfile(_template(), tmp)
    now = int(time.time() * 1000)
    with sqlite3.connect(tmp) as con:
        con.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                    "WHERE experiment_id = 0", (os.path.join(os.path.abspath("mlruns"), "0"), now, now))
    con.close()
    os.replace(tmp, db)
    return uri
