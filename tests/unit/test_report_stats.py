"""reports.stats (mean ± std, paired-t delta with its CI and p) and reports.render, checked by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from reports import render, stats
from reports.fmt import Table, fmean, fnum, fp
from reports.search import distributions

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


def test_one_seed_interval_is_the_image_bootstrap_by_hand():
    """Resamples of 2 images: (A, A) w.p. 1/4 -> baseline AP 1, delta 0; (A, B) w.p. 1/2 -> baseline
    recall 1/2 at precision 1, 11-point AP 6/11, delta 5/11; (B, B) w.p. 1/4 -> baseline AP 0, delta 1.
    With one seed the interval is the normal interval of that bootstrap distribution: variance
    1/2 (5/11)^2 + 1/4 - (1/2 5/11 + 1/4)^2."""
    from reports.stats import ablation_interval
    arm, base = _two_image_runs()
    iv = ablation_interval({0: arm}, {0: base}, num_images=2, resamples=4000, seed=1)
    var = 0.5 * (5 / 11) ** 2 + 0.25 - (0.5 * 5 / 11 + 0.25) ** 2
    assert iv.delta == pytest.approx(5 / 11) and iv.n == 1 and iv.method == "images" and iv.resamples == 4000
    assert iv.seed_se == 0 and iv.image_se == pytest.approx(math.sqrt(var), rel=0.05)
    assert (iv.low, iv.high) == (pytest.approx(iv.delta - 1.959964 * iv.image_se),
                                 pytest.approx(iv.delta + 1.959964 * iv.image_se))
    assert iv.p == pytest.approx(2 * sps.norm.sf(iv.delta / iv.image_se))
    assert ablation_interval({0: arm}, {0: base}, num_images=2, resamples=4000, seed=1) == iv  # reproducible
    # the batched re-scoring takes exactly the three values, with the hand-computed probabilities
    from ssd_core.evaluate import weighted_voc_batch
    w = np.random.default_rng(7).multinomial(2, [0.5, 0.5], size=4000)
    d = np.round(weighted_voc_batch(arm, w) - weighted_voc_batch(base, w), 9)
    values, counts = np.unique(d, return_counts=True)
    assert values.tolist() == [0.0, round(5 / 11, 9), 1.0]
    for c, prob in zip(counts, (0.25, 0.5, 0.25)):
        assert abs(c / 4000 - prob) < 4 * math.sqrt(prob * (1 - prob) / 4000)


def test_two_seed_interval_adds_the_common_image_term_to_the_paired_t():
    """Identical seeds: the seed term is 0 and the image term is the whole image variance (every seed
    moves with the test set). Two seeds whose only difference is a constant: the seed term is the paired
    t's, and the image term is as before."""
    from reports.stats import ablation_interval, combine
    arm, base = _two_image_runs()
    same = ablation_interval({0: base, 1: base}, {0: base, 1: base}, num_images=2, resamples=200, seed=0)
    assert same.delta == 0 and same.low == same.high == 0 and same.p == 1.0 and same.method == "seeds+images"
    twin = ablation_interval({0: arm, 1: arm}, {0: base, 1: base}, num_images=2, resamples=4000, seed=1)
    one = ablation_interval({0: arm}, {0: base}, num_images=2, resamples=4000, seed=1)
    assert twin.seed_se == 0 and twin.image_se == pytest.approx(one.image_se, rel=0.05)
    assert twin.high - twin.low == pytest.approx(2 * 1.959964 * twin.image_se)
    missing = ablation_interval({0: arm}, {1: base}, num_images=2)
    assert math.isnan(missing.delta) and missing.n == 0 and missing.method == "none"
    # the combination: no image term -> the paired t; no seed term -> the normal interval
    t = combine(0.1, 0.02 ** 2, 2, 0.0)
    assert (t.low, t.high) == (pytest.approx(0.1 - sps.t.ppf(0.975, 2) * 0.02), pytest.approx(0.1 + sps.t.ppf(0.975, 2) * 0.02))
    assert t.p == pytest.approx(2 * sps.t.sf(5, 2))
    z = combine(0.1, 0.0, 2, 0.02 ** 2)
    assert z.high - 0.1 == pytest.approx(1.959964 * 0.02)
    both = combine(0.1, 0.02 ** 2, 2, 0.02 ** 2)  # wider than the normal, narrower than the t plus the normal
    assert 1.959964 * math.sqrt(2) * 0.02 < both.high - 0.1 < (sps.t.ppf(0.975, 2) + 1.959964) * 0.02
    assert both.excludes_zero() and 0 < both.p < 0.05


def test_csv_cells_are_numbers_pandas_reads_back():
    """NumPy 2 scalars must not be written as their repr (`np.float64(0.021...)`): unreadable as numbers."""
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
