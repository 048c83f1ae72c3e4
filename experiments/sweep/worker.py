"""The worker side of a sweep: what runs inside each Ray Tune trial. No MLflow here (workers never log
to it); Ray is imported only inside the functions that need it.

    TrialKey      a trial's identity (arm, seed, searched params, the search trial a confirm run retrains)
    TrialJob      what every worker needs (shipped once via tune.with_parameters); .config(key) resolves
                  and caches the trial's ExperimentConfig
    run_trial     the Tune trainable: resume from the trial's newest consistent state, call fit
    TuneReporter  fit callback: each epoch -> ray.tune.report(metrics, checkpoint)

Where a trial's files live (docs/cluster.md). The run dir (last.pt, best.pt, metrics.jsonl, config.yaml,
the test detections) is node-local scratch: `<storage>/trials/<trial id>` on the driver's node when the
storage is a local folder (a single-machine sweep keeps everything in runs/ray/<name>/), else
`$SSDLAB_SCRATCH` (default `<tmp>/ssdlab-scratch`)`/<Ray node id>/<trial id>` on the node that runs it.
Each epoch's Tune checkpoint, which Tune writes under `--storage` (a shared folder or a URI), carries a
marker (`reported.json`: the epoch Tune is told about, and the epoch of the state beside it) and the run
dir's files; the driver strips the weights from all but the newest KEEP_STATE checkpoints of a trial
(Tune itself deletes none: the checkpoint its last saved experiment state names always exists).

Resuming: the newest consistent state is the newest of the run dir's own last.pt (on the node that wrote
it: fit writes it first and checks its config hash) and the newest checkpoint in storage that still has
its weights (any node); the Tune checkpoint's marker names the epoch Tune has seen, and the epochs after
it are reported again from last.pt's history, so Tune, ASHA and MLflow get one continuous history whatever
moment a driver, a worker or a whole node died.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from experiments.schema import M
from experiments.sweep.checkpoints import read_marker, restore_newest_state, stage_state
from experiments.sweep.job import (
    DATA_KEY,
    NO_OBJECTIVE,
    NODE_KEY,
    OBJECTIVE,
    PRECISION_KEY,
    REPORTED,
    SCRATCH_ENV,
    TrialJob,
)
from ssd_core import rundir as RD
from ssd_core.config import ExperimentConfig, config_hash
from ssd_core.errors import NonFiniteLossError


class TuneReporter:
    """fit callback in the worker: each epoch -> `ray.tune.report(metrics, checkpoint)`.

    The searcher's objective is the run's score so far, read from fit's metrics (`score`: its best val
    metric, the best.pt epoch; ssd_core/metrics.py), never recomputed here: NO_OBJECTIVE until fit has
    one. The Tune checkpoint is a marker naming the epoch (and config hash) and, with
    `carry_state`, the run dir's files (STATE_FILES) as they are now: their last.pt is at least as new as
    the epoch reported (it is written first; the marker's `state_epoch` says which epoch it holds).
    `node` (node_identity) goes with every result, for the driver's `ssdlab.node` tag."""

    def __init__(self, config_hash: str = "", node: str = "", carry_state: bool = False,
                 cfg: Optional[ExperimentConfig] = None, threads: Optional[int] = None):
        self.config_hash = config_hash
        self.node, self.carry_state = node, carry_state
        self.cfg, self.threads = cfg, threads  # deploy.bench: measured at the final epoch with `threads`
        self.state_epoch: Optional[int] = None  # while replaying: the epoch of the last.pt being replayed
        self.objective = NO_OBJECTIVE  # the latest score fit reported

    def on_fit_start(self, cfg, run_dir) -> None: ...

    def on_fit_end(self, result) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict, run_dir) -> None:
        from ray import tune

        if M.SCORE in metrics:
            self.objective = float(metrics[M.SCORE])
        result = {**metrics, **system_metrics(), M.EPOCH: int(epoch), OBJECTIVE: self.objective}
        if metrics.get(M.FINAL) and run_dir is not None:
            from ssd_core import deploy as DP
            if self.state_epoch is None:
                from experiments.evidence import write_evidence
                write_evidence(Path(run_dir))  # detections.png, pr_curves.png: carried with the final checkpoint
                result.update(DP.measure_run(self.cfg, run_dir, self.threads))  # deploy/* (deploy.bench)
            else:  # replaying the final epoch: what was measured then (or now, if the kill came before that)
                result.update(DP.saved_run_metrics(run_dir) or DP.measure_run(self.cfg, run_dir, self.threads))
        if self.node:
            result[NODE_KEY] = self.node
        record = Path(run_dir) / RD.DATA_RECORD if run_dir is not None else None
        if record is not None and record.is_file():  # what the trial trains and is scored on (the driver logs it)
            result[DATA_KEY] = record.read_text()
        if self.cfg is not None:
            from ssd_core.build import resolve_device
            from ssd_core.precision import resolve
            result[PRECISION_KEY] = resolve(self.cfg.train, resolve_device(self.cfg)).describe()
        carry = self.carry_state and run_dir is not None and Path(run_dir).is_dir()
        # inside the run dir when it carries files: hard links to last.pt / best.pt need the same filesystem
        with tempfile.TemporaryDirectory(prefix=".ssdlab-ckpt-", dir=str(run_dir) if carry else None) as tmp:
            marker = {"epoch": int(epoch), "iteration": metrics.get(M.ITERATION), "config_hash": self.config_hash,
                      "state_epoch": int(epoch) if self.state_epoch is None else self.state_epoch}
            try:
                if carry:
                    stage_state(Path(run_dir), Path(tmp))
                (Path(tmp) / REPORTED).write_text(json.dumps(marker))
            except OSError as exc:  # staging the reported state: a full disk says which one and how much is free
                from ssd_core.errors import disk_full
                raise disk_full(getattr(exc, "filename", None) or tmp, exc) or exc  # noqa: B904 (as storage.py)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))

    def replay(self, last_checkpoint: Path, after_epoch: int) -> int:
        """Report again the epochs of `last_checkpoint`'s history after `after_epoch`: a driver killed
        between a worker's report and Tune's state snapshot loses them from Tune's view, while last.pt
        (the newest consistent state) has them. Returns how many were replayed."""
        from ssd_core.checkpoint import load_checkpoint
        from ssd_core.errors import CheckpointError

        try:
            history = load_checkpoint(last_checkpoint).get("history") or []
        except CheckpointError:
            return 0
        todo = [m for m in history if int(m.get(M.EPOCH, 0)) > after_epoch]
        self.state_epoch = max((int(m.get(M.EPOCH, 0)) for m in history), default=None)
        try:
            for m in todo:
                self.on_epoch_end(int(m[M.EPOCH]), m, last_checkpoint.parent)
        finally:
            self.state_epoch = None
        return len(todo)


