"""Δ along the budget and the convergence mark (reports/budget.py) on fabricated stores, checked by hand:
a rising arm is marked, a flat and a noisy-flat one are not; a delta that turns along the budget is named;
each arm's decision settles at the budget point the rule (budget.settled_at) says, and the summary names the
deltas decided only at the end."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tests.support.fake_store import Run, write_sweep

EPOCHS = 12
RISE = 0.5  # the rising arm's val mAP gains 0.5 per unit of budget: +0.050 per 10%


def _curve(f, noise=()):
    return {e: f(e / EPOCHS) + (noise[e - 1] if noise else 0.0) for e in range(1, EPOCHS + 1)}


# noisy-flat: three seeds whose last-quarter slopes are +0.15, -0.15 and 0 per unit (mean 0, spread large)
NOISY = {0: lambda x: 0.60 + 0.15 * (x - 0.875) * (x >= 0.75) + 0.02 * np.sin(40 * x),
         1: lambda x: 0.61 - 0.15 * (x - 0.875) * (x >= 0.75) + 0.02 * np.cos(40 * x),
         2: lambda x: 0.59 + 0.0 * x}
# budget points: (fraction, step) with the test value of each arm at that point, per seed
POINTS = [(0.25, 3), (0.5, 6), (1.0, 12)]
TEST_AT = {  # arm -> per point -> per seed
    "flat": {0.25: [0.50, 0.52, 0.49], 0.5: [0.55, 0.56, 0.54], 1.0: [0.58, 0.59, 0.57]},
    "rising": {0.25: [0.40, 0.41, 0.42], 0.5: [0.50, 0.52, 0.51], 1.0: [0.68, 0.70, 0.69]},  # below, then above
    "noisy": {0.25: [0.50, 0.53, 0.51], 0.5: [0.54, 0.57, 0.55], 1.0: [0.59, 0.58, 0.58]},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for both sweeps of this module (its schema is created once)."""
    return f"sqlite:///{tmp_path_factory.mktemp('budget') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def data(store):
    from reports.load import read_sweep
    uri = store
    runs = []
    for seed in range(3):
        curves = {"flat": _curve(lambda x: 0.60 + 0.001 * seed),
                  "rising": _curve(lambda x: 0.20 + RISE * x + 0.003 * seed),
                  "noisy": _curve(NOISY[seed])}
        for arm, val in curves.items():
            h = {"val/mAP50": val, "test/mAP50": {EPOCHS: TEST_AT[arm][1.0][seed]}}
            h["test_at/fraction"] = {step: f for f, step in POINTS}
            h["test_at/mAP50"] = {step: TEST_AT[arm][f][seed] for f, step in POINTS}
            runs.append(Run(arm, seed, h, params={"train.epochs": EPOCHS}))
    write_sweep(uri, "budget", ["flat", "rising", "noisy"], runs)
    return read_sweep("budget", uri)


def test_a_rising_arm_is_marked_and_flat_ones_are_not(data):
    from reports import budget
    from reports.selection import arm_members
    s = budget.convergence(data, arm_members(data))
    # last quarter: epochs 9..12 (fractions 0.75..1); rising: slope exactly RISE in every seed
    assert s["rising"].slope == pytest.approx(RISE) and s["rising"].n == 3 and s["rising"].points == 4
    assert s["rising"].rising and s["rising"].mark() == "still rising: +0.050 per 10% of budget"
    assert not s["flat"].rising and s["flat"].slope == pytest.approx(0.0, abs=1e-9)
    noisy = s["noisy"]
    slopes = []
    for seed in range(3):
        x = np.arange(9, 13) / EPOCHS
        slopes.append(sps.linregress(x, [NOISY[seed](v) for v in x]).slope)
    half = sps.t.ppf(0.975, 2) * np.std(slopes, ddof=1) / math.sqrt(3)
    assert noisy.slope == pytest.approx(np.mean(slopes)) and noisy.low == pytest.approx(np.mean(slopes) - half)
    assert noisy.low < 0 < noisy.high and not noisy.rising and noisy.mark() == ""


def test_the_tables_mark_the_rising_arm_with_a_footnote(data):
    from reports.tables import ablation_table, summary_table
    summary = summary_table(data)
    notes = {r[1]: r[3] for r in summary.rows}
    assert notes["rising"].endswith("(still rising: +0.050 per 10% of budget)")
    assert "still rising" not in notes["flat"] + notes["noisy"]
    assert any(n.startswith("Still rising at the end: rising (+0.050 per 10% of budget)") and "budget-limited" in n
               for n in summary.notes)
    abl = ablation_table(data)
    end = abl.columns.index("At the end")
    assert [r[end] for r in abl.rows] == ["–", "still rising: +0.050 per 10% of budget", "–"]
    assert any("budget-limited" in n for n in abl.notes)


