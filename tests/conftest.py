"""Shared fixtures. Tests run on tiny synthetic data; BCCD tests skip when ../shared is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BCCD_ROOT = REPO.parent / "shared" / "data" / "bccd"

# Two cores are all CI has; torch would otherwise oversubscribe them inside each test process.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    if not (BCCD_ROOT / "BCCD" / "Annotations").is_dir():
        pytest.skip(f"BCCD not found at {BCCD_ROOT} (../shared/data/bccd is absent in this checkout)")
    return BCCD_ROOT


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray (2 CPUs) for a module's sweeps; yields its GCS address (for driver subprocesses)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
