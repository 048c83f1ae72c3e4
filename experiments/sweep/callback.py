"""The driver's single MLflow writer: a Ray Tune callback that turns trial events into MLflow runs
(one child run per trial under the sweep's parent, through tracking.SweepTracker). Ray and MLflow are
imported here; only the sweep driver imports this module.

A child run is created at the trial's first report (or its error), not at its start: a trial that a
killed driver started but Tune's state never recorded leaves no run behind. Each epoch is logged once
(the tracker skips steps already logged). A trial ends FINISHED when its last report was the epoch that
ended its training (fit's `final`), EARLY_STOPPED when a scheduler stopped it, FAILED on an error.
Each run carries the node its trial ran on (`ssdlab.node`, and `ssdlab.nodes`: every node its attempts
ran on); a trial's outputs (best.pt, the test detections) come from its last Tune checkpoint in storage,
whichever node wrote it, and the driver strips the weights from all but a trial's newest checkpoints.

When the tracking server cannot be reached, the writes wait in order in an `Outbox` (in the driver's
memory) and are written when it answers again; the trials go on meanwhile. The end of each phase waits
for the server (OUTAGE_WAIT_S) before the sweep goes on.
"""
from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Optional

from ray import tune

from experiments.schema import M, PhaseKind, Status, Tag
from experiments.sweep.checkpoints import prune_state
from experiments.sweep.job import DATA_KEY, NODE_KEY, PRECISION_KEY, TrialJob, TrialKey
from experiments.sweep.plan import Phase
from experiments.sweep.spec import SweepSpec
from experiments.sweep.status import trial_status
from experiments.sweep.worker import trial_run_dir
from experiments.tracking.store import OUTAGE_WAIT_S, RETRY_S, scoped_env, unreachable
from experiments.tracking.writer import STAMP_MS
from ssd_core import rundir as RD
from ssd_core.config import ExperimentConfig, config_hash, flatten, to_yaml


def _error_line(trial) -> str:
    """The trial's exception as one line ('NonFiniteLossError: ...'), from Ray's error file."""
    text = ""
    try:
        if trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text()
    except (OSError, AttributeError):
        pass
    if not text:
        err = trial.get_error() if hasattr(trial, "get_error") else None
        text = str(err or "trial failed")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    hits = [ln for ln in lines if "Error" in ln.split(":", 1)[0] or "Exception" in ln.split(":", 1)[0]]
    line = hits[-1] if hits else lines[-1] if lines else "trial failed"
    return line.replace("ssd_core.errors.", "")


# The driver's record of a trial that failed because a disk filled (experiments.sweep.guards.DiskFullStop reads it).
DISK_FULL: list[str] = []


def _disk_full(error: str) -> bool:
    return "DiskFullError" in error or "No space left on device" in error or "[Errno 28]" in error


def _disk_full_line(trial, error: str) -> str:
    """The one line a disk-full trial error becomes: ours names the file and the space; a write of Ray's
    (a checkpoint copied into storage: "Error writing bytes to file") names neither, so the trial's storage
    folder stands in for the file."""
    if "no space left on the disk holding it" not in error:
        import errno

        from ssd_core.errors import disk_full

        error = str(disk_full(getattr(trial, "path", None) or ".", OSError(errno.ENOSPC, error)))
    return error.split("[Errno 28] ", 1)[-1]   # "[DiskFullError: ][Errno 28] <file>: no space left ..."


def _one_try():
    """MLflow's HTTP client without its own retries for one buffered write (they would hold the Tune
    loop for minutes): the Outbox retries instead."""
    return scoped_env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"})


