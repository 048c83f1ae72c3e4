"""A delta along the training budget, and arms that had not converged. Pure functions of a SweepData.

* `budget_values` the reported metric at each budget point of each run (eval.test_at: `test_at/<metric>` at
  the step whose `test_at/fraction` names the point), at the checkpoint best on the selection split so far.
* `budget_table`  per arm and point: the arm's value and its delta against the baseline with the ablation
  interval (reports.stats.ablation_interval on the points' logged detections; the paired t over seeds where
  a run lacks them), which deltas change sign or significance along the budget, and when each arm's decision
  settled (`settled_at`, the table's Settled column; `late_note` names the late ones in the summary).
* `settled_at`    per arm: the budget point from which its decision stands. A point's decision is its verdict
  (the 95% interval above 0 '+', below 0 '-', containing 0 '0') together with the sign of its delta (so a
  delta that crosses 0 inside its interval changes too, as `changes` counts it). Over the arm's points with
  a finite delta, in budget order, settled at = the smallest point f such that every point from f to the
  last has the last point's decision. When that is the last point alone while the arm has an earlier point
  (the last point's decision differs from the one before it: it holds at the very last point only) the arm
  is "not settled" (None; NaN in the CSV). An arm with a single point settles at it. The baseline, and an
  arm whose last point has no interval ('?': no verdict to settle), have none (a dash).
* `convergence`   per arm: the slope of the selection metric over the last quarter of the budget (each
  finished run's least-squares slope against the fraction of its budget, averaged over seeds, with a t
  interval over seeds; one seed: the slope's own standard error), "still rising" when the interval is above
  0. A rising arm's delta is a statement about this budget: the tables mark it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from experiments.schema import M, Status
from reports import stats
from reports.fmt import DASH, Table, fnum, fp
from reports.load import SweepData

WINDOW = 0.25       # the last quarter of the budget
PER = 0.10          # slopes are shown per 10% of the budget
_FRACTION_KEY = M.TEST_AT_FRACTION


def _budget_key(data: SweepData) -> str:
    return M.TEST_AT + data.reported_metric[len(M.TEST):]  # test/mAP50 -> test_at/mAP50


def budget_values(data: SweepData, members: pd.DataFrame) -> pd.DataFrame:
    """run_id, arm, seed, fraction, step, value: one row per run and budget point of the finished `members`
    (reports.selection.arm_members)."""
    h = data.history
    frac = h[h["key"] == _FRACTION_KEY][["run_id", "step", "value"]].rename(columns={"value": "fraction"})
    val = h[h["key"] == _budget_key(data)][["run_id", "step", "value"]]
    if frac.empty or val.empty:
        return pd.DataFrame(columns=["run_id", "arm", "seed", "fraction", "step", "value"])
    fin = members[members["status"] == Status.FINISHED.value][["run_id", "arm", "seed"]]
    out = frac.merge(val, on=["run_id", "step"]).merge(fin, on="run_id")
    out["fraction"] = out["fraction"].round(6)
    return out.sort_values(["arm", "fraction", "seed"]).reset_index(drop=True)


@dataclass
class PointDelta:
    arm: str
    fraction: float
    mean: stats.MeanStd
    delta: float
    low: float
    high: float
    p: float
    method: str  # "seeds+images" | "images" | "paired" | "welch" | "single" | "baseline" | "none"

    @property
    def verdict(self) -> str:
        """+ (interval above 0), - (below), 0 (contains 0), ? (no interval)."""
        if not math.isfinite(self.low):
            return "?"
        return "+" if self.low > 0 else "-" if self.high < 0 else "0"


def point_deltas(data: SweepData, values: pd.DataFrame) -> list[PointDelta]:
    """Every arm's value and delta against the baseline at every budget point (`values`: budget_values), in
    arm and budget order."""
    v = values
    out = []
    base = v[v["arm"] == data.baseline]
    metric = data.reported_metric.split("/", 1)[1]
    for arm in data.arms:
        a = v[v["arm"] == arm]
        for f in sorted(set(a["fraction"])):
            at = a[a["fraction"] == f]
            ms = stats.mean_std(at["value"].tolist())
            if arm == data.baseline:
                out.append(PointDelta(arm, f, ms, math.nan, math.nan, math.nan, math.nan, "baseline"))
                continue
            b = base[base["fraction"] == f]
            iv = _interval(data, at, b, f, metric)
            if iv is None:
                t = stats.paired_delta(dict(zip(at["seed"], at["value"])), dict(zip(b["seed"], b["value"])))
                out.append(PointDelta(arm, f, ms, t.delta, t.low, t.high, t.p, t.method))
            else:
                out.append(PointDelta(arm, f, ms, iv.delta, iv.low, iv.high, iv.p, iv.method))
    return out


def _interval(data: SweepData, arm: pd.DataFrame, base: pd.DataFrame, fraction: float, metric: str):
    det = data.budget_detections
    a = {int(s): det.get((r, fraction)) for s, r in zip(arm["seed"], arm["run_id"]) if math.isfinite(s)}
    b = {int(s): det.get((r, fraction)) for s, r in zip(base["seed"], base["run_id"]) if math.isfinite(s)}
    shared = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
    if not shared or metric not in ("mAP50", "mAP50_area"):
        return None
    keys = {tuple(x[s].image_ids) for x in (a, b) for s in shared}
    if len(keys) != 1:
        return None
    iv = stats.ablation_interval({s: a[s] for s in shared}, {s: b[s] for s in shared}, len(next(iter(keys))),
                                 metric=metric)
    return iv if math.isfinite(iv.delta) else None


_WORDS = {"+": " (above 0)", "-": " (below 0)", "0": " (contains 0)"}


def _by_arm(deltas: list[PointDelta]) -> dict[str, list[PointDelta]]:
    """arm -> its points with a finite delta (the baseline has none), in budget order."""
    by_arm: dict[str, list[PointDelta]] = {}
    for d in deltas:
        if d.method != "baseline" and math.isfinite(d.delta):
            by_arm.setdefault(d.arm, []).append(d)
    return {arm: sorted(ds, key=lambda d: d.fraction) for arm, ds in by_arm.items()}


def _point(d: PointDelta) -> str:
    return f"{fnum(d.delta, sign=True)} at {d.fraction:g}" + _WORDS.get(d.verdict, "")


def changes(deltas: list[PointDelta]) -> dict[str, str]:
    """arm -> a phrase for each arm whose delta changes sign or significance along the budget."""
    out = {}
    for arm, ds in _by_arm(deltas).items():
        verdicts = [d.verdict for d in ds if d.verdict != "?"]
        signs = {np.sign(d.delta) for d in ds if d.delta != 0}
        if len(set(verdicts)) > 1 or len(signs) > 1:
            out[arm] = ", ".join(_point(d) for d in ds)
    return out


def _decision(d: PointDelta) -> tuple[str, float]:
    """What must stay the same for a decision to stand: the verdict and the sign of the delta."""
    return d.verdict, float(np.sign(d.delta))


def settled_at(deltas: list[PointDelta]) -> dict[str, float | None]:
    """arm -> the budget point from which its decision stands, None for "not settled" (the rule: module doc);
    the baseline and arms without a verdict at their last point are left out."""
    out: dict[str, float | None] = {}
    for arm, ds in _by_arm(deltas).items():
        last = _decision(ds[-1])
        if last[0] == "?":
            continue
        k = len(ds) - 1
        while k > 0 and _decision(ds[k - 1]) == last:
            k -= 1
        out[arm] = None if 0 < k == len(ds) - 1 else ds[k].fraction
    return out


def settled_text(settled: dict[str, float | None], arm: str) -> str:
    """The Settled cell of `arm` from `settled_at`'s answer: "settled at 0.5", "not settled", or a dash (the
    baseline, no verdict)."""
    if arm not in settled:
        return DASH
    return "not settled" if settled[arm] is None else f"settled at {settled[arm]:g}"


SETTLED_RULE = ("Settled: the smallest budget point from which the arm's verdict (95% interval above 0, below 0, "
                "or containing 0) and the sign of its delta stay the same up to the last point; \"not settled\": "
                "the last point's verdict or sign differs from the one before it (the decision holds there only).")


def late_note(deltas: list[PointDelta]) -> str:
    """The summary's sentence naming the deltas decided only at the end of the budget: not settled, or settled
    at the last budget point while the sweep has earlier ones ("" when none, or with one budget point)."""
    fractions = sorted({d.fraction for d in deltas})
    if len(fractions) < 2:
        return ""
    by_arm, late = _by_arm(deltas), []
    for arm, f in settled_at(deltas).items():
        ds = by_arm[arm]
        if f is None:
            late.append(f"{arm} (not settled: {_point(ds[-1])} after {_point(ds[-2])})")
        elif f == fractions[-1]:
            late.append(f"{arm} (settled at the last budget point, {f:g}: its only point with a delta)")
    if not late:
        return ""
    return (f"Δ along the budget, decided only at the end: {', '.join(late)}; no earlier point read these deltas "
            f"the same way, so they are statements about this budget (the budget table's Settled column). "
            + SETTLED_RULE)


def budget_table(data: SweepData, deltas: list[PointDelta]) -> Table:
    """Δ along the budget: one row per arm and budget point."""
    label = f"test {M.label(data.reported_metric)} at the point"
    rows, raw = [], []
    settled = settled_at(deltas)
    last = {d.arm: i for i, d in enumerate(deltas)}  # the Settled cell sits on the arm's last row
    for i, d in enumerate(deltas):
        if d.method == "baseline":
            delta_text, p = "baseline", DASH
        elif not math.isfinite(d.delta):
            delta_text, p = DASH, DASH
        else:
            delta_text = fnum(d.delta, sign=True) + (f" [{fnum(d.low, sign=True)}, {fnum(d.high, sign=True)}]"
                                                    if math.isfinite(d.low) else "")
            p = fp(d.p)
        mean = DASH if d.mean.n == 0 else fnum(d.mean.mean) + ("" if d.mean.n < 2 else f" ± {fnum(d.mean.std)}")
        rows.append([d.arm, f"{d.fraction:g}", str(d.mean.n), mean, delta_text, p,
                     settled_text(settled, d.arm) if i == last[d.arm] else ""])
        raw.append([d.arm, d.fraction, d.mean.n, d.mean.mean, d.mean.std, d.delta, d.low, d.high, d.p, d.method,
                    math.nan if settled.get(d.arm) is None else settled[d.arm]])
    t = Table("budget", f"Δ along the budget: {data.sweep}",
              ["Arm", "Budget", "Seeds", label, f"Δ vs {data.baseline} (95% CI)", "p", "Settled"], rows, raw,
              numeric={1, 2, 3, 5})
    t.raw_columns = ["arm", "fraction", "n_seeds", "mean", "std", "delta", "ci_low", "ci_high", "p", "method",
                     "settled_at"]
    methods = {d.method for d in deltas}
    how = ("seeds + test images (the ablation table's interval, on the detections logged at each point)"
           if "seeds+images" in methods or "images" in methods else "seeds (paired t; no detections logged at the points)")
    t.notes = [f"Budget: the fraction of each run's training budget (`eval.test_at`); at each point the test split "
               f"is scored at the checkpoint best on the selection split `{data.metric}` so far (never chosen on "
               f"test). Δ: arm - baseline at the same point and seed, 95% CI over {how}.",
               SETTLED_RULE + " A dash: the baseline, or no interval at the last point. CSV `settled_at`: the "
               "point, empty where there is none (not settled, baseline, no interval)."]
    moved = changes(deltas)
    for arm, text in moved.items():
        t.notes.append(f"{arm}: the delta changes sign or significance along the budget: {text}.")
    if note := data.unreadable_note(budget_points=True):
        t.notes.append(note)
    return t


@dataclass
class Slope:
    arm: str
    slope: float   # selection metric per unit of budget fraction (mean over seeds)
    low: float
    high: float
    n: int         # runs with a slope
    points: int    # evaluated epochs per run in the window (the fewest)

    @property
    def rising(self) -> bool:
        return math.isfinite(self.low) and self.low > 0

    @property
    def per10(self) -> float:
        return self.slope * PER

    def mark(self) -> str:
        return f"still rising: {fnum(self.per10, sign=True)} per 10% of budget" if self.rising else ""


def convergence(data: SweepData, members: pd.DataFrame, window: float = WINDOW,
                confidence: float = stats.CONFIDENCE) -> dict[str, Slope]:
    """arm -> the slope of its finished `members`' selection metric over the last `window` of the budget
    (module doc)."""
    fin = members[members["status"] == Status.FINISHED.value]
    h = data.history[data.history["key"] == data.metric].dropna(subset=["value"])
    out = {}
    for arm in data.arms:
        runs = fin[fin["arm"] == arm]["run_id"].tolist()
        slopes, ses, counts = [], [], []
        for _, g in h[h["run_id"].isin(runs)].groupby("run_id"):
            end = float(g["step"].max())
            if end <= 0:
                continue
            x = g["step"].to_numpy(float) / end
            y = g["value"].to_numpy(float)
            keep = x >= 1 - window - 1e-9
            x, y = x[keep], y[keep]
            if len(x) < 2 or np.ptp(x) == 0:
                continue
            fit = sps.linregress(x, y)
            slopes.append(float(fit.slope))
            ses.append(float(fit.stderr) if len(x) > 2 else math.nan)
            counts.append(len(x))
        if not slopes:
            continue
        n = len(slopes)
        mean = float(np.mean(slopes))
        if n >= 2:
            half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * float(np.std(slopes, ddof=1)) / math.sqrt(n)
        elif math.isfinite(ses[0]) and counts[0] > 2:
            half = float(sps.t.ppf(0.5 + confidence / 2, counts[0] - 2)) * ses[0]
        else:
            half = math.nan
        out[arm] = Slope(arm, mean, mean - half, mean + half, n, min(counts))
    return out


def convergence_note(slopes: dict[str, Slope], window: float = WINDOW) -> str:
    rising = [s for s in slopes.values() if s.rising]
    if not rising:
        return ""
    names = ", ".join(f"{s.arm} ({fnum(s.per10, sign=True)} per 10% of budget)" for s in rising)
    return (f"Still rising at the end: {names}: the selection metric's slope over the last {window:.0%} of the "
            f"budget (least squares per run, mean over seeds, 95% t interval) is above 0, so the arm had not "
            f"converged and its delta is budget-limited: a longer budget may change it.")


__all__ = ["budget_values", "point_deltas", "budget_table", "changes", "settled_at", "settled_text", "late_note",
           "SETTLED_RULE", "convergence", "convergence_note", "PointDelta", "Slope"]
