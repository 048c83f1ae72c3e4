"""Where a trial and a phase stand: one rule for `finished` (result_status), the
status of a trial from its last result, a phase's trials counted by status."""
from __future__ import annotations

from typing import Callable, Optional

from experiments.schema import M, PhaseKind, Status
from experiments.sweep.plan import Phase


def expected_trials(phase: Phase) -> int:
    return phase.num_samples if phase.kind == PhaseKind.SEARCH else len(phase.trials)


NOT_STARTED = "not started"


def phase_states(results, expected: int, planned_epochs: Callable[[dict], int]) -> dict[str, int]:
    """A phase's trials by state, from each trial's own record: failed, finished or early_stopped (it
    ended in an error or its last result says done: result_status, the one rule), running (it reported but
    never ended: a stopped experiment cut it short; Tune calls such a trial TERMINATED too), not started.
    `planned_epochs(config)` is a trial's train.epochs."""
    counts = {Status.FINISHED.value: 0, Status.EARLY_STOPPED.value: 0, Status.FAILED.value: 0,
              Status.RUNNING.value: 0, NOT_STARTED: 0}
    for r in results:
        metrics = r.metrics or {}
        if r.error is not None or metrics.get("done"):
            try:
                planned = planned_epochs(r.config)
            except Exception:  # a config that no longer resolves: the trial's own `final` mark decides
                planned = 0
            state = result_status(r, planned).value
        elif metrics:
            state = Status.RUNNING.value
        else:
            state = NOT_STARTED
        counts[state] += 1
    counts[NOT_STARTED] += max(0, expected - len(results))
    return counts


def ended_count(counts: dict[str, int]) -> int:
    return counts[Status.FINISHED.value] + counts[Status.EARLY_STOPPED.value] + counts[Status.FAILED.value]


def format_counts(counts: dict[str, int]) -> str:
    """{"finished": 2, "running": 1, ...} -> '2 finished, 1 running' (zeros left out)."""
    return ", ".join(f"{n} {s.replace('_', '-')}" for s, n in counts.items() if n) or "none"


def result_status(result, planned_epochs: int = 0) -> Status:
    """A Tune Result's status: FAILED when it ended in an error, else trial_status of its last metrics
    (planned_epochs 0: a result without fit's `final` mark counts as finished)."""
    if result.error is not None:
        return Status.FAILED
    return trial_status(result.metrics or {}, planned_epochs)


def trial_status(last_result: Optional[dict], planned_epochs: int) -> Status:
    """FINISHED when the trial's last report was the epoch that ended its training (fit marks it `final`;
    for a trainable without that mark: it reached train.epochs), else EARLY_STOPPED (a scheduler)."""
    last = last_result or {}
    if M.FINAL in last:
        return Status.FINISHED if last[M.FINAL] else Status.EARLY_STOPPED
    return Status.FINISHED if int(last.get(M.EPOCH, 0)) >= planned_epochs else Status.EARLY_STOPPED
