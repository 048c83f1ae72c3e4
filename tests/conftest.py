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
