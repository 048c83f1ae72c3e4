"""Experimental designs over named changes: a sweep's `design:` section -> its design points (arms).

    design:
      type: full            # full | fractional | one_at_a_time | leave_one_out | cumulative
      factors:              # ordered: the cumulative path's order, and the paper's table's
        photometric:  {off: {augment.photometric: false}, on: {augment.photometric: true}}
        sample_patch: {off: {augment.sample_patch.enabled: false}, on: {augment.sample_patch.enabled: true}}
      baseline: {photometric: off, sample_patch: off}   # default: every factor's first level
      resolution: 4         # fractional only: the smallest 2^(k-p) fraction of at least this resolution
      fraction: 1           # fractional only, instead of resolution: p

A factor's levels are override blocks (the config keys of arm overrides); a design point sets one level of
every factor. Points are named by what differs from the baseline: `baseline`, `+photometric`,
`+photometric+sample_patch`, and `+factor-level` for a factor with more than two levels.

* full: every combination of levels (2^k for two levels).
* fractional: two-level factors only; 2^(k-p) points from the standard minimum-aberration generators
  (Box, Hunter & Hunter; e.g. 2^(4-1) with D = ABC, resolution IV: no main effect aliased with a two-way
  interaction). `aliases(...)` lists which effects share a column.
* one_at_a_time: the baseline and each factor alone at each of its other levels.
* leave_one_out: the all-changed point (every factor at its last level) and each factor back at its baseline.
* cumulative: the baseline, then each factor added in order (the original reproduction's table).

Pure: no Ray, no MLflow. experiments/sweep/spec.py validates a design and turns its points into arms;
the parent run stores `Design.record()` (Tag.DESIGN); reports/factorial.py reads it back.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ssd_core.config import short

TYPES = ("full", "fractional", "one_at_a_time", "leave_one_out", "cumulative")
BASELINE_NAME = "baseline"

# Minimum-aberration 2^(k-p) generators: (k, p) -> the generated factors, each as the product of base
# factors (indices into the first k - p factors).
GENERATORS = {
    (3, 1): [(0, 1)],
    (4, 1): [(0, 1, 2)],
    (5, 1): [(0, 1, 2, 3)], (5, 2): [(0, 1), (0, 2)],
    (6, 1): [(0, 1, 2, 3, 4)], (6, 2): [(0, 1, 2), (1, 2, 3)], (6, 3): [(0, 1), (0, 2), (1, 2)],
    (7, 1): [(0, 1, 2, 3, 4, 5)], (7, 2): [(0, 1, 2, 3), (0, 1, 3, 4)], (7, 3): [(0, 1, 2), (1, 2, 3), (0, 2, 3)],
    (7, 4): [(0, 1), (0, 2), (1, 2), (0, 1, 2)],
    (8, 2): [(0, 1, 2, 3), (0, 1, 4, 5)], (8, 3): [(0, 1, 2), (0, 1, 3), (1, 2, 3, 4)],
    (8, 4): [(1, 2, 3), (0, 2, 3), (0, 1, 2), (0, 1, 3)],
}


class DesignError(ValueError):
    """A design that cannot be built: `where` is the key under design ("factors.zoom_out", "type")."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


