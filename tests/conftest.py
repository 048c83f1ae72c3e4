"""Shared fixtures. Tests run on tiny synthetic data; BCCD tests skip when ../shared is absent."""
from __future__ import annotations

import os
import sys
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


@pytest.fixture(scope="session")
def report_store(tmp_path_factory) -> str:
    """tests/support/report_store.py's sqlite store (an ablation sweep `abl` and a search sweep `hpo` whose every
    number is known), filled once for the tests that read it: the reports', `ssdlab ui`'s, the deploy table's."""
    from tests.support.report_store import fill

    uri = f"sqlite:///{tmp_path_factory.mktemp('report-store') / 'mlflow.db'}"
    fill(uri)
    return uri


class LocalRay:
    """The test session's one local Ray (2 CPUs), in this process: started by the first test that asks for
    `ray_session`, stopped after the last one (pytest_runtest_teardown) or before a test whose sweep must start
    a Ray of its own (`no_local_ray`). One start instead of one per module: a Ray takes ~10 s to start and
    stop on the 2-core machine."""

    def __init__(self):
        self.address: str | None = None  # the GCS address while this session's Ray is up

    def up(self) -> str:
        ray = pytest.importorskip("ray")
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        if self.address is None:
            if ray.is_initialized():  # a Ray this process joined or started elsewhere: used, never stopped here
                return ray.get_runtime_context().gcs_address
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
            self.address = ray.get_runtime_context().gcs_address
        return self.address

    def down(self) -> None:
        if self.address is not None:
            import ray

            ray.shutdown()
            self.address = None


LOCAL_RAY = LocalRay()


@pytest.fixture
def ray_session():
    """The session's local Ray (LocalRay) for a test's sweeps: in-process drivers (run_sweep, `ssdlab.cli.main`)
    run on it; driver subprocesses join it with its GCS address (`--address`, run_sweep(address=...))."""
    return LOCAL_RAY.up()


@pytest.fixture
def no_local_ray():
    """For a test whose sweep starts its own local Ray in this process: the session's Ray is stopped first
    (the next test that asks for `ray_session` starts it again)."""
    LOCAL_RAY.down()
    if "ray" in sys.modules:
        assert not sys.modules["ray"].is_initialized(), "a Ray this test suite did not start is still up"


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """The session's Ray stops after the last test that uses it, not at the end (the unit tests run after it)."""
    if LOCAL_RAY.address is None or nextitem is None:
        return
    later = item.session.items[item.session.items.index(item) + 1:]
    if not any("ray_session" in getattr(i, "fixturenames", ()) for i in later):
        LOCAL_RAY.down()


def pytest_itemcollected(item):
    """`make test` runs two xdist workers (`-n 2 --dist loadgroup`) handing out tests one at a time; the tests
    of a module with a module-scoped fixture (a two-node cluster, a tracking server, the quick GPU-check run)
    go to one worker together, so that fixture is set up once. Marked as each test is collected, before xdist
    reads the groups (in pytest_collection_modifyitems)."""
    info = getattr(item, "_fixtureinfo", None)
    if info and any(d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs):
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_configure(config):
    """Under loadgroup, xdist tells a worker's groups by a suffix it writes into each grouped test's node id;
    from pytest 9.2 that write no longer takes (pytest-dev/pytest-xdist#1386) and the groups are split, their
    fixtures set up on both workers: refused here rather than run slower without a word."""
    from packaging.version import Version  # pytest's own dependency

    if config.getoption("dist", "no") == "loadgroup" and Version(pytest.__version__) >= Version("9.2.dev0"):
        raise pytest.UsageError(f"pytest-xdist --dist loadgroup does not group tests with pytest {pytest.__version__} "
                                f"(pytest-dev/pytest-xdist#1386): `make install` installs the pytest pyproject.toml pins")


def pytest_sessionfinish(session, exitstatus):
    LOCAL_RAY.down()
