"""What keeps a sweep's state safe: one driver per sweep (DriverLock), disk space
checked before the first trial, a full disk stopping the sweep (DiskFullStop),
a damaged Tune state moved aside, the launch snapshot a resume must match, the
archive of a previous launch (--restart)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from experiments.schema import Kind, Tag
from experiments.sweep.job import TrialJob, TrialKey
from experiments.sweep.plan import plan
from experiments.sweep.spec import SweepSpec
from ssd_core.config import flatten
from ssd_core.errors import ConfigError

try:
    from ray.tune.stopper import Stopper as _Stopper
except ImportError:  # the sweep module is importable without Ray (dry runs)
    _Stopper = object
from experiments.sweep.status import expected_trials


def prepare_inputs(spec: SweepSpec, job: TrialJob) -> None:
    """Shared inputs, once, in the driver: the synthetic data set of every arm that asks for one."""
    from ssd_core.synth import ensure_synthetic

    done = set()
    for arm in spec.arm_names or [None]:
        cfg = job.config(TrialKey(arm, spec.seeds[0]))
        s = cfg.data.synthetic
        if s is None:
            continue
        key = (cfg.data.root, json.dumps(s.generator_args(), sort_keys=True))
        if key not in done:
            ensure_synthetic(cfg.data.root, **s.generator_args())
            done.add(key)


class SweepInterrupted(KeyboardInterrupt):
    """Ray Tune stopped before every trial ended (SIGINT/SIGTERM): continue with `--resume`."""


class DiskFullStop(_Stopper):
    """A Tune stopper that ends the experiment once a trial failed because a disk filled (the other trials
    would fail the same way): the driver's MLflow callback records such a failure (callback.DISK_FULL)."""

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        from experiments.sweep.callback import DISK_FULL
        return bool(DISK_FULL)


class SweepStopped(RuntimeError):
    """The sweep stopped for a reason the user fixes outside it (a full disk): one line, continue with --resume."""


class DriverLock:
    """One driver per sweep: an exclusive lock (flock) on `.<name>.driver.lock` beside the sweep's storage
    folder, held as long as the driver process lives. The kernel drops it when that process dies, however it
    dies, so a killed driver never leaves the sweep locked. The file names the holder (pid, host, start,
    command) for the message a second driver gets. Storage given as a URI is not locked (no shared flock)."""

    def __init__(self, storage: str, name: str):
        from experiments.sweep.storage import local_path

        folder = local_path(storage)
        self.path = None if folder is None else folder.parent / f".{name}.driver.lock"
        self.file = None

    def acquire(self) -> "DriverLock":
        import fcntl
        import socket
        import sys

        from ssd_core.errors import UserError

        if self.path is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                holder = json.loads(f.read() or "{}")
            except ValueError:
                holder = {}
            f.close()
            who = (f"driver pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')}"
                   if holder else "another driver")
            raise UserError(f"{self.path.name[1:-len('.driver.lock')]}: this sweep is already being run by {who} "
                            f"(lock {self.path}): wait for it to end, or stop it (Ctrl-C), then --resume") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "command": " ".join(sys.argv)[:500]}))
        f.flush()
        self.file = f
        return self

    def release(self) -> None:
        if self.file is not None:
            import fcntl

            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def check_free_space(spec: SweepSpec, job: TrialJob, storage: str) -> None:
    """Before a launch: the storage folder must hold the checkpoints of the first phase's trials (each keeps its
    last.pt and best.pt, and Tune's copies of both, to the end); UserError naming the folder and the space
    otherwise. A URI (object storage) is not checked."""
    import shutil

    from experiments.sweep.storage import local_path
    from ssd_core.errors import UserError

    folder = local_path(storage)
    if folder is None:
        return
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    # last.pt and best.pt in the run dir, and both again in each of the KEEP_STATE newest Tune checkpoints
    from experiments.sweep.job import KEEP_STATE

    copies = 2 * (1 + KEEP_STATE)
    per_trial = copies * checkpoint_bytes(job.config(TrialKey(spec.arm_names[0] if spec.arm_names else None,
                                                                spec.seeds[0])))
    trials = sum(expected_trials(ph) for ph in plan(spec))  # every trial keeps its state to the end
    need = trials * per_trial + 20_000_000
    if free < need:
        raise UserError(f"--storage {folder}: {free / 1e6:.0f} MB free where this sweep needs about {need / 1e6:.0f} MB "
                        f"({trials} trials, {per_trial / copies / 1e6:.0f} MB checkpoints each, kept as last.pt, best.pt "
                        f"and Tune's copies of both): free space there or pass --storage elsewhere")


