"""The Ray this driver starts or joins: loopback-only when local, quiet engines,
and two fixes to Ray Tune's file handling (damaged error files; atomic local uploads)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray takes 127.0.0.1 as the node address


def quiet_engines() -> None:
    """The terminal shows ssdlab's own lines (experiments/sweep/progress.py), not Ray's and Tune's: Ray logs only
    errors, Tune's loggers are silent (a failed trial's error is ssdlab's to print), and Tune's legacy
    output engine at verbosity 0 prints nothing (its new engine prints an experiment box, a results path and a
    TensorBoard hint whatever the verbosity)."""
    import logging

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    for name, level in (("ray", logging.ERROR), ("ray.tune", logging.CRITICAL), ("ray.train", logging.CRITICAL),
                        ("ray._private.authentication", logging.ERROR)):
        logging.getLogger(name).setLevel(level)


def init_ray(address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local Ray bound to 127.0.0.1.

    A local Ray listens on loopback only: Ray replaces 127.0.0.1 by the machine's network address unless
    it is told that this is a single-machine Ray (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read by this
    process and by the Ray processes it starts); then its GCS, raylet, agents and workers bind 127.0.0.1.
    Ray's token authentication stays as Ray sets it (on by default for a new local Ray: ~/.ray/auth_token)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    # No dashboard UI. Ray 2.60's raylet still starts ray::DashboardAgent and ray::RuntimeEnvAgent (it is
    # always handed both commands and fate-shares with them; ray.init has no switch, ray-project/ray#19420):
    # on a local Ray they listen on 127.0.0.1 only (the dashboard agent on no port at all).
    # After a SIGKILLed driver they notice the raylet's death within a second, then spend 60 s (a fixed
    # timeout) reporting it to the dead GCS before exiting; they hold no ssdlab files, so --resume is unaffected.
    import logging

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    quiet_engines()
    if address:
        ray.init(address=address, **kwargs)
    else:
        from ray._private import ray_constants

        _saved_mode.append((os.environ.get(LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER))
        os.environ[LOCAL_ONLY_ENV] = "0"          # the raylet, agents and workers this Ray starts
        ray_constants.ENABLE_RAY_CLUSTER = False  # this process (ray was imported before the variable was set)
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    return True


_saved_mode: list = []


def shutdown_ray() -> None:
    """ray.shutdown() of the Ray this process started, and the cluster mode as it was before."""
    import ray
    from ray._private import ray_constants

    ray.shutdown()
    while _saved_mode:
        env, mode = _saved_mode.pop()
        if env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = env
        ray_constants.ENABLE_RAY_CLUSTER = mode


def tolerate_damaged_error_files() -> None:
    """Ray Tune unpickles each failed trial's error file to build its results, and a file cut short (a full
    disk) raises EOFError there, which would end the driver without a summary: read such a file as no
    pickled error (Tune then keeps the error's text)."""
    from ray.tune.experiment.trial import Trial

    if getattr(Trial.get_pickled_error, "_ssdlab", False):
        return
    original = Trial.get_pickled_error

    def get_pickled_error(self):
        try:
            return original(self)
        except (EOFError, OSError, ValueError, TypeError):
            return None

    get_pickled_error._ssdlab = True
    Trial.get_pickled_error = get_pickled_error


def atomic_local_uploads() -> None:
    """Ray Tune copies its experiment state (and each trial's checkpoint) from a staging folder into the
    storage folder file by file, overwriting in place: a disk that fills midway leaves the newest state cut and
    the sweep unresumable. On a local filesystem each file is copied beside its target and renamed over it,
    so a failed copy leaves the previous version whole (object stores write whole objects already)."""
    import fnmatch
    import shutil

    import pyarrow.fs as pafs
    from ray.train._internal import storage as ray_storage

    original = ray_storage._upload_to_fs_path
    if getattr(original, "_ssdlab", False):
        return

    def upload(local_path, fs, fs_path, exclude=None):
        if not isinstance(fs, pafs.LocalFileSystem):
            return original(local_path=local_path, fs=fs, fs_path=fs_path, exclude=exclude)
        src = Path(local_path)
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        for f in files:
            rel = f.name if src.is_file() else f.relative_to(src).as_posix()
            if exclude and any(fnmatch.fnmatch(rel, pattern) for pattern in exclude):
                continue
            dst = Path(fs_path) if src.is_file() else Path(fs_path, rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.ssdlab-upload")
            try:
                shutil.copyfile(f, tmp)
                os.replace(tmp, dst)
            finally:
                tmp.unlink(missing_ok=True)

    upload._ssdlab = True
    ray_storage._upload_to_fs_path = upload