@functools.lru_cache(maxsize=None)
def _process(pid: Optional[int] = None):
    """One psutil.Process per process: cpu_percent(interval=None) measures since the previous call on the SAME
    object (a new object's first call is always 0.0). Primed here, so the first epoch's value is real."""
    import psutil

    proc = psutil.Process(pid or os.getpid())
    proc.cpu_percent(interval=None)
    return proc


def system_metrics() -> dict[str, float]:
    """The worker's CPU %, resident memory, and GPU utilisation and memory when there is one: sent with
    each epoch's metrics to the driver, which logs them like the rest (ssd_core/metrics.py `sys/...`)."""
    out: dict[str, float] = {}
    try:
        proc = _process(os.getpid())
        out[M.SYS_CPU] = float(proc.cpu_percent(interval=None))  # since the previous epoch's call
        out[M.SYS_RSS] = proc.memory_info().rss / 2**20
    except Exception:  # psutil missing or a sandbox without /proc: no system metrics, never a failed trial
        pass
    try:
        import torch
        if torch.cuda.is_available():
            out[M.SYS_GPU_MEM] = torch.cuda.max_memory_allocated() / 2**20
            out[M.SYS_GPU_UTIL] = float(torch.cuda.utilization())
    except Exception:
        pass
    return out


def node_identity() -> tuple[str, str]:
    """("<hostname>/<ip>/<Ray node id>", Ray node id) of the node this process runs on."""
    import socket

    import ray

    node_id = ray.get_runtime_context().get_node_id()
    try:
        ip = ray.util.get_node_ip_address()
    except Exception:  # never fail a trial over a label
        ip = "?"
    return f"{socket.gethostname()}/{ip}/{node_id}", node_id


