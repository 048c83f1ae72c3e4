"""A search sweep's Optuna study, kept in an RDB storage of its own so that optuna-dashboard shows it live.

    study_url(spec, storage)          the Optuna storage of a search sweep: search.storage, else `optuna.db`
                                      beside a sqlite MLflow store, else beside a local Ray storage; None
                                      (Optuna's in-memory storage) for `search.storage: memory` or remote storage
    study_name(sweep, phase, parent)  '<sweep>/<phase>/<parent run id[:8]>': one study per search phase and
                                      launch (a --resume keeps the parent run, hence the study; --restart does not)
    open_storage(url, where)          optuna's RDBStorage (schema created once); ConfigError in one line
    close_study(url, name)            at a phase's end: trials still RUNNING were suggested to a driver that
                                      died before Tune saved them (never reported, never resumed) -> FAIL
    best_hyperparameters(...)         the best trial's overrides as YAML, for `-o @FILE` or an arm's overrides

Never MLflow's database (`same_database`): the two schemas share table names (`trials`, `alembic_version`)
and a search must not be able to corrupt the runs it is judged by.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from ssd_core.errors import ConfigError

STUDY_FILE = "optuna.db"
IN_MEMORY = "memory"
BEST_HYPERPARAMETERS = "best_hyperparameters.yaml"


def _database(url: str) -> tuple:
    """What identifies the database a SQLAlchemy URL points at: a sqlite file's resolved path, else
    (backend, host, port, database)."""
    from sqlalchemy.engine import make_url

    u = make_url(url.split("?", 1)[0] if url.startswith("sqlite") else url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return ("sqlite", str(Path(u.database or ":memory:").expanduser().resolve()))
    return (backend, u.host or "localhost", u.port, u.database)


def same_database(a: str, b: str) -> bool:
    try:
        return _database(a) == _database(b)
    except Exception:  # not a SQLAlchemy URL (an http:// tracking server, a file store): not a database we share
        return False


def study_url(spec, storage) -> Optional[str]:
    """The Optuna storage URL of `spec`'s search (see the module docstring); ConfigError when it is MLflow's."""
    from experiments.sweep.storage import local_path
    from experiments.tracking.store import sqlite_file

    s = spec.file.search
    if s is None or s.storage == IN_MEMORY:
        return None
    tracking = spec.file.tracking.uri
    if s.storage:
        if same_database(s.storage, tracking):
            raise ConfigError(f"{spec.path}: search.storage: {s.storage} is the MLflow store's database "
                              f"(tracking.uri); give Optuna a database of its own, e.g. sqlite:///{STUDY_FILE}")
        return s.storage
    db = sqlite_file(tracking)
    folder = db.expanduser().resolve().parent if db is not None else local_path(str(storage))
    if folder is None:
        return None
    return f"sqlite:///{Path(folder) / STUDY_FILE}"


def study_name(sweep: str, phase: str, parent_run_id: str) -> str:
    return f"{sweep}/{phase}/{parent_run_id[:8]}"


def open_storage(url: str, where: str = ""):
    """Optuna's RDBStorage for `url` (its schema created when absent); ConfigError naming `where` and the URL."""
    import optuna

    from experiments.tracking.store import sqlite_file

    db = sqlite_file(url)
    if db is not None:
        db.expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        # a sqlite study waits for the dashboard's reads instead of failing on a lock
        kwargs = {"connect_args": {"timeout": 60}} if db is not None else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:
        prefix = f"{where}: " if where else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{prefix}Optuna storage {url} cannot be opened: {first}") from None


def close_study(url: Optional[str], name: str) -> int:
    """Mark the study's trials still RUNNING as FAIL once its phase has ended; returns how many. A driver
    killed between Optuna's suggestion and Tune's state snapshot leaves such a trial: Tune never knew it,
    so the resumed search suggested another one in its place."""
    if not url:
        return 0
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    lost = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in lost:
        storage.set_trial_user_attr(t._trial_id, "ssdlab", "lost: the driver died before Tune saved this trial")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(lost)


def label_study(url: Optional[str], name: str, attrs: dict[str, Any]) -> None:
    """Study user attributes the dashboard shows (sweep, MLflow parent run, metric)."""
    if not url:
        return
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        return
    for k, v in attrs.items():
        study.set_user_attr(k, v)


def best_hyperparameters(params: dict[str, Any], *, sweep: str, phase: str, trial: str, score: Optional[float],
                         metric: str) -> str:
    """The best trial's searched keys as a YAML mapping of dotted keys: `ssdlab train -o @FILE`, or an arm's
    `overrides:` block as it stands."""
    flat = {k: (v.item() if hasattr(v, "item") else v) for k, v in sorted(params.items())}
    shown = "" if score is None else f" ({metric} {score:.4f})"
    head = [f"# best trial {trial} of sweep {sweep}, {phase}{shown}",
            "# use: ssdlab train --config CFG -o @" + BEST_HYPERPARAMETERS + "   (or paste under an arm's overrides:)",
            "#      " + " ".join(f"-o {k}={v}" for k, v in flat.items())]
    return "\n".join(head) + "\n" + yaml.safe_dump(flat, sort_keys=True, default_flow_style=False)

