"""Sequential seeding: seeds are added in waves until each arm's delta against the baseline is decided.

A sweep asks for it with a mapping instead of a seed list (experiments/sweep/spec.py, SequentialSeeds):

    seeds: {start: 2, max: 8, step: 2, until: decided, width: 0.05, max_device_hours: 4, alpha: 0.05}

Every arm trains seeds 0..start-1 (wave 0). After each wave the driver looks at every arm still open: it is
*decided* when its delta's interval excludes 0, *width reached* when the interval is narrower than `width`,
*max* when it has `max` seeds, and every open arm stops at *cap* when the next wave would pass
`max_device_hours` (the device-hours of the trials so far, and the next wave's at their mean). The open arms,
and the baseline with them (the deltas are paired by seed), get the next `step` seeds.

Looking at the data after every wave and stopping when it looks good inflates false decisions: re-testing
an ordinary 95% interval after each of 4 waves declares a non-zero delta in about 1 of 8 sweeps where there
is none. Here the looks are planned (n = start, start + step, ..., max) and the error rate alpha is spent
over them (a Lan-DeMets spending function of the information fraction n / max: Pocock-type by default,
O'Brien-Fleming-type on request); look k tests at its share alpha_k = a(t_k) - a(t_{k-1}), i.e. with the
interval at confidence 1 - alpha_k. The shares sum to alpha, so the chance of any false decision over all
the looks is at most alpha whatever the correlation between looks (a union bound: each look's interval is
valid at its own level), and the interval an arm stops with holds at that level too (a repeated confidence
interval). With 10 or fewer seeds this is usually tighter than an anytime-valid confidence sequence.
tests/integration/test_sequential.py measures the false-decision rate by simulation (and the naive rule's), and the
seeds a clear delta needs against the fixed design.

The intervals are those of the ablation table (experiments.stats.ablation_interval: seeds + test images, from
the trials' test detections), or the paired t over seeds when a trial has no detections.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Optional

from scipy import stats as sps

from experiments import stats

Reason = Literal["decided", "width", "max", "cap"]
REASONS = {"decided": "decided (the interval excludes 0)", "width": "width reached", "max": "max seeds",
           "cap": "device-hour cap"}


def looks(start: int, maximum: int, step: int) -> list[int]:
    """The planned numbers of seeds at which the deltas are looked at: start, start + step, ..., max."""
    out = list(range(start, maximum, step))
    return out + [maximum] if not out or out[-1] != maximum else out


def spent(t: float, alpha: float, kind: str = "pocock") -> float:
    """The error spent by information fraction t in (0, 1]: Lan-DeMets Pocock-type alpha ln(1 + (e - 1) t),
    or O'Brien-Fleming-type 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t))."""
    t = min(max(t, 0.0), 1.0)
    if t == 0:
        return 0.0
    if kind == "pocock":
        return alpha * math.log(1 + (math.e - 1) * t)
    if kind == "obrien_fleming":
        return float(2 - 2 * sps.norm.cdf(sps.norm.ppf(1 - alpha / 2) / math.sqrt(t)))
    raise ValueError(f"spending {kind!r} is not pocock or obrien_fleming")


def look_levels(plan: list[int], alpha: float, kind: str = "pocock") -> list[float]:
    """alpha_k of each look: what the spending function adds from look k-1 to look k (they sum to alpha)."""
    total = plan[-1]
    cum = [spent(n / total, alpha, kind) for n in plan]
    return [c - p for c, p in zip(cum, [0.0] + cum[:-1])]


@dataclass
class Decision:
    """One arm at one look: its interval at the look's level and why it stops (None: it goes on)."""

    arm: str
    seeds: int
    look: int            # 0-based
    level: float         # alpha_k: the interval is at confidence 1 - level
    delta: float
    low: float
    high: float
    method: str          # the interval's: seeds+images | images | paired | ...
    reason: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def interval_at(level: float, arm_scores: Mapping[int, float], base_scores: Mapping[int, float],
                arm_matches: Mapping[int, Any] | None = None, base_matches: Mapping[int, Any] | None = None,
                num_images: int = 0, seed: int = 0):
    """The delta's interval at confidence 1 - level: seeds + test images when every paired seed has its
    test detections, else the paired t over the per-seed scores."""
    shared = sorted(set(arm_scores) & set(base_scores))
    if arm_matches and base_matches and num_images and all(s in arm_matches and s in base_matches for s in shared):
        iv = stats.ablation_interval({s: arm_matches[s] for s in shared}, {s: base_matches[s] for s in shared},
                                     num_images, confidence=1 - level, seed=seed)
        if math.isfinite(iv.delta):
            return iv.delta, iv.low, iv.high, iv.method
    t = stats.paired_delta({s: arm_scores[s] for s in shared}, {s: base_scores[s] for s in shared},
                           confidence=1 - level)
    return t.delta, t.low, t.high, t.method


