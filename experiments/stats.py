"""The statistics of an ablation, defined once: what the report prints and what the sweep driver decides
with (sequential seeding, experiments/sequential.py). numpy + scipy; no Ray, no MLflow. Public through
`reports.stats` too.

Which interval answers which question:

* `paired_delta`: "on THIS test set, does the change beat the seed noise?" The per-seed paired
  differences d_s (arm - baseline, same seed, same images), delta = mean(d), 95% CI = delta +-
  t(0.975, n-1) sd(d)/sqrt(n), p from the paired t-test. The test images are held fixed.
* `ablation_interval`: "on images LIKE these, is the change more than noise?" It adds the test set's
  sampling noise, the part of it that is common to every seed, to the seed noise:

      Var(delta) = sd(d)^2 / n                       (seeds: each run's own errors on these images too)
                 + mean_{s != t} Cov*(d*_s, d*_t)    (images: the bootstrap over test images, seeds fixed)

  The seed term is the paired t's; the image term is the covariance between two seeds' deltas over
  resampled test sets (the same images for every run), which is the test-set variation that averaging
  over seeds cannot remove (each seed's own image-level errors are in the seed term already, so the
  variance of the mean bootstrap delta would count them twice). The interval is the Behrens-Fisher
  interval of the two terms: the quantile of |sqrt(seed term) T_{n-1} + sqrt(image term) Z| (a t with n-1
  degrees of freedom plus an independent normal; `_sum_tail`). Unlike Welch-Satterthwaite degrees of
  freedom, which under-cover at n = 2 or 3 when the seed term dominates, it never covers less than the
  stated level when the terms are as estimated, and it is the paired t when the image term is 0 and the
  normal bootstrap interval when there is one seed. tests/unit/test_intervals.py measures its coverage by
  simulation (synthetic detectors through ssd_core.evaluate.voc_matches, 2-5 seeds, a seed-dominated
  and an image-dominated regime) next to the percentile bootstrap over seeds x images that this
  replaced, which covers far less than 95% with few seeds.

  The target is the expected delta on test sets of this size: the 11-point mAP of a finite test set is a
  biased estimate of its large-set limit (by about 0.01 between 200 and 3,000 images in the simulation),
  and no interval computed from one test set can see that bias (the bootstrap's own bias estimate is
  about 0.001 there).
"""
from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000


class MeanStd(NamedTuple):
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for n < 2
    n: int


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


# --------------------------------------------------------------------------- the paired t over seeds


class Delta(NamedTuple):
    delta: float  # arm minus baseline (mean of the paired differences when paired)
    low: float  # lower end of the confidence interval (nan when not computable)
    high: float
    p: float  # two-sided p-value (nan when not computable)
    n: int  # number of pairs (paired) or of runs in the arm (welch/single)
    method: str  # "paired" | "welch" | "single" | "none"


def _finite(values: Mapping[int, float]) -> dict[int, float]:
    return {s: float(v) for s, v in values.items() if v is not None and math.isfinite(v)}


def paired_delta(arm: Mapping[int, float], baseline: Mapping[int, float],
                 confidence: float = CONFIDENCE) -> Delta:
    """Delta of ``arm`` against ``baseline`` from per-seed values ``{seed: metric}``: the paired t over the
    shared seeds (>= 2); with fewer shared seeds the unpaired Welch interval (>= 2 runs a side, "welch"),
    else the difference of the means alone ("single")."""
    arm, baseline = _finite(arm), _finite(baseline)
    if not arm or not baseline:
        return Delta(math.nan, math.nan, math.nan, math.nan, 0, "none")
    shared = sorted(set(arm) & set(baseline))
    if len(shared) >= 2:
        d = np.array([arm[s] - baseline[s] for s in shared], dtype=float)
        n = d.size
        mean, sd = float(d.mean()), float(d.std(ddof=1))
        half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        return Delta(mean, mean - half, mean + half, _t_pvalue(mean, sd / math.sqrt(n), n - 1), n, "paired")
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


# --------------------------------------------------------------------------- seeds + test images


class Interval(NamedTuple):
    """`ablation_interval`'s answer: the delta, its interval at `confidence`, p, and how it was made."""

    delta: float        # mean over the shared seeds of (arm - baseline) on all test images
    low: float
    high: float
    p: float            # two-sided, from the same distribution as the interval
    n: int              # shared seeds
    method: str         # "seeds+images" (n >= 2) | "images" (one seed) | "none"
    confidence: float
    seed_se: float      # sqrt of the seed term (0 with one seed)
    image_se: float     # sqrt of the image term
    resamples: int      # bootstrap resamples of the test images that entered the image term

    @property
    def se(self) -> float:
        return math.hypot(self.seed_se, self.image_se)

    def excludes_zero(self) -> bool:
        return math.isfinite(self.low) and (self.low > 0 or self.high < 0)


NO_INTERVAL = Interval(math.nan, math.nan, math.nan, math.nan, 0, "none", CONFIDENCE, math.nan, math.nan, 0)