def test_deltas_along_the_budget_by_hand_and_a_turning_delta_is_named(data):
    from reports import budget
    from reports.selection import arm_members
    from reports.tables import summary_table
    deltas = budget.point_deltas(data, budget.budget_values(data, arm_members(data)))
    got = {(d.arm, d.fraction): d for d in deltas}
    assert sorted(got) == sorted((a, f) for a in TEST_AT for f, _ in POINTS)
    for f, _ in POINTS:
        d = np.subtract(TEST_AT["rising"][f], TEST_AT["flat"][f])
        half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
        r = got[("rising", f)]
        assert r.method == "paired" and r.delta == pytest.approx(d.mean())  # no detections logged: paired t
        assert (r.low, r.high) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
        assert got[("flat", f)].method == "baseline" and got[("flat", f)].mean.mean == pytest.approx(np.mean(TEST_AT["flat"][f]))
    assert [got[("rising", f)].verdict for f, _ in POINTS] == ["-", "-", "+"]
    moved = budget.changes(deltas)
    assert set(moved) == {"rising"} and "-0.093 at 0.25 (below 0)" in moved["rising"] and "at 1 (above 0)" in moved["rising"]
    t = budget.budget_table(data, deltas)
    assert t.columns[:3] == ["Arm", "Budget", "Seeds"] and len(t.rows) == 9
    assert t.rows[3][:4] == ["rising", "0.25", "3", "0.410 ± 0.010"]
    assert any(n.startswith("rising: the delta changes sign or significance along the budget") for n in t.notes)
    assert any("Δ along the budget: rising's delta changes sign" in n for n in summary_table(data).notes)


def test_the_report_has_the_budget_table_and_plot(data):
    from reports.report import build_report
    r = build_report("budget", data.tracking_uri)
    assert "budget" in r.plots and r.plots["budget"].startswith(b"\x89PNG")
    assert [t.name for t in r.tables][:3] == ["summary", "ablation", "budget"]


# ------------------------------------------------------------------ when a decision settled (budget.settled_at)
# sweep "settle": per seed, arm value = baseline value + a per-seed difference whose paired 95% t interval
# over the 3 seeds is known by hand (t(0.975, 2) = 4.303):
PLUS = [0.10, 0.11, 0.12]        # mean +0.110, sd 0.010, half 0.025: above 0 ('+')
MINUS = [-0.10, -0.11, -0.12]    # '-'
UP = [0.05, -0.03, 0.01]         # mean +0.010, sd 0.040, half 0.099: contains 0 ('0'), delta > 0
DOWN = [-0.05, 0.03, -0.01]      # '0', delta < 0
BASE = [0.50, 0.52, 0.49]
S_POINTS = [(0.125, 1), (0.25, 2), (0.5, 4), (1.0, 8)]
SETTLE = {  # arm -> its difference at each point of S_POINTS
    "early": [UP, PLUS, PLUS, PLUS],         # '+' from 0.25 on: settled at 0.25
    "flips": [PLUS, PLUS, PLUS, UP],         # the verdict changes at the last point: not settled
    "steady": [MINUS, MINUS, MINUS, MINUS],  # the same verdict everywhere: settled at the first point
    "crossing": [UP, UP, UP, DOWN],          # '0' everywhere, but the delta crosses 0 at the last point
    "mid": [UP, UP, PLUS, PLUS],             # settled at 0.5: before the end, not named
}
S_ARMS = ["base", *SETTLE, "one_seed"]       # one_seed: a single run, no interval at any point


@pytest.fixture(scope="module")
def settling(store, data):  # after `data`: both sweeps in one store
    from reports.load import read_sweep
    runs = []
    for arm in S_ARMS:
        for seed in range(1 if arm == "one_seed" else 3):
            diffs = SETTLE.get(arm, [[0.0] * 3] * len(S_POINTS) if arm == "base" else [PLUS] * len(S_POINTS))
            at = {step: BASE[seed] + diffs[i][seed] for i, (_, step) in enumerate(S_POINTS)}
            h = {"val/mAP50": {e: 0.6 for e in range(1, 9)}, "test/mAP50": {8: at[8]},
                 "test_at/fraction": {step: f for f, step in S_POINTS}, "test_at/mAP50": at}
            runs.append(Run(arm, seed, h, params={"train.epochs": 8}))
    write_sweep(store, "settle", S_ARMS, runs)
    return read_sweep("settle", store)