@dataclass
class Design:
    type: str
    factors: dict[str, dict[str, dict[str, Any]]]      # factor -> level -> overrides (ordered)
    baseline: dict[str, str]                            # factor -> its baseline level
    points: dict[str, dict[str, str]] = field(default_factory=dict)  # point (arm) name -> factor -> level
    generators: dict[str, str] = field(default_factory=dict)         # fractional: "D" -> "ABC" (factor letters)
    resolution: Optional[int] = None

    @property
    def names(self) -> list[str]:
        return list(self.factors)

    def two_level(self) -> bool:
        return all(len(levels) == 2 for levels in self.factors.values())

    def changed(self, factor: str) -> str:
        """A two-level factor's other level (its 'on')."""
        return next(level for level in self.factors[factor] if level != self.baseline[factor])

    def code(self, point: str, factor: str) -> int:
        """+1 when the point has the two-level factor changed from the baseline, -1 at the baseline."""
        return 1 if self.points[point][factor] != self.baseline[factor] else -1

    def overrides(self, point: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f, level in self.points[point].items():
            out.update(self.factors[f][level])
        return out

    def letters(self) -> dict[str, str]:
        return {f: chr(ord("A") + i) for i, f in enumerate(self.factors)}

    def record(self) -> str:
        """The JSON the parent run stores (Tag.DESIGN) and the report reads back (`from_record`)."""
        return json.dumps({"type": self.type, "factors": {f: list(lv) for f, lv in self.factors.items()},
                           "baseline": self.baseline, "points": self.points, "generators": self.generators,
                           "resolution": self.resolution}, sort_keys=False)

    @classmethod
    def from_record(cls, text: str) -> "Design":
        d = json.loads(text)
        return cls(d["type"], {f: {lv: {} for lv in levels} for f, levels in d["factors"].items()}, d["baseline"],
                   d["points"], d.get("generators") or {}, d.get("resolution"))


def level_name(level: Any) -> str:
    """A level as named in the file: YAML 1.1 reads off/on (and no/yes) as booleans; they are named off / on."""
    if isinstance(level, bool):
        return "on" if level else "off"
    return str(level)


def point_name(levels: dict[str, str], baseline: dict[str, str], factors: dict) -> str:
    parts = [f"+{f}" if len(factors[f]) == 2 else f"+{f}-{lv}" for f, lv in levels.items() if lv != baseline[f]]
    return "".join(parts) or BASELINE_NAME


def point_count(spec: dict) -> int:
    """How many points the design section will have, counted without building them (0 when malformed:
    `build` says why)."""
    try:
        factors = spec.get("factors") or {}
        sizes = [len(levels) for levels in factors.values()]
        kind = spec.get("type", "full")
    except AttributeError:
        return 0
    if not sizes or any(n < 2 for n in sizes):
        return 0
    if kind == "full":
        return math.prod(sizes)
    if kind == "fractional":
        k = len(sizes)
        options = [p for (kk, p) in GENERATORS if kk == k]
        p = spec.get("fraction") if spec.get("fraction") in options else min(options, default=0)
        return 2 ** (k - (p or 0))
    if kind == "one_at_a_time":
        return 1 + sum(n - 1 for n in sizes)
    return len(sizes) + 1


def build(spec: dict) -> Design:
    """A design section (a plain mapping, as in the sweep file) -> its Design with every point; DesignError
    names the key."""
    if not isinstance(spec, dict):
        raise DesignError("", f"expected a mapping with type and factors, got {type(spec).__name__}")
    unknown = sorted(set(spec) - {"type", "factors", "baseline", "resolution", "fraction"})
    if unknown:
        raise DesignError(unknown[0], "unknown key (type, factors, baseline, resolution, fraction)")
    kind = spec.get("type", "full")
    if kind not in TYPES:
        raise DesignError("type", f"{short(kind)} is not one of {', '.join(TYPES)}")
    factors = spec.get("factors")
    if not isinstance(factors, dict) or not factors:
        raise DesignError("factors", "expected a mapping of factor name -> {level: overrides, ...}")
    parsed: dict[str, dict[str, dict]] = {}
    for f, levels in factors.items():
        where = f"factors.{f}"
        if not isinstance(levels, dict) or len(levels) < 2:
            raise DesignError(where, "expected at least two levels, each an override mapping, e.g. "
                                     "{off: {augment.photometric: false}, on: {augment.photometric: true}}")
        for lv, over in levels.items():
            if not isinstance(over, dict):
                raise DesignError(f"{where}.{lv}", f"expected an override mapping, got {short(over)}")
        seen: dict[str, str] = {}
        for lv, over in levels.items():
            key = json.dumps(over, sort_keys=True, default=str)
            if key in seen:
                raise DesignError(where, f"levels {seen[key]!r} and {level_name(lv)!r} set the same values: they are "
                                         f"one level")
            seen[key] = level_name(lv)
        parsed[str(f)] = {level_name(lv): dict(over) for lv, over in levels.items()}
    owner: dict[str, str] = {}
    for f, levels in parsed.items():
        for key in {k for over in levels.values() for k in over}:
            if key in owner:
                raise DesignError(f"factors.{f}", f"config key {key} is also set by factor {owner[key]!r}: a point "
                                                  f"would not say which level wins")
            owner[key] = f
    baseline = {f: next(iter(levels)) for f, levels in parsed.items()}
    given = spec.get("baseline") or {}
    if not isinstance(given, dict):
        raise DesignError("baseline", "expected a mapping factor -> level")
    for f, lv in given.items():
        if f not in parsed:
            raise DesignError(f"baseline.{f}", f"not a factor ({', '.join(parsed)})")
        if level_name(lv) not in parsed[f]:
            raise DesignError(f"baseline.{f}", f"{level_name(lv)!r} is not a level of {f} ({', '.join(parsed[f])})")
        baseline[f] = level_name(lv)
    d = Design(kind, parsed, baseline)
    rows = _points(d, spec)
    d.points = {point_name(r, baseline, parsed): r for r in rows}
    if len(d.points) != len(rows):
        raise DesignError("factors", "two design points got the same name")
    return d


def _points(d: Design, spec: dict) -> list[dict[str, str]]:
    names, base = d.names, d.baseline
    if d.type == "full":
        return [dict(zip(names, combo)) for combo in itertools.product(*(list(d.factors[f]) for f in names))]
    if d.type == "one_at_a_time":
        rows = [dict(base)]
        rows += [{**base, f: lv} for f in names for lv in d.factors[f] if lv != base[f]]
        return rows
    last = {f: list(d.factors[f])[-1] if list(d.factors[f])[-1] != base[f] else list(d.factors[f])[0] for f in names}
    if d.type == "leave_one_out":
        return [dict(last)] + [{**last, f: base[f]} for f in names]
    if d.type == "cumulative":
        rows, cur = [dict(base)], dict(base)
        for f in names:
            cur = {**cur, f: last[f]}
            rows.append(dict(cur))
        return rows
    return _fractional(d, spec)


def _fractional(d: Design, spec: dict) -> list[dict[str, str]]:
    names = d.names
    if not d.two_level():
        raise DesignError("type", "a fractional design takes two-level factors only")
    k = len(names)
    fraction, resolution = spec.get("fraction"), spec.get("resolution")
    if fraction is not None and resolution is not None:
        raise DesignError("fraction", "give fraction or resolution, not both")
    options = sorted(p for (kk, p) in GENERATORS if kk == k)
    if not options:
        raise DesignError("type", f"no fractional design for {k} factors here (3 to 8); use full")
    if fraction is not None:
        if fraction not in options:
            raise DesignError("fraction", f"{short(fraction)}: for {k} factors one of {options}")
        p = fraction
    else:
        want = 4 if resolution is None else resolution
        if not isinstance(want, int) or want < 3:
            raise DesignError("resolution", f"{short(want)}: an integer >= 3")
        ok = [p for p in options if design_resolution(k, GENERATORS[(k, p)]) >= want]
        if not ok:
            raise DesignError("resolution", f"no fraction of the 2^{k} design reaches resolution {want}: use full")
        p = max(ok)
    gens = GENERATORS[(k, p)]
    d.resolution = design_resolution(k, gens)
    letters = d.letters()
    base_names = names[:k - p]
    d.generators = {letters[names[k - p + i]]: "".join(letters[base_names[j]] for j in g) for i, g in enumerate(gens)}
    rows = []
    for signs in itertools.product((-1, 1), repeat=k - p):
        full = list(signs) + [math.prod(signs[j] for j in g) for g in gens]
        rows.append({f: (d.baseline[f] if s < 0 else d.changed(f)) for f, s in zip(names, full)})
    return rows


def _words(k: int, gens) -> list[frozenset]:
    """The defining relation's words (sets of factor indices), every product of generator words."""
    words = [frozenset(g) | {k - len(gens) + i} for i, g in enumerate(gens)]
    out = []
    for r in range(1, len(words) + 1):
        for combo in itertools.combinations(words, r):
            w = frozenset()
            for c in combo:
                w = w ^ c
            out.append(w)
    return out


def design_resolution(k: int, gens) -> int:
    return min(len(w) for w in _words(k, gens))


def aliases(d: Design, order: int = 2) -> dict[str, list[str]]:
    """Effect -> the effects of order <= `order` it shares a column with (fractional designs): e.g.
    {"A": ["BCD"], "AB": ["CD"]} for 2^(4-1) with D = ABC. Effects are written in factor letters."""
    if d.type != "fractional":
        return {}
    letters = d.letters()
    index = {v: i for i, v in enumerate(letters.values())}
    k = len(letters)
    gens = [[index[c] for c in word] for word in d.generators.values()]
    words = _words(k, gens)
    name = lambda s: "".join(sorted(chr(ord("A") + i) for i in s))  # noqa: E731
    out = {}
    for r in range(1, order + 1):
        for eff in itertools.combinations(range(k), r):
            e = frozenset(eff)
            partners = sorted({name(e ^ w) for w in words}, key=lambda t: (len(t), t))
            out[name(e)] = partners
    return out


def describe(d: Design) -> list[str]:
    """The dry run's design matrix (one line per point) and, for a fraction, its aliases."""
    names = d.names
    width = max(len(p) for p in d.points)
    lines = [f"  design: {d.type}, {len(names)} factors ({', '.join(f'{v}={f}' for f, v in d.letters().items())}), "
             f"{len(d.points)} points" + (f"; resolution {d.resolution}, generators "
                                          f"{', '.join(f'{g} = {w}' for g, w in d.generators.items())}"
                                          if d.type == "fractional" else "")]
    lines.append("      " + "point".ljust(width) + "  " + "  ".join(f.ljust(max(len(f), 3)) for f in names))
    for p, levels in d.points.items():
        lines.append("      " + p.ljust(width) + "  " + "  ".join(levels[f].ljust(max(len(f), 3)) for f in names))
    for eff, partners in aliases(d).items():
        if len(eff) <= 2:
            lines.append(f"      alias: {eff} = " + " = ".join(partners))
    return lines
