"""The MLflow store a command writes to or reads from, checked before anything else happens.

    store_problem(uri, write=True)   why `uri` cannot be used as a store (one line), or None; no connection
    check_store(uri, where)          store_problem, then open it: the schema created once (sqlite) or the
                                     server asked once, with a bounded retry; ConfigError in one line
    ui_log(uri)                      the file `ssdlab ui` appends its MLflow server's output to (UI_LOG)

What is checked without a connection (also by `ssdlab sweep --dry-run`): a sqlite URI's file is an
SQLite database, or absent in a folder that exists or can be created (tried with a temporary folder,
removed again); for reading, the database holds MLflow's tables. A tracking server is asked by
`check_store` only, at most PROBE_RETRIES times with a PROBE_TIMEOUT_S timeout (MLflow's own client
would retry for minutes). Nothing here imports MLflow until a store is opened.
"""
from __future__ import annotations

import os
import re
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ssd_core.errors import ConfigError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLES = ("experiments", "runs")
PROBE_RETRIES, PROBE_TIMEOUT_S, PROBE_BACKOFF = 2, 10, 1  # MLflow reads the backoff factor as an int


# A store that did not answer or that another process holds locked: writes outside a trial's events are
# tried again every RETRY_S for up to OUTAGE_WAIT_S (the sweep driver's Outbox uses the same two).
_UNREACHABLE = re.compile(r"Max retries exceeded|Connection (refused|reset|aborted|broken)|IncompleteRead|"
                          r"timed out|Read timed out|"
                          r"failed with error code 5\d\d|Remote end closed|temporarily unavailable|"
                          r"database is locked", re.I)  # a sqlite store another process holds locked
OUTAGE_WAIT_S = float(os.environ.get("SSDLAB_MLFLOW_OUTAGE_WAIT_S", "900"))
RETRY_S = 2.0


def unreachable(exc: BaseException) -> bool:
    """Whether an MLflow error means the store did not answer or was locked (worth trying again later)."""
    import requests

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                            requests.exceptions.ChunkedEncodingError)):  # a server stopped mid-answer
            return True
        if _UNREACHABLE.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def patient(fn, *args, wait_s: float | None = None, **kwargs):
    """`fn(*args, **kwargs)`, tried again every RETRY_S while the store does not answer or another process
    holds it locked (up to OUTAGE_WAIT_S): the writes that are not a trial's buffered events."""
    deadline = time.monotonic() + (OUTAGE_WAIT_S if wait_s is None else wait_s)
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not unreachable(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_S)


SQLITE_BUSY_TIMEOUT_S = 60  # a writer waits this long for another process's lock on a sqlite store, then retries


def with_busy_timeout(uri: str) -> str:
    """A sqlite URI with a busy timeout (sqlite3.connect(timeout=...) through SQLAlchemy's query string), so a
    store that another process holds locked makes writes wait instead of failing at once; others unchanged."""
    if sqlite_file(uri) is None or "timeout=" in uri.split("?", 1)[-1] and "?" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}timeout={SQLITE_BUSY_TIMEOUT_S}"


@contextmanager
def using_tracking_uri(uri: str):
    """`uri` as MLflow's global tracking URI for the block only (MLflow's module-level APIs and the registry's
    lookups of logged models read it; the caller's later runs must not be redirected)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    use = getattr(utils, "_use_tracking_uri", None)
    if use is not None:
        with use(with_busy_timeout(uri)):
            yield
        return
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(with_busy_timeout(uri))
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def mlflow_client(uri: str):
    """THE MlflowClient of a store (every reader and writer opens it here: sqlite gets its busy timeout)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=with_busy_timeout(uri))


