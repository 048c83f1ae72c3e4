"""What a designed sweep (experiments/design.py) says: each change's effect, their interactions, each change's
fair share of the total gain, and how much the cumulative path's order mattered. Pure functions of a
SweepData whose parent run carries the design (Tag.DESIGN).

Everything below is a linear contrast of the design points' reported values (per seed: the points' test
values at the same seed), so every number gets the ablation table's interval: seeds + test images
(reports.stats.contrast_interval, from the runs' logged detections) or, where a run lacks them, the t over the
per-seed contrasts (reports.stats.contrast_t; seeds as blocks: a seed missing from a point leaves the
contrasts that need that point).

* Main effect of a two-level factor: the mean over the points where it is changed minus the mean where it
  is not (the other factors balanced by the design). Two-way interaction AB: half the difference between A's
  effect with B changed and with B not, i.e. the same contrast on the product of the +-1 codes. A fraction
  estimates an effect plus its aliases (experiments.design.aliases); the table names them.
* Shapley share of factor j: the average over the k! orders of adding the factors to the baseline of the
  gain j brings when it is added; the shares sum to v(all changed) - v(baseline). Exact from a full design.
  From a fraction: the shares of the fitted effects model (main effects plus the two-way interactions that
  are not aliased with another estimated effect), marked model-based.
* The cumulative path in the factors' order (the original reproduction's table) with each step's delta, and
  beside it the range of that factor's gain over every other order (every set of factors added before it).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from experiments.design import BASELINE_NAME, Design, aliases
from experiments.schema import Status, Tag
from reports import stats
from reports.fmt import DASH, Table, fnum, fp
from reports.load import SweepData


def design_of(data: SweepData) -> Optional[Design]:
    text = data.parent_tags.get(Tag.DESIGN)
    if not text:
        return None
    try:
        return Design.from_record(text)
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class Estimate:
    name: str            # "photometric", "photometric x zoom_out", a Shapley share's factor, a path step
    kind: str            # main | interaction | shapley | path
    delta: float
    low: float
    high: float
    p: float
    n: int
    method: str
    alias: str = ""      # what else the contrast estimates (a fraction)
    model_based: bool = False

    @property
    def excludes_zero(self) -> bool:
        return math.isfinite(self.low) and (self.low > 0 or self.high < 0)


class Points:
    """The design points' per-seed values and detections, and contrasts over them."""

    def __init__(self, data: SweepData, design: Design):
        from reports.selection import arm_members

        self.data, self.design = data, design
        members = arm_members(data)
        fin = members[members["status"] == Status.FINISHED.value]
        self.values: dict[str, dict[int, float]] = {}
        self.matches: dict[str, dict[int, object]] = {}
        for point in design.points:
            runs = fin[fin["arm"] == point]
            self.values[point] = {int(s): float(v) for s, v in zip(runs["seed"], runs[data.value])
                                  if math.isfinite(s) and math.isfinite(v)}
            self.matches[point] = {int(s): data.detections[r] for s, r in zip(runs["seed"], runs["run_id"])
                                   if math.isfinite(s) and r in data.detections}
        sizes = {len(m.image_ids) for per in self.matches.values() for m in per.values()}
        keys = {tuple(m.image_ids) for per in self.matches.values() for m in per.values()}
        self.num_images = sizes.pop() if len(sizes) == 1 and len(keys) == 1 else 0

    def mean(self, point: str) -> float:
        v = list(self.values.get(point, {}).values())
        return float(np.mean(v)) if v else math.nan

    def contrast(self, weights: dict[str, float], name: str, kind: str, **extra) -> Estimate:
        weights = {p: w for p, w in weights.items() if abs(w) > 1e-12}
        metric = self.data.reported_metric.split("/", 1)[1]
        runs = {p: self.matches.get(p, {}) for p in weights}
        shared = set.intersection(*(set(r) for r in runs.values())) if runs else set()
        if self.num_images and shared and metric in ("mAP50", "mAP50_area"):
            iv = stats.contrast_interval(weights, runs, self.num_images, metric=metric)
            if math.isfinite(iv.delta):
                return Estimate(name, kind, iv.delta, iv.low, iv.high, iv.p, iv.n, iv.method, **extra)
        t = stats.contrast_t(weights, self.values)
        return Estimate(name, kind, t.delta, t.low, t.high, t.p, t.n, t.method, **extra)


