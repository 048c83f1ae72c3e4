"""A run's artifacts read back from MLflow: one artifact's bytes, the logged test detections the intervals
need (reports/stats.py), and the local cache that downloads each of them once.

reports/load.py reads the runs themselves (params, tags, metrics and their histories).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

from experiments.schema import Artifact
from experiments.tracking.store import mlflow_client
from ssd_core import rundir as RD


def load_artifact(uri: str, run_id: str, path: str) -> bytes | None:
    """The bytes of one artifact of a run (None when it has none by that path)."""
    import tempfile

    client = mlflow_client(uri)
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    try:
        if path not in {a.path for a in client.list_artifacts(run_id, folder or None)}:
            return None
        with tempfile.TemporaryDirectory(prefix="ssdlab-artifact-") as tmp:
            with open(client.download_artifacts(run_id, path, tmp), "rb") as f:
                return f.read()
    except Exception:
        return None


def load_detections(client: MlflowClient, run_ids: list[str], budget: bool = False) -> dict[str, Any]:
    """{"detections": run_id -> VOCMatches of the run's logged test detections (RD.TEST_DETECTIONS),
    "budget_detections": (run_id, fraction) -> those at each budget point (with `budget`),
    "unreadable_detections": [(run_id, artifact path, why)] for each that could not be read}, for the runs that
    have them; read through the MLflow artifact API into a temporary folder. An unreadable artifact costs its
    run that one interval (the report says which, and why), never the report or the run's other artifacts."""

    def matches(path):
        from ssd_core.evaluate import DetectionAccumulator

        acc = DetectionAccumulator.load(path)
        return acc.matches()._replace(image_ids=np.asarray(acc.image_keys))  # keys: same images across runs

    out: dict[str, Any] = {}
    points: dict[tuple[str, float], Any] = {}
    unreadable: list[tuple[str, str, str]] = []

    def read(rid: str, path: str):
        try:
            return matches(cached_artifact(client, rid, path))
        except Exception as exc:  # a truncated or foreign file: recorded, the rest still read
            unreadable.append((rid, path, f"{type(exc).__name__}: {exc}"))
            return None

    for rid in run_ids:
        try:
            names = {a.path for a in client.list_artifacts(rid)}
            listed = (client.list_artifacts(rid, Artifact.BUDGET) if budget and Artifact.BUDGET in names else [])
        except Exception as exc:
            unreadable.append((rid, "(artifact list)", f"{type(exc).__name__}: {exc}"))
            continue
        if RD.TEST_DETECTIONS in names and (m := read(rid, RD.TEST_DETECTIONS)) is not None:
            out[rid] = m
        for a in listed:
            f = RD.point_of(a.path.rsplit("/", 1)[-1])
            if f is not None and (m := read(rid, a.path)) is not None:
                points[(rid, f)] = m
    return {"detections": out, "budget_detections": points, "unreadable_detections": unreadable}


CACHE_ENV = "SSDLAB_CACHE"


def cache_root() -> Path:
    """Where fetched artifacts are kept: $SSDLAB_CACHE, else $XDG_CACHE_HOME/ssdlab, else ~/.cache/ssdlab."""
    base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssdlab"
    return Path(base) / "artifacts"


def cached_artifact(client, run_id: str, path: str) -> str:
    """A run's artifact as a local file, downloaded once: a finished trial's detections never change (a
    local store's artifacts are read where they are)."""
    import hashlib
    import shutil
    import tempfile

    uri = client.get_artifact_uri(run_id, path) if hasattr(client, "get_artifact_uri") else ""
    if not uri:
        uri = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + path
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse
        local = Path(unquote(urlparse(uri).path))
        if local.is_file():
            return str(local)
    key = hashlib.sha256(f"{client.tracking_uri}|{run_id}|{path}".encode()).hexdigest()[:24]
    target = cache_root() / key / Path(path).name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ssdlab-fetch-", dir=target.parent) as tmp:
            got = client.download_artifacts(run_id, path, tmp)
            shutil.move(got, target)
    return str(target)