def scratch_root() -> Path:
    """A node's scratch folder for trial run dirs: $SSDLAB_SCRATCH, else <tmp>/ssdlab-scratch."""
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "ssdlab-scratch")


def trial_run_dir(job: TrialJob, trial_id: str, node_id: Optional[str] = None) -> Path:
    """The trial's run directory (last.pt, best.pt, metrics.jsonl) on the node `node_id`: node-local scratch.

    `<storage>/trials/<trial_id>` when the storage is a local folder and the node is the driver's, so a single-machine sweep keeps its files together; else
    `scratch_root()/<node id>/<trial_id>` (the node id keeps two nodes on one host apart). Not inside
    Ray's trial folder: Ray syncs that folder to storage while the trial writes, and would trip over the
    atomic checkpoint writes' temporary files. Tune's checkpoints in storage are what any node resumes from."""
    from experiments.sweep.storage import local_path

    local = local_path(job.storage)
    if local is not None and (node_id is None or node_id == job.driver_node):
        return local / "trials" / trial_id
    return scratch_root() / (node_id or "unknown-node") / trial_id


def check_data_root(cfg: ExperimentConfig, node: str) -> None:
    """Fail at once, naming the node and the path, when this node cannot read the trial's data root (a
    synthetic set is made here when missing: it is deterministic, every node gets the same images)."""
    from ssd_core.errors import DataError

    root = cfg.data.root
    if not root:
        return  # unresolved: fit says which key is missing
    path = Path(root)
    if cfg.data.synthetic is not None:
        from ssd_core.synth import ensure_synthetic

        try:
            ensure_synthetic(path, **cfg.data.synthetic.generator_args())
        except OSError as exc:
            raise DataError(f"node {node} cannot create the synthetic data set at data.root {path}: "
                            f"{exc.strerror or exc}") from None
        return
    yaml_file = cfg.data.format == "yolo" and path.suffix in (".yaml", ".yml")  # a YOLO data.yaml is the root
    if not path.exists():
        why = "no such file" if yaml_file else "no such folder"
    elif not path.is_dir() and not yaml_file:
        why = "not a folder"
    elif not os.access(path, os.R_OK | (0 if yaml_file else os.X_OK)):
        why = "not readable"
    else:
        return
    raise DataError(f"node {node} cannot read data.root {path}: {why} (every node that runs trials needs "
                    f"the data at this path; docs/cluster.md)")


def run_trial(config: dict[str, Any], job: TrialJob) -> None:
    """The Tune trainable: resolve the trial config, check the data root on this node, resume from the
    newest consistent state, train.

    The newest consistent state is the newest of the run dir's last.pt and the trial's newest checkpoint
    in storage (restore_newest_state; fit checks the config hash); Tune's checkpoint marker says which
    epoch Tune has seen, and the epochs after it are reported again first, so Tune, ASHA and MLflow get
    one continuous history whatever moment a driver, a worker or a node died."""
    from ray import tune

    cfg = job.config_of(config)
    from ssd_core.build import cap_gpu_memory
    cap_gpu_memory(job.gpu)
    node, node_id = node_identity()
    check_data_root(cfg, node)
    run_dir = trial_run_dir(job, tune.get_context().get_trial_id(), node_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / RD.NONFINITE_MARKER
    if marker.exists():  # a retry of a trial whose loss went non-finite: fail again, at once
        raise NonFiniteLossError(marker.read_text())
    seen = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        reported = read_marker(checkpoint.filesystem, checkpoint.path)
        try:
            seen = int(reported["epoch"]) if reported else 0
        except (KeyError, ValueError, TypeError):
            seen = 0
        restore_newest_state(checkpoint, run_dir)
    reporter = TuneReporter(config_hash(cfg), node=node, carry_state=True,
                            cfg=cfg, threads=max(1, int(job.spec.file.resources.cpu)))
    resume = (run_dir / RD.LAST).is_file()
    if resume:
        reporter.replay(run_dir / RD.LAST, seen)
    try:
        job.train_fn(cfg, callbacks=[reporter], run_dir=run_dir, resume=resume)
    except NonFiniteLossError as exc:
        marker.write_text(str(exc))
        raise
    if run_dir.is_relative_to(scratch_root()):
        shutil.rmtree(run_dir, ignore_errors=True)  # node scratch: the trial's state is in storage
