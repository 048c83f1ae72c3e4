"""The sweep driver's live view: a Ray Tune callback that says what the sweep is doing while it runs.

    trials done / running / pending / failed / early-stopped, the best so far (score, trial, arm, seed),
    the latest epoch and score of each running trial, elapsed time and an ETA

On a terminal it is a rich live table, redrawn as results arrive; otherwise (CI logs, a file) one plain
line per change: a trial starting, reporting an epoch, ending, failing (with its one-line error, at
once). `ssdlab sweep --quiet` turns it off. Scores are the selection metric's best so far (the schema's
`score`); "best" follows the schema's rule (finished trials; while none has finished, the best running).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Optional, TextIO

from ray import tune

from experiments.schema import COUNTED, M, Status, best_index
from experiments.sweep.job import TrialKey
from experiments.sweep.status import trial_status


@dataclass
class _Trial:
    label: str                       # "arm s0 trial-id"
    seed: Optional[int] = None
    status: str = "pending"
    epoch: int = 0
    score: float = float("nan")
    started: Optional[float] = None
    ended: Optional[float] = None


class ProgressCallback(tune.Callback):
    """One phase's progress (see the module docstring). `expected`: the trials the phase will run."""

    def __init__(self, phase: str, expected: int, epochs: int, concurrency: int, stream: Optional[TextIO] = None,
                 live: Optional[bool] = None):
        self.phase, self.expected, self.epochs = phase, int(expected), max(1, int(epochs))
        self.concurrency = max(1, int(concurrency))
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.trials: dict[str, _Trial] = {}
        self.t0 = time.monotonic()
        self._live = None

    def __getstate__(self):  # Tune pickles its callbacks with the experiment state
        return {**self.__dict__, "stream": None, "_live": None, "live": False}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.stream = sys.stdout

    # ---- Tune events
    def on_trial_start(self, iteration, trials, trial, **info):
        t = self._get(trial)
        t.status, t.started = Status.RUNNING.value, time.monotonic()
        self._changed(f"start  {t.label}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        t = self._get(trial)
        t.status, t.epoch = Status.RUNNING.value, int(result.get(M.EPOCH, t.epoch))
        score = result.get(M.SCORE)  # fit's score so far, absent before its first evaluation
        if score is not None and float(score) == float(score):
            t.score = float(score)
        self._changed(f"epoch  {t.label}: epoch {t.epoch}/{self.epochs}, {_score(t.score)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        t = self._get(trial)
        t.status, t.ended = trial_status(getattr(trial, "last_result", None), self.epochs).value, time.monotonic()
        self._changed(f"{t.status:<6} {t.label}: epoch {t.epoch}, {_score(t.score)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        from experiments.sweep.callback import _error_line

        t = self._get(trial)
        t.status, t.ended = Status.FAILED.value, time.monotonic()
        self._changed(f"FAILED {t.label}: {_error_line(trial)}")

    def on_experiment_end(self, trials, **info):
        if self._live is not None:
            self._live.update(self._table(), refresh=True)
            self._live.stop()
            self._live = None

    # ---- state
    def _get(self, trial) -> _Trial:
        tid = trial.trial_id
        if tid not in self.trials:
            try:
                key = TrialKey.of(trial.config)
                label, seed = " ".join(str(p) for p in (key.arm, f"s{key.seed}", tid) if p is not None), key.seed
            except (KeyError, TypeError, ValueError):
                label, seed = tid, None
            self.trials[tid] = _Trial(label, seed)
        return self.trials[tid]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in COUNTED}
        for t in self.trials.values():
            if t.status in out:
                out[t.status] += 1
        out["pending"] = max(0, self.expected - sum(out.values()))
        return out

    def best(self) -> Optional[_Trial]:
        """The schema's best trial (best_index); while none has finished, the best running one."""
        ids, trials = list(self.trials), list(self.trials.values())
        scores, seeds = [t.score for t in trials], [t.seed for t in trials]
        i = best_index(scores, [t.status for t in trials], seeds, ids)
        if i is None:
            i = best_index(scores, [Status.FINISHED.value] * len(trials), seeds, ids)
        return None if i is None else trials[i]

    def eta_s(self) -> Optional[float]:
        """Seconds left: the work still to do (the running trials' epochs left, the pending trials' whole
        budget) at the time a trial takes (the ended trials' mean, else the running trials' epoch rate),
        spread over the trials that run at once. It falls as epochs finish, not only when trials end."""
        now = time.monotonic()
        ended = [t.ended - t.started for t in self.trials.values() if t.ended and t.started]
        running = [t for t in self.trials.values() if t.status == Status.RUNNING.value and t.started]
        c = self.counts()
        if not c["pending"] and not running:
            return 0.0
        if ended:
            per = sum(ended) / len(ended)
        else:
            rates = [(now - t.started) / t.epoch for t in running if t.epoch]
            if not rates:
                return None
            per = self.epochs * sum(rates) / len(rates)
        left = c["pending"] * per + sum(max(0.0, per * (1 - t.epoch / self.epochs)) for t in running)
        return left / self.concurrency

    def summary(self, lines: bool = False) -> str:
        """One line (a log's), or with `lines` two short ones (a terminal's header: counts and time, then the
        best so far), each well under 100 columns."""
        c = self.counts()
        best = self.best()
        eta = self.eta_s()
        finished, stopped, failed, running = (c[s] for s in COUNTED)
        head = (f"[{self.phase}] {finished + stopped + failed}/{self.expected} done | "
                f"{running} running | {c['pending']} pending | {failed} failed | "
                f"{stopped} early-stopped | elapsed {_hms(time.monotonic() - self.t0)} | "
                f"ETA {_hms(eta) if eta is not None else '?'}")
        tail = f"best {best.score:.4f} ({best.label})" if best is not None else "best: no validation yet"
        return f"{head}\n{tail}" if lines else f"{head} | {tail}"

    # ---- output
    def _changed(self, event: str) -> None:
        if self.live:
            self._draw()
            if event.startswith("FAILED"):
                self._console().print(event)
        else:
            print(f"{event}  ||  {self.summary()}", file=self.stream, flush=True)

    def _console(self):
        from rich.console import Console
        return Console(file=self.stream)  # the terminal's own width: a wider guess wraps and leaves stale lines

    def _table(self):
        """The header (the terminal's width: a table title would wrap to the narrow table's) above the table."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(expand=False)
        for col in ("trial", "status", "epoch", "score"):
            table.add_column(col, justify="right" if col in ("epoch", "score") else "left")
        for t in sorted(self.trials.values(), key=lambda t: (t.status != Status.RUNNING.value, t.label)):
            table.add_row(Text(t.label), t.status, f"{t.epoch}/{self.epochs}",
                          f"{t.score:.4f}" if t.score == t.score else "-")
        return Group(Text(self.summary(lines=True), no_wrap=True, overflow="ellipsis"), table)  # Text: no markup

    def _draw(self) -> None:
        from rich.live import Live

        if self._live is None:
            self._live = Live(self._table(), console=self._console(), refresh_per_second=2, transient=False)
            self._live.start()
        else:
            self._live.update(self._table())


def _score(score: float) -> str:
    return f"score {score:.4f}" if score == score else "no validation yet"


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
