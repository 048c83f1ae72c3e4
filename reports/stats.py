"""Statistics for ablation tables: mean +- std over seeds, and the delta against a baseline arm.

The delta of an arm against the baseline is estimated from *paired* per-seed differences: seed s of
the arm and seed s of the baseline share the data order and initialisation, so their difference
removes most of the seed noise. With n paired seeds and differences d_1..d_n,

    delta = mean(d),   95% CI = delta +- t_{0.975, n-1} * sd(d) / sqrt(n),   p = paired t-test,

(Student's t; ``scipy.stats.t`` and ``scipy.stats.ttest_rel``). Fallbacks, named in the report
footnote by ``Delta.method``:

* ``"paired"``   >= 2 seeds shared by both arms (the case above);
* ``"welch"``    < 2 shared seeds but >= 2 runs in each arm: the unpaired Welch interval
                 (difference of means, Welch-Satterthwaite degrees of freedom, ``ttest_ind``);
* ``"single"``   otherwise: the difference of the means only, no interval and no p-value.

Seeds capture training noise only. ``paired_bootstrap`` adds the test set's: it resamples the test
images (and the seeds) from each run's logged test detections and re-scores both arms on every
resample, so even a single-seed comparison gets an honest interval.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95


class MeanStd(NamedTuple):
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for n < 2
    n: int


class Delta(NamedTuple):
    delta: float  # arm minus baseline (mean of the paired differences when paired)
    low: float  # lower end of the confidence interval (nan when not computable)
    high: float
    p: float  # two-sided p-value (nan when not computable)
    n: int  # number of pairs (paired) or of runs in the arm (welch/single)
    method: str  # "paired" | "welch" | "single" | "none"


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean and sample standard deviation (ddof=1) of finite values; nan where undefined."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return MeanStd(math.nan, math.nan, 0)
    std = float(x.std(ddof=1)) if x.size > 1 else math.nan
    return MeanStd(float(x.mean()), std, int(x.size))


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t-interval of the mean of finite `values`: mean +- t_{(1+c)/2, n-1} * sd / sqrt(n); nan for n < 2."""
    ms = mean_std(values)
    if ms.n < 2:
        return math.nan, math.nan
    half = float(sps.t.ppf(0.5 + confidence / 2, ms.n - 1)) * ms.std / math.sqrt(ms.n)
    return ms.mean - half, ms.mean + half


def paired_delta(arm: Mapping[int, float], baseline: Mapping[int, float],
                 confidence: float = CONFIDENCE) -> Delta:
    """Delta of ``arm`` against ``baseline`` given per-seed values ``{seed: metric}`` (see module doc)."""
    arm = {s: v for s, v in arm.items() if v is not None and math.isfinite(v)}
    baseline = {s: v for s, v in baseline.items() if v is not None and math.isfinite(v)}
    if not arm or not baseline:
        return Delta(math.nan, math.nan, math.nan, math.nan, 0, "none")
    shared = sorted(set(arm) & set(baseline))
    if len(shared) >= 2:
        d = np.array([arm[s] - baseline[s] for s in shared], dtype=float)
        n = d.size
        mean = float(d.mean())
        sd = float(d.std(ddof=1))
        half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        return Delta(mean, mean - half, mean + half, _t_pvalue(mean, sd / math.sqrt(n), n - 1), n,
                     "paired")
    a = np.array([arm[s] for s in sorted(arm)], dtype=float)
    b = np.array([baseline[s] for s in sorted(baseline)], dtype=float)
    mean = float(a.mean() - b.mean())
    if a.size >= 2 and b.size >= 2:
        va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
        se = math.sqrt(va + vb)
        if se == 0:
            return Delta(mean, mean, mean, 1.0 if mean == 0 else 0.0, int(a.size), "welch")
        dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
        half = float(sps.t.ppf(0.5 + confidence / 2, dof)) * se
        p = float(sps.ttest_ind(a, b, equal_var=False).pvalue)
        return Delta(mean, mean - half, mean + half, p, int(a.size), "welch")
    return Delta(mean, math.nan, math.nan, math.nan, int(a.size), "single")