class Outbox:
    """The driver's MLflow writes, in order. A write that fails because the server did not answer stays
    first in line, with everything after it, and is tried again every RETRY_S (at the next trial event
    or Tune loop step), so nothing is lost and the trials go on; any other error is raised as before.
    In memory: a driver killed during an outage loses what waited (a resumed sweep logs the epochs its
    trials report again, not the ones reported before)."""

    RETRY_S = RETRY_S

    def __init__(self, uri: str):
        self.uri = uri
        self.ops: deque = deque()
        self.down_since: Optional[float] = None
        self.next_try = 0.0
        self.buffered = 0  # writes that had to wait, over the sweep

    def __getstate__(self):
        return {**self.__dict__, "ops": deque(), "down_since": None}

    def submit(self, fn, *args, **kwargs) -> None:
        self.ops.append((int(time.time() * 1000), fn, args, kwargs))
        if self.down_since is not None:
            self.buffered += 1
        self.drain()

    def drain(self, wait_s: float = 0.0) -> bool:
        """Write what waits; True when nothing is left. `wait_s`: keep trying that long."""
        deadline = time.monotonic() + wait_s
        if self.ops and self.down_since is not None and time.monotonic() < self.next_try and wait_s <= 0:
            return False
        while self.ops:
            stamp, fn, args, kwargs = self.ops[0]
            token = STAMP_MS.set(stamp)  # the event's time: a late metric keeps it, a retried one repeats it
            try:
                with _one_try():
                    fn(*args, **kwargs)
            except Exception as exc:
                if not unreachable(exc):
                    self.ops.popleft()
                    raise
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    self.buffered += len(self.ops)
                    print(f"ssdlab sweep: MLflow {self.uri} did not answer ({type(exc).__name__}); keeping the "
                          f"run writes in order until it does; the trials go on", file=sys.stderr, flush=True)
                self.next_try = time.monotonic() + self.RETRY_S
                if time.monotonic() >= deadline:
                    return False
                time.sleep(max(0.0, min(self.RETRY_S, deadline - time.monotonic())))
                continue
            finally:
                STAMP_MS.reset(token)
            self.ops.popleft()
        if self.down_since is not None:
            print(f"ssdlab sweep: MLflow {self.uri} answers again after {time.monotonic() - self.down_since:.0f} s; "
                  f"the waiting writes are done ({self.buffered} so far)", file=sys.stderr, flush=True)
            self.down_since = None
        return True


