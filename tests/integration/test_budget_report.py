"""Δ along the budget and the convergence mark (reports/budget.py) on fabricated stores, checked by hand:
a rising arm is marked, a flat and a noisy-flat one are not; a delta that turns along the budget is named."""
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
def data(tmp_path_factory):
    from reports.load import read_sweep
    uri = f"sqlite:///{tmp_path_factory.mktemp('budget') / 'mlflow.db'}"
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