def resample_weights(num_images: int, resamples: int, seed: int = 0) -> np.ndarray:
    """[resamples, num_images] bootstrap counts: each row draws `num_images` images with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=resamples)


_BOOT_CACHE: "OrderedDict[tuple, tuple[object, np.ndarray]]" = OrderedDict()
_BOOT_CACHE_SIZE = 256  # (run, budget point) bootstraps kept: a report asks for each many times; the entries keep
                       # their detections alive, so the cache is small (a report holds them anyway)


def _bootstrap_scores(matches, rw: np.ndarray, plan: tuple, metric: str) -> np.ndarray:
    """weighted_voc_batch(matches, rw, metric), remembered for this `matches` object and resample plan
    (num_images, resamples, seed): a report's tables ask for the baseline's (and each arm's) bootstrap once
    per delta, per budget point and per table, and the resamples are the same every time."""
    from ssd_core.evaluate import weighted_voc_batch

    key = (id(matches), plan, metric)
    hit = _BOOT_CACHE.get(key)
    if hit is not None and hit[0] is matches:  # the object itself kept alive in the entry: ids are not reused
        _BOOT_CACHE.move_to_end(key)
        return hit[1]
    scores = weighted_voc_batch(matches, rw, metric)
    _BOOT_CACHE[key] = (matches, scores)
    while len(_BOOT_CACHE) > _BOOT_CACHE_SIZE:
        _BOOT_CACHE.popitem(last=False)
    return scores


def ablation_interval(arm: Mapping[int, object], baseline: Mapping[int, object], num_images: int,
                      confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                      metric: str = "mAP50") -> Interval:
    """The delta of `arm` against `baseline` with the interval the ablation table prints (module doc).

    `arm`, `baseline`: seed -> the VOCMatches of that run's test detections (ssd_core.evaluate.voc_matches),
    every run on the same `num_images` images (dense ids 0..num_images-1). Seeds in only one of them are
    left out (the pairing is per seed). `seed` makes the bootstrap reproducible."""
    return contrast_interval({"arm": 1.0, "baseline": -1.0}, {"arm": arm, "baseline": baseline}, num_images,
                             confidence, resamples, seed, metric)


def contrast_interval(weights: Mapping[str, float], runs: Mapping[str, Mapping[int, object]], num_images: int,
                      confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                      metric: str = "mAP50") -> Interval:
    """A linear contrast of arms, sum_a weights[a] * metric(a), with the ablation interval: per seed the
    contrast of that seed's runs (the seeds every weighted arm has), its seed term from their spread and its
    image term from the covariance of two seeds' contrasts over resampled test images. A delta is the
    contrast {arm: +1, baseline: -1}; factorial effects and Shapley shares are contrasts too
    (reports/factorial.py). `runs`: arm -> seed -> VOCMatches, all on the same `num_images` images."""
    from ssd_core.evaluate import weighted_voc

    arms = [a for a, w in weights.items() if w != 0]
    shared = sorted(set.intersection(*(set(runs.get(a, {})) for a in arms))) if arms else []
    if not shared or num_images < 1:
        return NO_INTERVAL._replace(confidence=confidence, n=len(shared))
    n = len(shared)
    w = np.array([weights[a] for a in arms])
    full = np.array([[weighted_voc(runs[a][s])[metric] for s in shared] for a in arms])  # [A, n]
    c = w @ full
    if not np.isfinite(c).all():
        return NO_INTERVAL._replace(confidence=confidence, n=n)
    rw = resample_weights(num_images, resamples, seed)
    plan = (num_images, resamples, seed)
    scores = np.stack([np.stack([_bootstrap_scores(runs[a][s], rw, plan, metric) for s in shared], axis=1)
                       for a in arms])                                          # [A, B, n]
    boot = np.tensordot(w, scores, axes=1)                                      # [B, n]
    boot = boot[np.isfinite(boot).all(axis=1)]
    if len(boot) < 2:
        return NO_INTERVAL._replace(confidence=confidence, n=n)
    if n == 1:
        seed_var, image_var = 0.0, float(boot[:, 0].var(ddof=1))
    else:
        cov = np.cov(boot, rowvar=False, ddof=1)
        seed_var = float(c.var(ddof=1)) / n
        image_var = max(0.0, float(cov[~np.eye(n, dtype=bool)].mean()))
    return combine(float(c.mean()), seed_var, max(n - 1, 1), image_var, confidence, n,
                   "seeds+images" if n > 1 else "images", len(boot))


def contrast_t(weights: Mapping[str, float], values: Mapping[str, Mapping[int, float]],
               confidence: float = CONFIDENCE) -> Delta:
    """A contrast of arms from per-seed values alone (the test set held fixed): the t interval of the per-seed
    contrasts over the seeds every weighted arm has ("paired"); with fewer than 2 such seeds, the contrast of
    the arms' means with a Welch-Satterthwaite interval from each arm's spread ("welch", >= 2 runs an arm),
    else the contrast alone ("single")."""
    arms = [a for a, w in weights.items() if w != 0]
    vals = {a: _finite(values.get(a, {})) for a in arms}
    if not arms or any(not v for v in vals.values()):
        return Delta(math.nan, math.nan, math.nan, math.nan, 0, "none")
    shared = sorted(set.intersection(*(set(v) for v in vals.values())))
    if len(shared) >= 2:
        c = np.array([sum(weights[a] * vals[a][s] for a in arms) for s in shared])
        n, mean, sd = c.size, float(c.mean()), float(c.std(ddof=1))
        half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        return Delta(mean, mean - half, mean + half, _t_pvalue(mean, sd / math.sqrt(n), n - 1), n, "paired")
    mean = float(sum(weights[a] * np.mean(list(vals[a].values())) for a in arms))
    if all(len(v) >= 2 for v in vals.values()):
        parts = [weights[a] ** 2 * np.var(list(vals[a].values()), ddof=1) / len(vals[a]) for a in arms]
        se = math.sqrt(sum(parts))
        if se == 0:
            return Delta(mean, mean, mean, 1.0 if mean == 0 else 0.0, min(map(len, vals.values())), "welch")
        dof = sum(parts) ** 2 / sum(p ** 2 / (len(vals[a]) - 1) for p, a in zip(parts, arms) if p > 0)
        half = float(sps.t.ppf(0.5 + confidence / 2, dof)) * se
        return Delta(mean, mean - half, mean + half, _t_pvalue(mean, se, dof), min(map(len, vals.values())), "welch")
    return Delta(mean, math.nan, math.nan, math.nan, min(map(len, vals.values())), "single")


def combine(delta: float, seed_var: float, dof: int, image_var: float, confidence: float = CONFIDENCE,
            n: int = 0, method: str = "seeds+images", resamples: int = 0) -> Interval:
    """The Behrens-Fisher interval of `delta` with a seed term (variance `seed_var`, a t with `dof`
    degrees of freedom) and an image term (variance `image_var`, normal): the module doc's interval."""
    a, b = max(seed_var, 0.0), max(image_var, 0.0)
    if a == 0 and b == 0:
        return Interval(delta, delta, delta, 1.0 if delta == 0 else 0.0, n, method, confidence, 0.0, 0.0, resamples)
    half = _sum_quantile(a, b, dof, confidence)
    p = min(1.0, _sum_tail(a, b, dof, abs(delta)))
    return Interval(delta, delta - half, delta + half, p, n, method, confidence, math.sqrt(a), math.sqrt(b),
                    resamples)


@functools.lru_cache(maxsize=64)
def _chi2_nodes(dof: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature over the chi-square V of the seed term's variance estimate: u in (0, 1) split in decades
    towards 0 (the heavy tail of a t with few degrees of freedom comes from small V), 24 Gauss-Legendre
    points each; V = chi2.ppf(u). Returns (V / dof, weights) with the weights summing to 1."""
    x, w = np.polynomial.legendre.leggauss(24)
    edges = [0.0] + [10.0 ** -k for k in range(12, 0, -1)] + [0.5, 1.0]
    us, ws = [], []
    for lo, hi in zip(edges[1:-1], edges[2:]):
        us.append(lo + (hi - lo) * (x + 1) / 2)
        ws.append(w * (hi - lo) / 2)
    u, wt = np.concatenate(us), np.concatenate(ws)
    # the first decade [0, 1e-12] has tail probability ~1 there: its mass goes in as is
    return sps.chi2.ppf(u, dof) / dof, np.concatenate([wt])


def _sum_tail(a: float, b: float, dof: int, x: float) -> float:
    """P(|sqrt(a) T_dof + sqrt(b) Z| >= x) for independent T ~ t(dof), Z ~ N(0, 1): given the chi-square V
    behind T the sum is normal with variance a dof / V + b, so the tail is E_V[2 Phi(-x / sqrt(a / (V/dof) + b))]."""
    if a == 0:
        return float(2 * sps.norm.sf(x / math.sqrt(b))) if b > 0 else float(x <= 0)
    if b == 0:
        return float(2 * sps.t.sf(x / math.sqrt(a), dof))
    v, w = _chi2_nodes(dof)
    tail = 2 * sps.norm.sf(x / np.sqrt(a / v + b))
    return float(1e-12 + np.dot(w, tail))


def _sum_quantile(a: float, b: float, dof: int, confidence: float) -> float:
    """The half-width h with P(|sqrt(a) T_dof + sqrt(b) Z| <= h) = confidence."""
    alpha = 1 - confidence
    if a == 0:
        return float(sps.norm.ppf(1 - alpha / 2)) * math.sqrt(b)
    if b == 0:
        return float(sps.t.ppf(1 - alpha / 2, dof)) * math.sqrt(a)
    from scipy.optimize import brentq

    hi = float(sps.t.ppf(1 - alpha / 2, dof)) * math.sqrt(a) + float(sps.norm.ppf(1 - alpha / 2)) * math.sqrt(b)
    lo = 0.0
    return float(brentq(lambda h: _sum_tail(a, b, dof, h) - alpha, lo, hi, xtol=1e-12 * hi + 1e-15))


__all__ = ["CONFIDENCE", "BOOTSTRAP_RESAMPLES", "MeanStd", "mean_std", "mean_ci", "Delta", "paired_delta",
           "Interval", "ablation_interval", "contrast_interval", "contrast_t", "combine", "resample_weights"]