def _subset_point(design: Design, changed: frozenset) -> str:
    levels = {f: (design.changed(f) if f in changed else design.baseline[f]) for f in design.names}
    for name, lv in design.points.items():
        if lv == levels:
            return name
    raise KeyError(changed)


def effect_weights(design: Design, factors: tuple[str, ...]) -> dict[str, float]:
    """The contrast of a main effect (one factor) or interaction (two): the product of the points' +-1 codes
    over half the points."""
    half = len(design.points) / 2
    return {p: math.prod(design.code(p, f) for f in factors) / half for p in design.points}


def estimable(design: Design) -> list[tuple[tuple[str, ...], str]]:
    """(effect, its aliases as text) of the main effects and two-way interactions the design estimates, one
    per alias class (a fraction's AB = CD is estimated once, as AB)."""
    names, letters = design.names, design.letters()
    by_letter = {v: f for f, v in letters.items()}
    al = aliases(design)
    out, seen = [], set()
    for r in (1, 2):
        for combo in itertools.combinations(names, r):
            word = "".join(sorted(letters[f] for f in combo))
            if word in seen:
                continue
            partners = [w for w in al.get(word, []) if w != word]
            low = [w for w in partners if len(w) <= 2]
            seen.update([word] + low)
            if any(len(w) == 1 for w in low) and r == 2:
                continue  # a two-way interaction aliased with a main effect: counted with the main effect
            text = " = ".join(" x ".join(by_letter[c] for c in w) for w in partners if len(w) <= 3)
            out.append((combo, text))
    return out


def effects(points: Points) -> list[Estimate]:
    """Main effects and two-way interactions of a two-level full or fractional design."""
    d = points.design
    out = []
    for combo, alias in estimable(d):
        kind = "main" if len(combo) == 1 else "interaction"
        out.append(points.contrast(effect_weights(d, combo), " x ".join(combo), kind, alias=alias))
    return out


def _shapley_of(design: Design, value: dict[frozenset, float]) -> dict[str, float]:
    k = len(design.names)
    out = {}
    for j in design.names:
        others = [f for f in design.names if f != j]
        total = 0.0
        for r in range(k):
            w = math.factorial(r) * math.factorial(k - r - 1) / math.factorial(k)
            for s in itertools.combinations(others, r):
                s = frozenset(s)
                total += w * (value[s | {j}] - value[s])
        out[j] = total
    return out


def shapley_weights(design: Design) -> tuple[dict[str, dict[str, float]], bool]:
    """factor -> {point: weight} of its Shapley share, and whether the shares are model-based (a fraction:
    the fitted effects model's predictions stand in for the points it did not run)."""
    names = design.names
    subsets = [frozenset(c) for r in range(len(names) + 1) for c in itertools.combinations(names, r)]
    weights = {j: {p: 0.0 for p in design.points} for j in names}
    if design.type == "full":
        for p in design.points:  # linear in the point values: the shares of the unit vector of each point
            unit = {s: float(_subset_point(design, s) == p) for s in subsets}
            for j, v in _shapley_of(design, unit).items():
                weights[j][p] = v
        return weights, False
    terms = [combo for combo, _ in estimable(design)]
    coef = {c: effect_weights(design, c) for c in terms}  # effect = 2 beta (on +-1 codes)
    mean_w = {p: 1 / len(design.points) for p in design.points}
    for p in design.points:
        def predicted(s: frozenset) -> float:
            x = {f: (1 if f in s else -1) for f in names}
            v = mean_w[p]
            for c in terms:
                v += coef[c][p] / 2 * math.prod(x[f] for f in c)
            return v
        for j, v in _shapley_of(design, {s: predicted(s) for s in subsets}).items():
            weights[j][p] = v
    return weights, True