class MLflowTuneCallback(tune.Callback):
    """One phase's trial events -> the sweep's MLflow runs (picklable: Tune saves it with its state)."""

    def __init__(self, spec: SweepSpec, job: TrialJob, tracker, phase: Phase):
        self.spec, self.job, self.tracker, self.phase = spec, job, tracker, phase
        self._cfg: dict[str, ExperimentConfig] = {}
        self._nodes: dict[str, list] = {}
        self._precision: dict[str, str] = {}
        self.outbox = Outbox(spec.file.tracking.uri)

    def _ensure(self, trial) -> str:
        tid = trial.trial_id
        if tid in self._cfg and self.tracker.run_id(tid) is not None:
            return self.tracker.run_id(tid)
        if tid not in self._cfg:
            self._cfg[tid] = self.job.config_of(trial.config)
        cfg = self._cfg[tid]
        key = TrialKey.of(trial.config)
        arm, seed = key.arm, key.seed
        tags = {Tag.SEED: seed, Tag.CONFIG_HASH: config_hash(cfg), Tag.TRIAL_ID: tid,
                Tag.PHASE: self.phase.kind, Tag.EXPERIMENT: self.phase.dirname}
        if arm:
            tags[Tag.ARM] = arm
            tags[Tag.NOTE] = self.spec.arms[arm].note
        if self.phase.kind == PhaseKind.SEARCH:
            tags[Tag.SEARCHED] = json.dumps(sorted(k for k, _ in key.params))
        if key.source_trial:  # a confirm run: the search trial whose configuration it retrains
            tags[Tag.SOURCE_TRIAL] = key.source_trial
        what = [f"arm {arm} ({self.spec.arms[arm].note})" if arm else f"sweep {self.spec.name}", f"seed {seed}"]
        what += [f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in key.params]
        if key.source_trial:
            what.append(f"retrains search trial {key.source_trial}")
        tags[Tag.DESCRIPTION] = f"{self.phase.kind} trial: " + ", ".join(what)
        name = "-".join(str(p) for p in (arm, f"s{seed}", tid) if p is not None)
        return self.tracker.child(tid, params=flatten(cfg), tags=tags, run_name=name)

    # The child run is created at the trial's first report (or its error), not at its start: a
    # trial that a killed driver started but Tune's state never recorded leaves no run behind.
    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = int(result.get(M.EPOCH, result.get("training_iteration", 0)))
        metrics = {k: v for k, v in result.items()  # the metrics, and the run's score so far (M.SCORE: what
                   if ("/" in k and not k.startswith("config/") or k == M.SCORE)  # MLflow's runs table sorts by)
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.outbox.submit(self._log_result, trial, epoch, metrics, result.get(NODE_KEY), result.get(PRECISION_KEY),
                           result.get(DATA_KEY))

    def _log_result(self, trial, epoch: int, metrics: dict, node: Optional[str], precision: Optional[str] = None,
                    data: Optional[str] = None) -> None:
        self._ensure(trial)
        if data:
            self.tracker.children[trial.trial_id].log_dataset(json.loads(data))
        if node:
            self._note_node(trial.trial_id, str(node))
        if precision and self._precision.get(trial.trial_id) != precision:
            self.tracker.children[trial.trial_id].set_tags({Tag.PRECISION: precision})
            self._precision[trial.trial_id] = precision
        self.tracker.log_epoch(trial.trial_id, epoch, metrics)

    def _note_node(self, tid: str, node: str) -> None:
        """`ssdlab.node` (the node of the latest attempt) and `ssdlab.nodes` (all of them, in order)."""
        nodes = self._nodes.get(tid)
        if nodes is None:  # first result this driver sees: continue the list a previous driver wrote
            run = self.tracker.parent.client.get_run(self.tracker.run_id(tid))
            try:
                nodes = list(json.loads(run.data.tags.get(Tag.NODES, "[]")))
            except ValueError:
                nodes = []
        if not nodes or nodes[-1] != node:
            nodes.append(node)
            self.tracker.children[tid].set_tags({Tag.NODE: node, Tag.NODES: json.dumps(nodes)})
        self._nodes[tid] = nodes

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        try:
            prune_state(checkpoint)
        except Exception as exc:  # a storage hiccup costs space, never the trial
            print(f"ssdlab sweep: could not strip old checkpoints of {trial.trial_id}: {exc}", file=sys.stderr)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.outbox.submit(self._end_trial, trial, getattr(trial, "last_result", None), trial.checkpoint)

    def _end_trial(self, trial, last_result, checkpoint) -> None:
        self._ensure(trial)
        tid = trial.trial_id
        status = trial_status(last_result, self._cfg[tid].train.epochs)
        if checkpoint is not None:
            with checkpoint.as_directory() as ckpt_dir:  # the trial's outputs, whichever node wrote them
                self.tracker.end_child(tid, status, config_yaml=to_yaml(self._cfg[tid]),
                                       checkpoint=Path(ckpt_dir) / RD.BEST,
                                       detections=Path(ckpt_dir) / RD.TEST_DETECTIONS)
            return
        run_dir = trial_run_dir(self.job, tid)  # no Tune checkpoint yet: the files are in the driver-node run dir
        self.tracker.end_child(tid, status, config_yaml=to_yaml(self._cfg[tid]),
                               checkpoint=run_dir / RD.BEST, detections=run_dir / RD.TEST_DETECTIONS)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _error_line(trial)
        if _disk_full(error) and not DISK_FULL:  # the other trials would fail the same way: stop the phase
            DISK_FULL.append(_disk_full_line(trial, error))
        self.outbox.submit(self._fail_trial, trial, error)

    def _fail_trial(self, trial, error: str) -> None:
        self._ensure(trial)
        self.tracker.end_child(trial.trial_id, Status.FAILED, error=error,
                               config_yaml=to_yaml(self._cfg[trial.trial_id]))

    def on_step_end(self, iteration, trials, **info):
        if self.outbox.ops:
            self.outbox.drain()

    def on_experiment_end(self, trials, **info):
        if not self.outbox.drain(wait_s=OUTAGE_WAIT_S):
            raise RuntimeError(f"MLflow {self.outbox.uri} did not answer for {OUTAGE_WAIT_S:.0f} s; "
                               f"{len(self.outbox.ops)} run writes could not be made (the trials' state is in "
                               f"storage)")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cfg"] = {}
        state["_nodes"] = {}
        state["_precision"] = {}
        return state
