"""reports.stats (mean ± std, paired-t delta with its CI and p) and reports.render, checked by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from reports import render, stats
from reports.search import distributions
from reports.tables import Table, fmean, fnum, fp

T_0975_2 = 4.302652729749464  # t_{0.975, 2} (tables)
T_0975_3 = 3.182446305284263  # t_{0.975, 3}


def test_mean_std_sample_std_and_degenerate_cases():
    m = stats.mean_std([0.48, 0.50, 0.49])
    assert (m.mean, m.std, m.n) == (pytest.approx(0.49), pytest.approx(0.01), 3)
    one = stats.mean_std([0.4])
    assert one.mean == 0.4 and math.isnan(one.std) and one.n == 1
    empty = stats.mean_std([math.nan, None])
    assert empty.n == 0 and math.isnan(empty.mean)
    assert stats.mean_std([1.0, math.nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)


def test_paired_delta_by_hand_and_against_ttest_rel():
    base = {0: 0.48, 1: 0.50, 2: 0.49, 3: 0.47}
    arm = {0: 0.58, 1: 0.61, 2: 0.57, 3: 0.60, 9: 0.99}  # seed 9 has no partner: left out
    d = np.array([0.10, 0.11, 0.08, 0.13])
    mean, sd = 0.105, math.sqrt(((d - 0.105) ** 2).sum() / 3)
    half = T_0975_3 * sd / 2
    r = stats.paired_delta(arm, base)
    assert r.method == "paired" and r.n == 4
    assert r.delta == pytest.approx(mean)
    assert (r.low, r.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    t = mean / (sd / 2)
    assert r.p == pytest.approx(2 * sps.t.sf(t, 3))
    assert r.p == pytest.approx(sps.ttest_rel([0.58, 0.61, 0.57, 0.60], [0.48, 0.50, 0.49, 0.47]).pvalue)


def test_paired_delta_zero_spread_and_confidence_level():
    r = stats.paired_delta({0: 0.6, 1: 0.7}, {0: 0.5, 1: 0.6})  # both differences exactly 0.1
    assert r.delta == pytest.approx(0.1) and r.low == pytest.approx(0.1) and r.high == pytest.approx(0.1)
    assert r.p == 0.0
    same = stats.paired_delta({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
    assert same.delta == 0 and same.p == 1.0
    r90 = stats.paired_delta({0: 0.58, 1: 0.61, 2: 0.57}, {0: 0.48, 1: 0.50, 2: 0.49}, confidence=0.9)
    r95 = stats.paired_delta({0: 0.58, 1: 0.61, 2: 0.57}, {0: 0.48, 1: 0.50, 2: 0.49})
    sd = np.std([0.10, 0.11, 0.08], ddof=1)
    assert r95.high - r95.delta == pytest.approx(T_0975_2 * sd / math.sqrt(3))
    assert r90.high - r90.delta == pytest.approx(2.919985580355516 * sd / math.sqrt(3))


def test_unpaired_welch_single_and_empty_fallbacks():
    a, b = [0.52, 0.54], [0.48, 0.50, 0.49]
    w = stats.paired_delta({10: 0.52, 11: 0.54}, {0: 0.48, 1: 0.50, 2: 0.49})
    va, vb = np.var(a, ddof=1) / 2, np.var(b, ddof=1) / 3
    dof = (va + vb) ** 2 / (va**2 / 1 + vb**2 / 2)
    half = sps.t.ppf(0.975, dof) * math.sqrt(va + vb)
    assert w.method == "welch" and w.delta == pytest.approx(0.04)
    assert (w.low, w.high) == (pytest.approx(0.04 - half), pytest.approx(0.04 + half))
    assert w.p == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    s = stats.paired_delta({0: 0.40}, {0: 0.48, 1: 0.50, 2: 0.49})
    assert s.method == "single" and s.delta == pytest.approx(-0.09) and math.isnan(s.low) and math.isnan(s.p)
    assert stats.paired_delta({}, {0: 0.5}).method == "none"
    assert "t(0.975, n-1)" in stats.footnote("paired") and "Welch" in stats.footnote("welch")


def test_number_formats():
    assert fnum(0.4904) == "0.490" and fnum(0.0967, sign=True) == "+0.097" and fnum(math.nan) == "–"
    assert fmean(stats.MeanStd(0.58667, 0.02082, 3)) == "0.587 ± 0.021"
    assert fmean(stats.MeanStd(0.4, math.nan, 1)) == "0.400" and fmean(stats.MeanStd(math.nan, math.nan, 0)) == "–"
    assert (fp(0.00822), fp(0.0004), fp(math.nan)) == ("0.008", "<0.001", "–")


def _table():
    return Table("t", "A & B_1", ["No", "mAP@0.5", "Note"], [["1", "0.490 ± 0.010", "a|b 100%"]],
                 [[1, 0.49, math.nan]], bold={(0, 1)}, notes=["n_1"], numeric={0, 1},
                 raw_columns=["no", "mean", "std"])


def test_render_markdown_latex_csv_html_escape_and_bold():
    t = _table()
    md = render.table_markdown(t)
    assert md.splitlines() == ["| No | mAP@0.5 | Note |", "|---:|---:|---|",
                               "| 1 | **0.490 ± 0.010** | a\\|b 100% |"]
    tex = render.table_latex(t)
    assert r"\caption{A \& B\_1}" in tex and r"\textbf{0.490 $\pm$ 0.010} & a|b 100\% \\" in tex
    assert r"\begin{tabular}{rrl}" in tex
    assert render.table_csv(t) == "no,mean,std\n1,0.49,\n"
    page = render.html_page("T <x>", [t], {"curve": b"\x89PNG"})
    assert "<title>T &lt;x&gt;</title>" in page and "<b>0.490 ± 0.010</b>" in page
    assert 'src="data:image/png;base64,iVBORw==' in page


def test_search_space_to_optuna_distributions():
    """The report reads the stored space with the sweep's own parser (experiments.schema.parse_space):
    the sweep-file form, and nothing looser; an unreadable space gives no distributions."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    d = distributions({
        "train.lr": {"loguniform": [1e-4, 1e-2]},
        "train.momentum": {"uniform": [0.8, 0.99]},
        "train.batch_size": {"int": [8, 32]},
        "augment.zoom_out.p": {"choice": [0.0, 0.5]},
        "augment.zoom_out.max": {"uniform": [1.5, 3.0], "when": {"augment.zoom_out.p": 0.5}},
    })
    assert d == {"train.lr": FloatDistribution(1e-4, 1e-2, log=True),
                 "train.momentum": FloatDistribution(0.8, 0.99),
                 "train.batch_size": IntDistribution(8, 32),
                 "augment.zoom_out.p": CategoricalDistribution([0.0, 0.5]),
                 "augment.zoom_out.max": FloatDistribution(1.5, 3.0)}
    assert distributions({"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}) == {}


# --------------------------------------------------------------------------- bootstrap over test images


def _two_image_runs():
    """Image 0 holds box A, image 1 box B (one class). The arm finds both (AP 1 on any resample); the
    baseline finds only A."""
    from ssd_core.evaluate import voc_matches
    gt = dict(gt_image=[0, 1], gt_label=[1, 1], gt_boxes=[[0, 0, 10, 10], [0, 0, 10, 10]], gt_difficult=[False, False])
    arm = voc_matches([0, 1], [1, 1], [0.9, 0.8], [[0, 0, 10, 10], [0, 0, 10, 10]], **gt, class_names=["c"])
    base = voc_matches([0], [1], [0.9], [[0, 0, 10, 10]], **gt, class_names=["c"])
    return arm, base


def test_bootstrap_by_hand_on_two_images():
    """Resamples of 2 images: (A, A) w.p. 1/4 -> baseline AP 1, delta 0; (A, B) w.p. 1/2 -> baseline
    recall 1/2 at precision 1, 11-point AP 6/11, delta 5/11; (B, B) w.p. 1/4 -> baseline AP 0, delta 1."""
    from reports.stats import paired_bootstrap
    arm, base = _two_image_runs()
    b = paired_bootstrap({0: arm}, {0: base}, num_images=2, resamples=4000, seed=1)
    assert b.delta == pytest.approx(5 / 11) and b.n == 1 and not b.seeds and b.resamples == 4000
    assert (b.low, b.high) == (0.0, pytest.approx(1.0))
    b2 = paired_bootstrap({0: arm}, {0: base}, num_images=2, resamples=4000, seed=1)
    assert b2 == b  # reproducible with a seed
    # the resampled deltas take exactly the three values, with the hand-computed probabilities
    from ssd_core.evaluate import weighted_voc
    counts = {}
    rng = np.random.default_rng(7)
    for _ in range(4000):
        w = np.bincount(rng.integers(0, 2, 2), minlength=2)
        d = round(weighted_voc(arm, w)["mAP50"] - weighted_voc(base, w)["mAP50"], 9)
        counts[d] = counts.get(d, 0) + 1
    assert set(counts) == {0.0, round(5 / 11, 9), 1.0}
    for value, prob in ((0.0, 0.25), (round(5 / 11, 9), 0.5), (1.0, 0.25)):
        assert abs(counts[value] / 4000 - prob) < 4 * math.sqrt(prob * (1 - prob) / 4000)
    # p: the share of resampled deltas <= 0 is ~1/4, so p ~ 1/2
    assert b.p == pytest.approx(0.5, abs=0.05)


def test_bootstrap_resamples_seeds_too_and_a_clear_win_excludes_zero():
    from reports.stats import paired_bootstrap
    arm, base = _two_image_runs()
    same = paired_bootstrap({0: base, 1: base}, {0: base, 1: base}, num_images=2, resamples=200, seed=0)
    assert same.delta == 0 and same.low == same.high == 0 and same.seeds
    win = paired_bootstrap({0: arm, 1: arm}, {0: base, 1: base}, num_images=2, resamples=200, seed=0,
                           confidence=0.4)
    assert win.n == 2 and win.seeds and 0 <= win.low <= win.delta <= win.high
    missing = paired_bootstrap({0: arm}, {1: base}, num_images=2)
    assert math.isnan(missing.delta) and missing.n == 0


def test_csv_cells_are_numbers_pandas_reads_back():
    """NumPy 2 scalars used to be written as `np.float64(0.021...)`: unreadable as numbers."""
    import io

    import pandas as pd
    t = Table("per_class", "t", ["Arm", "AP"], [["a", "0.021"]], [["a", np.float64(0.0213), np.int64(3), float("nan"), [0, 1]]])
    t.raw_columns = ["arm", "ap", "n", "missing", "seeds"]
    text = render.table_csv(t)
    assert text == "arm,ap,n,missing,seeds\na,0.0213,3,,0 1\n" and "np." not in text
    back = pd.read_csv(io.StringIO(text))
    assert back["ap"].dtype == float and back["ap"][0] == 0.0213 and math.isnan(back["missing"][0])


def test_html_notes_show_code_spans_and_plots_get_titles():
    t = Table("s", "Summary", ["No"], [["1"]], [[1]], notes=["A run's `val/mAP50` <b>"])
    page = render.html_page("T", [t, ("text", "Source", "Sweep `demo`")], {"deltas": b"\x89PNG"})
    assert "<code>val/mAP50</code> &lt;b&gt;" in page and "<code>demo</code>" in page and "`" not in page
    assert "<h2>Which change bought how much" in page and "<h2>deltas</h2>" not in page