def checkpoint_bytes(cfg) -> int:
    """About the size of one resumable checkpoint of `cfg`'s model: the weights and the optimizer's state
    (SGD momentum: 1 more copy, AdamW: 2), float32."""
    import torch

    from ssd_core.build import build_model

    classes = len(cfg.data.class_names) + 1 if cfg.data.class_names else 21
    try:
        with torch.device("meta"):
            model = build_model(cfg, classes)
        params = sum(p.numel() for p in model.parameters())
    except Exception:  # a model that cannot be built here is the trial's to report
        return 0
    copies = 1 + (2 if cfg.train.optimizer == "adamw" else 1)
    return 4 * params * copies


def check_restorable(path: str) -> None:
    """Before Tuner.restore: Ray Tune writes its experiment state in place, so a full disk can cut the newest
    copy; a damaged copy is moved aside (Tune then resumes from the newest whole one, and each trial from its
    newest checkpoint). SweepStopped, in one line, when none is whole."""
    import glob

    from experiments.sweep.storage import local_path

    folder = local_path(path)
    if folder is None:
        return
    states = sorted(glob.glob(str(folder / "experiment_state-*.json")))
    damaged = []
    for state in states:
        try:
            json.loads(Path(state).read_text())
        except (ValueError, OSError):
            damaged.append(state)
    for state in damaged:
        os.replace(state, state + ".damaged")
    if states and len(damaged) == len(states):
        raise SweepStopped(f"cannot resume {folder}: Ray Tune's saved state ({Path(damaged[-1]).name}) is damaged, "
                           f"cut when it was written (a full disk?), and no earlier copy is whole; start afresh with "
                           f"--restart (the runs logged so far stay in MLflow)")


SNAPSHOT = "sweep_snapshot.json"
# The layout of what Ray Tune pickles into a sweep's state (the trainable's TrialJob, the callbacks, by module
# path). A resume needs the same: 2 = the experiments/sweep + experiments/tracking packages; 1 = the flat
# experiments.trial / experiments.callback modules before them.
STATE_VERSION = 2
SEQUENTIAL_STATE = "sequential.json"  # sequential seeding: the looks so far (what Tag.SEQUENTIAL holds)


def _snapshot(spec: SweepSpec) -> dict[str, Any]:
    return {"state_version": STATE_VERSION, "sweep": spec.file.model_dump(mode="json"), "base": flatten(spec.base)}


def check_snapshot(spec: SweepSpec, storage: str | Path, resume: bool) -> None:
    """A resumed sweep must train exactly what it started with: the sweep file and the resolved base
    config are recorded at launch, and `--resume` refuses (ConfigError) when either changed, or when an older
    ssdlab launched it (STATE_VERSION: Tune's pickled state names modules this version does not have).
    `storage`: the sweep's folder or URI (experiments.sweep.storage)."""
    from experiments.sweep import storage as st

    path = st.join(str(storage), SNAPSHOT)
    now = _snapshot(spec)
    if resume and st.exists(path):
        then = json.loads(st.read_text(path))
        if then.get("state_version") != STATE_VERSION:
            raise ConfigError(f"{spec.path}: {path.rsplit('/', 1)[0]} holds a sweep launched by an older ssdlab "
                              f"(state version {then.get('state_version', 1)}, this one reads {STATE_VERSION}); it "
                              f"cannot be resumed: start afresh with --restart (the runs logged so far stay in MLflow)")
        diff = sorted(k for part in ("sweep", "base") for k in set(then[part]) | set(now[part])
                      if then[part].get(k) != now[part].get(k))
        if diff:
            where = "experiment" if any(k in then["base"] or k in now["base"] for k in diff) else "<sweep>"
            raise ConfigError(f"{spec.path}: {where}: changed since this sweep started ({path}); resuming needs "
                              f"the same sweep and base config; differing keys: {', '.join(diff[:10])}")
        return
    st.write_text(path, json.dumps(now, indent=1, sort_keys=True, default=str))


def archive_sweep(spec: SweepSpec, storage: str | Path) -> Optional[Path | str]:
    """Move a previous launch's trial state aside (`<name>.<UTC time>`) so the sweep can start afresh,
    and repoint its MLflow parent run's `ssdlab.storage` tag there: the old runs stay in the store,
    complete and findable, and the new launch gets a parent run of its own. Returns the new folder
    (a Path; a URI string for remote storage)."""
    from experiments.sweep import storage as st

    if not st.exists(str(storage)):
        return None
    from experiments.tracking.store import client_for, ensure_store, experiment_id
    from experiments.tracking.writer import find_run

    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    target = f"{str(storage).rstrip('/')}.{stamp}"
    uri = spec.file.tracking.uri
    ensure_store(uri)
    client = client_for(uri)
    run = find_run(client, experiment_id(client, spec.experiment_name, uri),
                   {Tag.KIND: Kind.SWEEP, Tag.SWEEP: spec.name, Tag.STORAGE: str(storage)})
    st.move(str(storage), target)
    if run is not None:
        client.set_tag(run.info.run_id, Tag.STORAGE, target)
    return target if st.is_uri(target) else Path(target)
