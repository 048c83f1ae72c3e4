"""Statistics as the reports print them. The math is defined once in experiments/stats.py (the sweep
driver's sequential seeding decides with the same intervals) and is public here:

    ablation_interval(arm, baseline, num_images)   the ablation table's delta interval: seeds + test images
    paired_delta(arm, baseline)                    the paired t over seeds (the test set held fixed)
    mean_std, mean_ci

plus the one-sentence footnotes that say which interval answers which question.
"""
from __future__ import annotations

from experiments.stats import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    Delta,
    Interval,
    MeanStd,
    ablation_interval,
    combine,
    contrast_interval,
    contrast_t,
    mean_ci,
    mean_std,
    paired_delta,
)

__all__ = ["BOOTSTRAP_RESAMPLES", "CONFIDENCE", "Delta", "Interval", "MeanStd", "ablation_interval", "combine",
           "contrast_interval", "contrast_t", "mean_ci", "mean_std", "paired_delta", "footnote", "interval_footnote"]


def footnote(method: str, confidence: float = CONFIDENCE) -> str:
    """One sentence describing how a seeds-only delta of the given method was computed."""
    pct = f"{confidence:.0%}"
    return {
        "paired": (f"Δ (seeds): mean of per-seed paired differences (arm - baseline, same seed, same test images), "
                   f"{pct} CI = mean ± t(0.975, n-1) · sd / sqrt(n), p: paired t-test: whether the change beats the "
                   f"seed noise on this test set."),
        "welch": (f"Δ marked (w): fewer than 2 seeds shared with the baseline, so difference "
                  f"of means with an unpaired Welch {pct} CI and Welch t-test p."),
        "single": ("Δ marked (1): a single run on one side, so the difference of means "
                   "only; no interval or p-value (n/a)."),
    }.get(method, "")


def interval_footnote(iv: Interval) -> str:
    """The ablation interval's footnote: what it adds to the paired t, in one sentence, and how."""
    return (f"Δ (seeds + test images), {iv.confidence:.0%}: whether the change is more than noise on images like "
            f"these: the seeds' variance (as in the paired t) plus the test set's, the part common to all seeds "
            f"(the covariance of two seeds' deltas over {iv.resamples} bootstrap resamples of the test images), "
            f"combined as a Behrens-Fisher interval (t with n-1 degrees of freedom plus a normal); p from the same "
            f"distribution. With one seed: the test images alone.")