def sqlite_file(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///...` URI (query string dropped), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


UI_LOG = "mlflow-ui.log"  # `ssdlab ui`'s MLflow server output (its uvicorn log, warnings), appended


def ui_log(uri: str) -> Path:
    """Where `ssdlab ui` keeps the log of its MLflow server for store `uri`: beside a sqlite store's file, else
    in the run directories' folder (runs/)."""
    from ssd_core.config.experiment import OutputConfig

    db = sqlite_file(uri)
    return (db.parent if db is not None else Path(OutputConfig().dir)) / UI_LOG


def _creatable(folder: Path) -> Optional[str]:
    """None when `folder` exists as a writable folder or could be created; else why not."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:  # the one sure test of "can be written" (os.access says yes to root on /proc)
        os.rmdir(tempfile.mkdtemp(prefix=".ssdlab-probe-", dir=probe))
    except OSError as exc:
        return f"cannot create {folder}: {exc.strerror or exc}"
    return None


def _sqlite_problem(db: Path, write: bool) -> Optional[str]:
    if not db.exists():
        if not write:
            return "no such database file"
        return _creatable(db.parent)
    if not db.is_file():
        return "not a file"
    try:
        with open(db, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if head and head != SQLITE_HEADER:
        return "not an SQLite database"
    if write and not os.access(db, os.W_OK):
        return "not writable"
    if not write:
        try:
            con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
            try:
                names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            finally:
                con.close()
        except sqlite3.Error as exc:
            return f"not a readable SQLite database ({exc})"
        missing = [t for t in MLFLOW_TABLES if t not in names]
        if missing:
            return f"not an MLflow store (no {', '.join(missing)} table)"
    return None


def store_problem(uri: str, write: bool = True) -> Optional[str]:
    """Why `uri` cannot be used as an MLflow store, in a few words, or None. No connection is made;
    `write=False` (reading: runs, report, ui) also wants the store to exist with MLflow's tables."""
    if not uri or not uri.strip():
        return "empty URI"
    db = sqlite_file(uri)
    if db is not None:
        return _sqlite_problem(db, write)
    if uri.startswith("sqlite:"):
        return "a sqlite URI is sqlite:///relative/path.db or sqlite:////absolute/path.db"
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    if scheme is None or uri.startswith("file:"):  # a folder store (mlruns)
        folder = Path(uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):]
                      if uri.startswith("file:") else uri)
        if folder.exists() and not folder.is_dir():
            return "not a folder"
        if not folder.exists():
            return "no such folder" if not write else _creatable(folder)
    return None


@contextmanager
def scoped_env(values: dict[str, str]):
    """The environment variables `values` set for the block only (restored, or removed, after it)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bounded_http():
    """MLflow's HTTP retries capped for one probe (its defaults retry for minutes)."""
    return scoped_env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(PROBE_RETRIES),
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PROBE_TIMEOUT_S),
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(PROBE_BACKOFF)})


def _reason(exc: BaseException) -> str:
    """The useful part of a store error, one line (a refused connection, a missing table, ...)."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {line[:200]}"


def check_store(uri: str, where: str = "", write: bool = True) -> str:
    """Check and open the MLflow store `uri` before anything else is created; returns `uri`.
    ConfigError in one line '<where>: <uri>: <why>' (where: e.g. 'sweeps/x.yaml: tracking.uri')."""
    prefix = f"{where}: " if where else ""
    problem = store_problem(uri, write)
    if problem:
        raise ConfigError(f"{prefix}MLflow store {uri}: {problem}")
    try:
        with _bounded_http():
            if write and sqlite_file(uri) is not None:  # creates the schema once, under a lock
                ensure_store(uri)
            else:
                mlflow_client(uri).search_experiments(max_results=1)
    except Exception as exc:  # sqlalchemy, requests, MlflowException: one line, not their tracebacks
        verb = "did not answer" if re.match(r"^https?://", uri) else "cannot be opened"
        raise ConfigError(f"{prefix}MLflow store {uri} {verb}: {_reason(exc)}") from None
    return uri


# --------------------------------------------------------------------------- the store opened
_READY: set[str] = set()


def artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store live next to the database (`<dir>/mlartifacts`), not in CWD."""
    db = sqlite_file(uri)
    if db is None:
        return None
    return (db.resolve().parent / "mlartifacts").as_uri()


def ensure_store(uri: str) -> str:
    """Create the MLflow schema of `uri` once, under a file lock, and return `uri`.

    A fresh sqlite store that many processes open at once fails its alembic migration; calling
    this first (in the one driver, or in every process: the lock serialises them) avoids it. A new
    database is migrated under a temporary name beside it and moved into place whole, so no other
    process (a reader, one that locks the file) ever meets a half-built schema; opening it then waits
    while another process holds it locked (store.patient). Non-sqlite URIs need nothing.
    """
    if uri in _READY:
        return uri
    db = sqlite_file(uri)
    if db is not None:
        from filelock import FileLock

        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock", timeout=300):
            if not db.exists() or db.stat().st_size == 0:
                _create_schema_aside(db)
            patient(lambda: mlflow_client(uri).search_experiments(max_results=1))
    _READY.add(uri)
    return uri


def _create_schema_aside(db: Path) -> None:
    """MLflow's tables in `.<name>.creating-<pid>` beside `db` (constructing the store runs the migrations),
    then renamed to `db` in one step."""
    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        mlflow_client(f"sqlite:///{tmp}").search_experiments(max_results=1)
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def client_for(uri: str) -> "MlflowClient":
    return mlflow_client(ensure_store(uri))


# MLflow 3's UI opens an experiment by its kind: without this tag it lands on the GenAI overview (traces,
# issue detection), with it on the model-training runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: "MlflowClient", name: str, uri: str) -> str:
    """Get or create the experiment `name` (race-safe: another writer may create it first), tagged as a
    model-training experiment for MLflow's UI."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, artifact_location=artifact_root(uri), tags=EXPERIMENT_KIND)
            return exp_id
        except Exception:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    for k, v in EXPERIMENT_KIND.items():
        if exp.tags.get(k) != v:
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id