def _points(d):
    from reports import budget
    from reports.selection import arm_members
    return budget.point_deltas(d, budget.budget_values(d, arm_members(d)))


def test_settled_at_is_the_point_from_which_the_decision_stands(settling, data):
    from reports import budget
    deltas = _points(settling)
    verdicts = {a: [d.verdict for d in deltas if d.arm == a] for a in S_ARMS}
    assert verdicts == {"base": ["?"] * 4, "early": ["0", "+", "+", "+"], "flips": ["+", "+", "+", "0"],
                        "steady": ["-"] * 4, "crossing": ["0"] * 4, "mid": ["0", "0", "+", "+"],
                        "one_seed": ["?"] * 4}
    assert budget.settled_at(deltas) == {"early": 0.25, "flips": None, "steady": 0.125, "crossing": None,
                                         "mid": 0.5}  # the baseline and one_seed (no interval) have none
    # the first store: rising goes -, -, + (not settled); noisy contains 0 with a positive delta throughout
    assert budget.settled_at(_points(data)) == {"rising": None, "noisy": 0.25}
    # one budget point: every arm settles at it, and nothing was decided "only at the end"
    last = [d for d in deltas if d.fraction == 1.0]
    assert budget.settled_at(last) == {"early": 1.0, "flips": 1.0, "steady": 1.0, "crossing": 1.0, "mid": 1.0}
    assert budget.late_note(last) == ""


def test_the_budget_table_has_the_settled_column(settling):
    import io

    import pandas as pd

    from reports import budget, render
    t = budget.budget_table(settling, _points(settling))
    assert t.columns[-1] == "Settled" and t.raw_columns[-1] == "settled_at" and len(t.rows) == 4 * len(S_ARMS)
    cells = {a: [r[-1] for r in t.rows if r[0] == a] for a in S_ARMS}  # the arm's value on its last row
    assert cells == {"base": ["", "", "", "–"], "early": ["", "", "", "settled at 0.25"],
                     "flips": ["", "", "", "not settled"], "steady": ["", "", "", "settled at 0.125"],
                     "crossing": ["", "", "", "not settled"], "mid": ["", "", "", "settled at 0.5"],
                     "one_seed": ["", "", "", "–"]}
    csv = pd.read_csv(io.StringIO(render.table_csv(t)))
    assert csv["settled_at"].dtype == float
    got = csv.groupby("arm", sort=False)["settled_at"].agg(lambda s: sorted(set(s.fillna(-1)))).to_dict()
    assert got == {"base": [-1], "early": [0.25], "flips": [-1], "steady": [0.125], "crossing": [-1],
                   "mid": [0.5], "one_seed": [-1]}  # the same value on every row of the arm; empty: none
    assert any(n.startswith("Settled: the smallest budget point") for n in t.notes)
    assert "| mid | 1 | 3 |" in render.table_markdown(t) and "| settled at 0.5 |" in render.table_markdown(t)
    assert r"settled at 0.125 \\" in render.table_latex(t)


def test_the_summary_names_the_deltas_decided_only_at_the_end(settling, data):
    from reports.tables import summary_table
    late = [n for n in summary_table(settling).notes if n.startswith("Δ along the budget, decided only at the end")]
    assert len(late) == 1 and late[0].startswith(
        "Δ along the budget, decided only at the end: "
        "flips (not settled: +0.010 at 1 (contains 0) after +0.110 at 0.5 (above 0)), "
        "crossing (not settled: -0.010 at 1 (contains 0) after +0.010 at 0.5 (contains 0)); ")
    assert not any(a in late[0].split(";")[0] for a in ("early", "steady", "mid", "one_seed"))
    first = [n for n in summary_table(data).notes if "decided only at the end" in n]
    assert len(first) == 1 and first[0].startswith("Δ along the budget, decided only at the end: rising (not "
                                                    "settled: +0.110 at 1 (above 0) after -0.040 at 0.5 (below 0))")


def test_the_written_report_carries_the_settled_column(settling, tmp_path):
    import pandas as pd

    from reports.report import build_report, write_report
    write_report(build_report("settle", settling.tracking_uri, with_plots=False), tmp_path, ("md", "csv", "tex"))
    csv = pd.read_csv(tmp_path / "budget.csv")
    assert csv[csv["arm"] == "early"]["settled_at"].tolist() == [0.25] * 4
    assert csv[csv["arm"] == "flips"]["settled_at"].isna().all()
    md = (tmp_path / "report.md").read_text()
    assert "| p | Settled |" in md and "| settled at 0.25 |" in md and "decided only at the end: flips" in md
    assert "not settled" in (tmp_path / "report.tex").read_text()
