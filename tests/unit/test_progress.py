"""The sweep driver's live view (experiments/sweep/progress.py): one plain line per change when not on a terminal,
with counts, the best so far, a failing trial's error at once, and an ETA; driven by fake Tune trials."""
from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from experiments.sweep.progress import ProgressCallback  # noqa: E402


def trial(tid, arm, seed, **kw):
    return SimpleNamespace(trial_id=tid, config={"ssdlab": {"arm": arm, "seed": seed}}, error_file=None,
                           get_error=lambda: RuntimeError("NonFiniteLossError: loss is nan at epoch 2"), **kw)


def test_plain_lines_per_change_with_counts_best_and_errors():
    out = io.StringIO()
    cb = ProgressCallback("trials", expected=3, epochs=2, concurrency=2, stream=out, live=False)
    a, b, c = trial("t1", "base", 0), trial("t2", "aug", 0), trial("t3", "aug", 1)
    cb.on_trial_start(0, [], a)
    cb.on_trial_start(0, [], b)
    cb.on_trial_result(0, [], a, {"epoch": 1, "score": 0.30})
    cb.on_trial_result(0, [], b, {"epoch": 1, "score": 0.45})
    cb.on_trial_result(0, [], a, {"epoch": 2, "score": 0.50, "final": 1.0})
    a.last_result = {"epoch": 2, "final": 1.0}
    cb.on_trial_complete(0, [], a)
    cb.on_trial_error(0, [], b)
    lines = out.getvalue().splitlines()
    assert len(lines) == 7  # one per change
    assert lines[0].startswith("start  base s0 t1  ||  [trials] 0/3 done | 1 running | 2 pending")
    assert "epoch  aug s0 t2: epoch 1/2, score 0.4500" in lines[3] and "best 0.4500 (aug s0 t2)" in lines[3]
    assert lines[5].startswith("finished base s0 t1: epoch 2, score 0.5000")
    assert "1/3 done | 1 running | 1 pending" in lines[5] and "best 0.5000 (base s0 t1)" in lines[5]
    assert lines[6].startswith("FAILED aug s0 t2: NonFiniteLossError: loss is nan at epoch 2")  # at once
    assert "2/3 done | 0 running | 1 pending | 1 failed" in lines[6]
    assert cb.counts() == {"finished": 1, "early_stopped": 0, "failed": 1, "running": 0, "pending": 1}
    assert cb.eta_s() is not None and cb.eta_s() >= 0
    cb.on_trial_start(0, [], c)
    cb.on_trial_result(0, [], c, {"epoch": 1, "score": 0.9})
    c.last_result = {"epoch": 1, "final": 0.0}
    cb.on_trial_complete(0, [], c)  # stopped by a scheduler before its last epoch
    assert out.getvalue().splitlines()[-1].startswith("early_stopped aug s1 t3: epoch 1")
    assert cb.best().label == "base s0 t1"  # an early-stopped trial never is the best, whatever its score


def test_live_table_on_a_terminal_renders(monkeypatch):
    out = io.StringIO()
    cb = ProgressCallback("search", expected=2, epochs=3, concurrency=1, stream=out, live=True)
    t = trial("t1", None, 0)
    cb.on_trial_start(0, [], t)
    cb.on_trial_result(0, [], t, {"epoch": 1, "score": 0.2})
    cb.on_experiment_end([])
    text = out.getvalue()
    assert "[search] 0/2 done" in text and "s0 t1" in text and "0.2000" in text


def test_the_live_header_keeps_its_lines_in_a_terminal_wider_than_the_table(monkeypatch):
    """In a 150-column tmux the header wrapped to four lines: it was the table's title, which rich wraps to
    the (narrow) table's width. It is one line of counts and one of the best so far."""
    from rich.console import Console

    cb = ProgressCallback("search", expected=4, epochs=4, concurrency=2, stream=io.StringIO(), live=False)
    t = trial("t1", None, 0)
    cb.on_trial_start(0, [], t)
    out = io.StringIO()
    Console(file=out, width=150).print(cb._table())
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    assert lines[0].startswith("[search] 0/4 done | 1 running | 3 pending") and "ETA" in lines[0]
    assert lines[1].startswith("best: no validation yet") and lines[2].startswith("┏")
