"""Sweep drivers for subprocesses: the real `ssdlab` command with the tiny trainable in place of fit, and a
driver that SIGKILLs itself at a chosen moment (kill_driver_after_logging)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

# `ssdlab sweep ARGS...` with tiny_fit as the trainable (tests/support/fake_fit.py ships itself by value)
DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
import ssd_core.train
from tests.support.fake_fit import tiny_fit
ssd_core.train.fit = tiny_fit
from ssdlab.cli import main
sys.exit(main(sys.argv[2:]))
"""


def kill_driver_after_logging(epoch: int, phase_dir: Path) -> None:
    """The injected kill, for a driver process: hook the driver's single MLflow writer so that when a trial
    that has logged `epoch` (or later) reports its next epoch, and Tune's saved experiment state in
    `phase_dir` knows the trial, the driver SIGKILLs itself before logging it. At that moment the logged
    epochs are reported and in MLflow, and the worker is one epoch ahead: the next epoch is on its last.pt
    and metrics.jsonl and in flight to the driver, and Tune's checkpoint marker is older."""
    from experiments.tracking.sweep_tracker import SweepTracker

    log_epoch = SweepTracker.log_epoch

    def tune_knows(trial_id: str) -> bool:
        return any(trial_id in p.read_text() for p in phase_dir.glob("experiment_state-*.json"))

    def hooked(self, trial_id, step, metrics):
        last = self.children[trial_id].last_step
        if last >= epoch and step == last + 1 and tune_knows(trial_id):
            os.kill(os.getpid(), signal.SIGKILL)
        return log_epoch(self, trial_id, step, metrics)

    SweepTracker.log_epoch = hooked


KILL_DRIVER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.support.fake_fit import tiny_fit
from tests.support.drivers import kill_driver_after_logging
from experiments.sweep.driver import run_sweep
from experiments.sweep.validate import load_sweep
spec = load_sweep(sys.argv[2])
kill_driver_after_logging(int(sys.argv[5]), Path(sys.argv[4]) / spec.name / "trials")
run_sweep(spec, tiny_fit, address=sys.argv[3], storage=sys.argv[4])
"""