def shapley(points: Points) -> list[Estimate]:
    weights, model = shapley_weights(points.design)
    return [points.contrast(w, j, "shapley", model_based=model) for j, w in weights.items()]


def path(points: Points) -> list[dict]:
    """The cumulative path in factor order: each step's delta with its interval, and (full designs) the range
    of that factor's gain over every set of factors added before it."""
    d = points.design
    rows, before = [], frozenset()
    for j in d.names:
        step = points.contrast({_subset_point(d, before | {j}): 1.0, _subset_point(d, before): -1.0},
                               f"+{j}", "path")
        lo = hi = math.nan
        if d.type == "full":
            others = [f for f in d.names if f != j]
            gains = [points.mean(_subset_point(d, frozenset(s) | {j})) - points.mean(_subset_point(d, frozenset(s)))
                     for r in range(len(others) + 1) for s in itertools.combinations(others, r)]
            lo, hi = min(gains), max(gains)
        rows.append({"step": step, "point": _subset_point(d, before | {j}), "range": (lo, hi)})
        before = before | {j}
    return rows


def _delta(e: Estimate) -> str:
    if not math.isfinite(e.delta):
        return DASH
    text = fnum(e.delta, sign=True)
    return text + (f" [{fnum(e.low, sign=True)}, {fnum(e.high, sign=True)}]" if math.isfinite(e.low) else "")


def _how(estimates: list[Estimate]) -> str:
    methods = {e.method for e in estimates}
    if methods & {"seeds+images", "images"}:
        return "seeds + test images (the ablation table's interval on the contrast)"
    return "seeds (a t over the per-seed contrasts; no test detections logged)"


def effects_table(data: SweepData, est: list[Estimate]) -> Table:
    rows, raw, bold = [], [], set()
    for i, e in enumerate(est):
        flag = "interaction" if e.kind == "interaction" and e.excludes_zero else ""
        rows.append([e.name, e.kind, _delta(e), fp(e.p), str(e.n), e.alias or DASH, flag or DASH])
        raw.append([e.name, e.kind, e.delta, e.low, e.high, e.p, e.n, e.method, e.alias, bool(flag)])
        if flag:
            bold.add((i, 2))
    d = design_of(data)
    t = Table("effects", f"Effects of the design: {data.sweep}",
              ["Effect", "Kind", "Δ (95% CI)", "p", "Seeds", "Aliased with", "Flag"], rows, raw, bold=bold,
              numeric={3, 4})
    t.raw_columns = ["effect", "kind", "delta", "ci_low", "ci_high", "p", "n_seeds", "method", "alias", "interaction"]
    t.notes = [f"{'A 2^(k-p) fraction (resolution ' + str(d.resolution) + ')' if d and d.type == 'fractional' else 'A full factorial'}"
               f" of {len(d.names) if d else '?'} two-level factors. Main effect: mean over the points with the factor "
               f"changed minus the mean over those without; interaction A x B: half of (A's effect with B changed - "
               f"with B not). 95% CI over {_how(est)}; an interaction whose interval excludes 0 is flagged (bold)."]
    if d and d.type == "fractional":
        t.notes.append("Aliased with: the effects this contrast also estimates (the design cannot tell them apart).")
    if note := data.unreadable_note():
        t.notes.append(note)
    return t