def _t_pvalue(mean: float, se: float, dof: int) -> float:
    """Two-sided p-value of a one-sample t statistic; a zero spread gives 0 (or 1 when mean == 0)."""
    if se == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * sps.t.sf(abs(mean / se), dof))


def footnote(method: str, confidence: float = CONFIDENCE) -> str:
    """One sentence describing how a delta of the given method was computed."""
    pct = f"{confidence:.0%}"
    return {
        "paired": (f"Delta: mean of per-seed paired differences (arm - baseline, same seed), "
                   f"{pct} CI = mean +- t(0.975, n-1) * sd / sqrt(n); p: paired t-test."),
        "welch": (f"Delta marked (w): fewer than 2 seeds shared with the baseline, so difference "
                  f"of means with an unpaired Welch {pct} CI and Welch t-test p."),
        "single": ("Delta marked (1): a single run on one side, so the difference of means "
                   "only; no interval or p-value (n/a)."),
    }.get(method, "")


# --------------------------------------------------------------------------- bootstrap over test images

BOOTSTRAP_RESAMPLES = 1000


class Bootstrap(NamedTuple):
    delta: float   # the observed delta: mean over paired seeds of (arm - baseline) on all test images
    low: float     # percentile interval of the resampled deltas
    high: float
    p: float       # two-sided: 2 * min(share of resampled deltas <= 0, share >= 0), capped at 1
    n: int         # paired seeds
    resamples: int
    seeds: bool    # True: seeds resampled too (seed and image variation); False: images only


def paired_bootstrap(arm: Mapping[int, object], baseline: Mapping[int, object], num_images: int,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE,
                     resample_seeds: bool = True, metric: str = "mAP50") -> Bootstrap:
    """Paired bootstrap of a delta over test images (and seeds): ``arm`` and ``baseline`` map a seed
    to the ``VOCMatches`` of that run's test detections (ssd_core.evaluate.voc_matches), all on the same
    ``num_images`` images (dense ids 0..num_images-1).

    Each resample draws ``num_images`` images with replacement, the SAME images for every run, and
    (``resample_seeds``) the paired seeds with replacement; its delta is the mean over the drawn seeds
    of metric(arm_s) - metric(baseline_s), both re-scored on the drawn images (an image drawn k times
    counts k times: ``weighted_voc``). The interval is the percentile interval of the resampled deltas.
    With one seed this is the image-only bootstrap; with seeds it combines seed and image variation."""
    from ssd_core.evaluate import weighted_voc

    shared = sorted(set(arm) & set(baseline))
    if not shared or num_images < 1:
        return Bootstrap(math.nan, math.nan, math.nan, math.nan, len(shared), 0, False)
    runs = [arm[s] for s in shared] + [baseline[s] for s in shared]
    k = len(shared)

    def deltas(weights) -> np.ndarray:
        scores = np.array([weighted_voc(m, weights)[metric] for m in runs])
        return scores[:k] - scores[k:]

    observed = float(deltas(None).mean())
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for b in range(resamples):
        weights = np.bincount(rng.integers(0, num_images, num_images), minlength=num_images)
        d = deltas(weights)
        out[b] = d[rng.integers(0, k, k)].mean() if resample_seeds and k > 1 else d.mean()
    out = out[np.isfinite(out)]
    if out.size == 0:
        return Bootstrap(observed, math.nan, math.nan, math.nan, k, 0, resample_seeds and k > 1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(out, [alpha, 1 - alpha])
    p = min(1.0, 2 * min(float((out <= 0).mean()), float((out >= 0).mean())))
    return Bootstrap(observed, float(low), float(high), p, k, int(out.size), resample_seeds and k > 1)


def bootstrap_footnote(b: Bootstrap, confidence: float = CONFIDENCE) -> str:
    what = "the paired seeds and the test images" if b.seeds else "the test images"
    return (f"Δ bootstrap: {b.resamples} resamples of {what} with replacement (the same images for both arms), "
            f"both re-scored on each resample; {confidence:.0%} percentile interval; p: two-sided share of "
            f"resampled deltas on the other side of 0. It adds the test set's sampling noise to the seeds'.")