def decide(arm: str, look: int, level: float, n: int, maximum: int, width: Optional[float], interval) -> Decision:
    """The stopping rule at one look (module doc): decided, width reached, max seeds, or go on."""
    delta, low, high, method = interval
    reason = None
    if math.isfinite(low) and (low > 0 or high < 0):
        reason = "decided"
    elif width is not None and math.isfinite(low) and high - low <= width:
        reason = "width"
    elif n >= maximum:
        reason = "max"
    return Decision(arm, n, look, level, delta, low, high, method, reason)


@dataclass
class Waves:
    """The waves of a sequentially seeded sweep: which (arm, seed) each trains, from the decisions so far."""

    arms: list[str]                  # the baseline first
    start: int
    maximum: int
    step: int
    alpha: float = 0.05
    spending: str = "pocock"
    width: Optional[float] = None
    max_device_hours: Optional[float] = None
    decisions: dict[str, Decision] = field(default_factory=dict)  # arm -> its final decision
    history: list[list[Decision]] = field(default_factory=list)  # per look: every open arm's decision

    @property
    def baseline(self) -> str:
        return self.arms[0]

    @property
    def plan(self) -> list[int]:
        return looks(self.start, self.maximum, self.step)

    @property
    def levels(self) -> list[float]:
        return look_levels(self.plan, self.alpha, self.spending)

    def open_arms(self) -> list[str]:
        return [a for a in self.arms[1:] if a not in self.decisions]

    def wave(self, k: int) -> list[tuple[str, int]]:
        """The (arm, seed) trials of wave k: every arm on the first seeds, then the open arms and the baseline
        on the seeds from look k-1 to look k; [] when no arm is open or the plan has no look k."""
        plan = self.plan
        if k >= len(plan):
            return []
        if k == 0:
            return [(a, s) for a in self.arms for s in range(plan[0])]
        open_ = self.open_arms()
        if not open_:
            return []
        return [(a, s) for a in [self.baseline] + open_ for s in range(plan[k - 1], plan[k])]

    def look(self, k: int, scores: Mapping[tuple[str, int], float], matches: Mapping[tuple[str, int], Any] | None = None,
             num_images: int = 0, spent_hours: float = 0.0, next_hours: float = 0.0) -> list[Decision]:
        """Decide every open arm after wave k from the (arm, seed) -> reported test value (and test
        detections); the cap stops all open arms when the next wave would pass it."""
        n, level = self.plan[k], self.levels[k]
        base = {s: v for (a, s), v in scores.items() if a == self.baseline and s < n}
        base_m = {s: m for (a, s), m in (matches or {}).items() if a == self.baseline and s < n}
        out = []
        for arm in self.open_arms():
            mine = {s: v for (a, s), v in scores.items() if a == arm and s < n}
            mine_m = {s: m for (a, s), m in (matches or {}).items() if a == arm and s < n}
            d = decide(arm, k, level, n, self.maximum, self.width,
                       interval_at(level, mine, base, mine_m, base_m, num_images, seed=k))
            out.append(d)
        capped = self.max_device_hours is not None and spent_hours + next_hours > self.max_device_hours
        for d in out:
            if d.reason is None and capped:
                d.reason = "cap"
            if d.reason is not None:
                self.decisions[d.arm] = d
        self.history.append(out)
        return out

    def summary(self) -> dict[str, Any]:
        """What the parent run records (Tag.SEQUENTIAL): the plan, and per arm its seeds and stopping reason."""
        return {"looks": self.plan, "levels": self.levels, "alpha": self.alpha, "spending": self.spending,
                "width": self.width, "max_device_hours": self.max_device_hours,
                "arms": {a: d.as_dict() for a, d in self.decisions.items()},
                "open": self.open_arms(), "looked": len(self.history)}
