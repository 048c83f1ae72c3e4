"""A sweep's plan: its phases (arms, search, confirm, sequential waves) and what its
parent run carries (tags, the params every trial shares); describe() for --dry-run."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from experiments.schema import PhaseKind, Tag, grid_size, parse_space
from experiments.sweep.spec import SweepSpec
from ssd_core.config import flatten


@dataclass
class Phase:
    """One Ray Tune experiment: `grid` (explicit trials), `search` (Optuna) or `confirm` (reseeds)."""

    kind: str  # experiments.schema.PhaseKind
    dirname: str
    arm: Optional[str] = None
    trials: list[dict[str, Any]] = field(default_factory=list)  # grid/confirm: {"arm", "seed"}
    num_samples: int = 1


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def plan(spec: SweepSpec) -> list[Phase]:
    """The phases of a sweep, in run order (see the module docstring)."""
    arms = spec.arm_names
    seeds = spec.seeds
    s = spec.file.search
    waves = spec.waves()
    if waves is not None:  # sequential seeding: the first wave; the driver plans the others as it goes
        return [wave_phase(0, waves.wave(0))]
    if s is None:
        trials = [{"arm": a, "seed": seed} for a in (arms or [None]) for seed in seeds]
        return [Phase(PhaseKind.GRID, "trials", trials=trials, num_samples=1)]
    n = s.num_samples or grid_size(parse_space(s.space))
    phases = []
    for i, arm in enumerate(arms or [None]):
        tag = f"{i:02d}-{_slug(arm)}-" if arm else ""
        phases.append(Phase(PhaseKind.SEARCH, f"{tag}{PhaseKind.SEARCH}", arm=arm, num_samples=n,
                            trials=[{"arm": arm, "seed": seeds[0]}]))
        if len(seeds) > 1:
            phases.append(Phase(PhaseKind.CONFIRM, f"{tag}{PhaseKind.CONFIRM}", arm=arm,
                                trials=[{"arm": arm, "seed": seed} for seed in seeds[1:]]))
    return phases


def wave_phase(k: int, trials: list[tuple[str, int]]) -> Phase:
    """Wave k of a sequentially seeded sweep as a phase (its own Ray Tune experiment)."""
    return Phase(PhaseKind.GRID, f"wave-{k:02d}", trials=[{"arm": a, "seed": seed} for a, seed in trials])


def describe(spec: SweepSpec) -> str:
    """The dry-run text: trial plan, resources, tracking."""
    f = spec.file
    lines = [f"sweep {f.name}  ({spec.path})", f"  base config: {spec.base_config_path}"]
    if f.overrides:
        lines.append(f"  overrides: {json.dumps(f.overrides)}")
    lines.append(f"  metric: {spec.metric} (maximised)")
    total = 0
    for ph in plan(spec):
        if ph.kind == PhaseKind.SEARCH:
            s = f.search
            n = ph.num_samples
            lines.append(f"  phase {ph.dirname}: Optuna {s.sampler} search (seed {s.seed}), {n} trials"
                         f"{' in arm ' + ph.arm if ph.arm else ''}, train.seed={ph.trials[0]['seed']}")
            for key, dist in s.space.items():
                lines.append(f"      {key}: {json.dumps(dist)}")
        else:
            n = len(ph.trials)
            what = "best searched config x seeds" if ph.kind == PhaseKind.CONFIRM else "arms x seeds"
            lines.append(f"  phase {ph.dirname}: {n} trials ({what})")
            for t in ph.trials:
                note = spec.arms[t["arm"]].note if t["arm"] else ""
                lines.append(f"      arm={t['arm'] or '-'} seed={t['seed']}" + (f"  # {note}" if note else ""))
        total += n
    if spec.design is not None:
        from experiments.design import describe as describe_design
        lines += describe_design(spec.design)
    waves = spec.waves()
    if waves is not None:
        seq = spec.sequential
        per = len(spec.arm_names) * (waves.plan[-1] - waves.plan[0])
        lines.append(f"  sequential seeding: looks at {waves.plan} seeds; alpha {seq.alpha} spent {seq.spending}-type "
                     f"({', '.join(f'{a:.4g}' for a in waves.levels)} per look); an arm stops when its interval "
                     f"excludes 0" + (f" or is narrower than {seq.width:g}" if seq.width else "")
                     + (f"; cap {seq.max_device_hours:g} device-hours" if seq.max_device_hours else "")
                     + f"; later waves: up to {per} more trials")
    asha = spec.asha
    sched = (f"ASHA (epoch; grace {asha.grace_period}, reduction {asha.reduction_factor}, "
             f"max_t {spec.max_t(spec.arm_names[0] if spec.arm_names else None)})") if asha else "none (equal budget)"
    seq = spec.sequential
    count = f"{total} in the first wave, up to {len(spec.arm_names) * seq.max}" if seq else f"{total}"
    lines += [f"  early stopping: {sched}" + (" (not in confirm phases)" if asha and f.search else ""),
              f"  trials: {count}; per trial cpu={f.resources.cpu:g} gpu={f.resources.gpu:g}; "
              f"max_concurrent={f.max_concurrent or 'as resources allow'}; max_failures={f.failure.max_failures}",
              f"  tracking: {f.tracking.uri} experiment={spec.experiment_name} "
              f"log_checkpoints={f.tracking.log_checkpoints}"]
    return "\n".join(lines)


def parent_tags(spec: SweepSpec) -> dict[str, str]:
    """The parent run's tags (experiments/schema.py, docs/interfaces.md)."""
    arms = spec.arm_names
    return {
        Tag.ARMS: json.dumps(arms),
        Tag.BASELINE_ARM: arms[0] if arms else "",
        Tag.SEARCH_SPACE: json.dumps(spec.file.search.space if spec.file.search else {}),
        Tag.METRIC: spec.metric,
        Tag.SEEDS: json.dumps(spec.seeds),
        Tag.SAMPLER: spec.file.search.sampler if spec.file.search else "",
        Tag.OBJECTIVES: json.dumps(spec.file.search.objectives if spec.file.search else []),
        Tag.NOTE: spec.file.description,
        Tag.DESIGN: spec.design.record() if spec.design is not None else "",
    }


def parent_params(spec: SweepSpec) -> dict[str, Any]:
    """The parent run's params: the config keys every trial shares (the same value in every arm, neither
    the seed nor a searched key: what differs is in the trial runs) and the sweep's own settings (sweep.*)."""
    flats = [flatten(spec.trial_config(arm, spec.seeds[0])) for arm in (spec.arm_names or [None])]
    searched = set(spec.file.search.space) if spec.file.search else set()
    shared = {k: v for k, v in flats[0].items()
              if k != "train.seed" and k not in searched and all(f.get(k) == v for f in flats[1:])}
    f = spec.file
    seq = spec.sequential
    settings = {"sweep.arms": len(spec.arm_names), "sweep.max_concurrent": f.max_concurrent or "as resources allow",
                "sweep.seeds": (f"sequential: start {seq.start}, max {seq.max}, step {seq.step}" if seq
                                else json.dumps(spec.seeds)),
                "sweep.design": spec.design.type if spec.design is not None else "none",
                "sweep.search": f"{f.search.sampler}, {f.search.num_samples or 'grid'} trials" if f.search else "none",
                "sweep.scheduler": "asha" if spec.asha else "none"}
    return {**shared, **settings}