def shapley_table(data: SweepData, est: list[Estimate], total: Estimate) -> Table:
    rows, raw = [], []
    for e in est:
        share = e.delta / total.delta if math.isfinite(total.delta) and total.delta else math.nan
        rows.append([e.name, _delta(e), fp(e.p), f"{share:.0%}" if math.isfinite(share) else DASH])
        raw.append([e.name, e.delta, e.low, e.high, e.p, share, e.method, e.model_based])
    rows.append(["total (all changed - baseline)", _delta(total), fp(total.p), "100%"])
    raw.append(["total", total.delta, total.low, total.high, total.p, 1.0, total.method, False])
    t = Table("shapley", f"Each change's share of the gain: {data.sweep}",
              ["Factor", "Shapley share (95% CI)", "p", "of the total"], rows, raw, numeric={2, 3})
    t.raw_columns = ["factor", "share", "ci_low", "ci_high", "p", "fraction_of_total", "method", "model_based"]
    model = any(e.model_based for e in est)
    t.notes = [("Model-based: the shares of the fitted effects model (main effects and the unaliased two-way "
                "interactions), since a fraction does not run every combination. " if model else "")
               + "Shapley share: the average, over every order of adding the factors to the baseline, of the gain the "
               f"factor brings when it is added; the shares sum to the total. 95% CI over {_how(est)}."]
    return t


def path_table(data: SweepData, rows: list[dict], points: Points) -> Table:
    out, raw = [], []
    base = points.mean(_subset_point(points.design, frozenset()))
    out.append(["1", BASELINE_NAME, fnum(base), "baseline", DASH])
    raw.append([1, BASELINE_NAME, base, math.nan, math.nan, math.nan, math.nan, math.nan])
    for i, r in enumerate(rows):
        e, (lo, hi) = r["step"], r["range"]
        rng = f"{fnum(lo, sign=True)} .. {fnum(hi, sign=True)}" if math.isfinite(lo) else DASH
        out.append([str(i + 2), r["point"], fnum(points.mean(r["point"])), _delta(e), rng])
        raw.append([i + 2, r["point"], points.mean(r["point"]), e.delta, e.low, e.high, lo, hi])
    t = Table("path", f"The cumulative path (in the factors' order): {data.sweep}",
              ["No", "Point", "mean", "Δ of this step (95% CI)", "its gain over other orders"], out, raw,
              numeric={0, 2})
    t.raw_columns = ["no", "point", "mean", "step_delta", "ci_low", "ci_high", "other_orders_min", "other_orders_max"]
    t.notes = ["Each row adds one factor to the previous row, as the original reproduction's table does; its gain "
               "over other orders: the smallest and largest gain the same factor brings when added after any other set "
               "of factors (the design's other paths). A wide range: the order mattered."]
    return t


def sections(data: SweepData, with_plots: bool = True) -> tuple[list, dict[str, bytes]]:
    """The report's design sections (tables, and figures above them) or nothing for an undesigned sweep."""
    d = design_of(data)
    if d is None or not d.two_level() or not set(d.points) <= set(data.arms):  # --arms left a point out
        return [], {}
    points = Points(data, d)
    out, figs = [], {}
    if d.type in ("full", "fractional"):
        eff = effects(points)
        shares = shapley(points)
        top = _subset_point(d, frozenset(d.names)) if d.type == "full" else None
        total = (points.contrast({top: 1.0, _subset_point(d, frozenset()): -1.0}, "total", "shapley")
                 if top else Estimate("total", "shapley", float(sum(e.delta for e in shares)), math.nan, math.nan,
                                      math.nan, 0, "model", model_based=True))
        if with_plots:
            from reports import plots
            png = plots.effects_forest(data, eff)
            if png:
                figs["effects"] = png
                out.append(("figure", "effects", "Main effects and two-way interactions with 95% intervals"))
        out.append(effects_table(data, eff))
        if with_plots:
            from reports import plots
            png = plots.shapley_bars(data, shares, total)
            if png:
                figs["shapley"] = png
                out.append(("figure", "shapley", "Each change's Shapley share of the gain from the baseline"))
        out.append(shapley_table(data, shares, total))
    if d.type == "full" or d.type == "cumulative":
        if d.type == "full":
            out.append(path_table(data, path(points), points))
    return out, figs


__all__ = ["design_of", "Points", "effects", "shapley", "shapley_weights", "path", "sections", "Estimate"]
