"""Sweep files: YAML -> a validated `SweepSpec` -> a plan of phases and trials. No Ray here.

A sweep file (sweeps/*.yaml) names a base experiment config, overrides, and either ablation arms,
an Optuna search, or both (one of them is required: a single arm `{base: {}}` repeats the base
config over the seeds):

    name: voc-lr-wd-aug
    experiment: ../experiments/configs/ssd300_voc_vgg16.yaml   # relative to the sweep file
    overrides: {train.epochs: 24}
    search:                                   # optional
      sampler: tpe                            # tpe | random | grid | gp | nsga2
      num_samples: 32
      metric: val/mAP50
      mode: max
      seed: 0
      space:                                  # ordered; dotted config keys
        train.lr: {loguniform: [1.0e-4, 1.0e-2]}
        augment.zoom_out.p: {uniform: [0.0, 0.8]}
        train.batch_size: {int: [8, 32]}      # inclusive
        augment.photometric: {choice: [true, false]}
        augment.zoom_out.max: {uniform: [2.0, 4.0], when: {augment.photometric: true}}
      objectives: [deploy/latency_ms]         # optional: also minimise these (multi-objective; needs
                                              # deploy.bench: true, no scheduler; tpe, random or nsga2)
    scheduler: {asha: {grace_period: 2, reduction_factor: 3}}   # or none (the default)
    arms:                                     # optional, ordered; the first is the baseline
      initial:  {note: "first implementation", overrides: {augment.sample_patch.enabled: false}}
      +augment: {note: "sample patch and zoom out", overrides: {}}
    seeds: [0, 1, 2]
    resources: {cpu: 4, gpu: 0.5}             # per trial
    max_concurrent: 8
    failure: {max_failures: 2}
    tracking: {uri: sqlite:///mlflow.db, experiment: voc-lr-wd-aug, log_checkpoints: true}

Conditional parameters: `when: {key: value, ...}` samples the parameter only when every listed
key equals the value, where a key is either a parameter sampled earlier in `space` (order
matters) or, when not sampled, the trial's resolved config value. Otherwise the config keeps its
value. A grid sampler takes `choice` and `int` parameters only, without `when`.

What the combinations mean (the trial plan, `plan(spec)`):

* arms only: every arm x every seed, an explicit trial list at equal budget. No early stopping
  unless `scheduler` asks for it.
* search only: `num_samples` Optuna trials, each trained with `seeds[0]`. With more seeds, a
  *confirm* phase then retrains the best configuration (by the last reported metric) with each
  of `seeds[1:]` at full budget, so the winner comes with error bars.
* arms + search: the search runs once per arm (arm overrides applied first, same space, same
  sampler seed, `num_samples` trials each; a separate Optuna study per arm), each followed by its
  confirm phase: every arm is compared at its own best hyperparameters.

Each phase is one Ray Tune experiment under `<storage>/<name>/<phase>`. Trial overrides are
applied in this order: sweep `overrides`, arm `overrides`, `train.seed`, searched parameters.
Everything is validated before anything starts; errors are `ConfigError`s naming the sweep file
and the key.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from experiments.schema import SEARCH_OBJECTIVES, M, Param, SpaceError, Tag, grid_size, parse_space
from ssd_core.config import DEFAULT_TRACKING_URI, ExperimentConfig, apply_overrides, config_keys, flatten, load_config, read_yaml, short
from ssd_core.errors import ConfigError

DEFAULT_MODE = "max"
_NAME = re.compile(r"^[A-Za-z0-9+][A-Za-z0-9_.+-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SearchSpec(_Strict):
    sampler: Literal["tpe", "random", "grid", "gp", "nsga2"] = "tpe"
    num_samples: Optional[int] = Field(None, gt=0)  # grid: defaults to the grid size
    metric: Optional[str] = None
    mode: Optional[Literal["max", "min"]] = None
    seed: int = 0
    space: dict[str, dict[str, Any]]
    # Further objectives, minimised, measured at each trial's final epoch (experiments.schema.SEARCH_OBJECTIVES):
    # the search is then multi-objective (Optuna keeps the Pareto front; the report shows it).
    objectives: list[str] = Field(default_factory=list)
    # The study's Optuna storage (experiments/study.py): null -> optuna.db beside a sqlite MLflow store (or the
    # local Ray storage), a SQLAlchemy URL (PostgreSQL on a cluster; never MLflow's database), or `memory`.
    storage: Optional[str] = None


class AshaSpec(_Strict):
    grace_period: int = Field(1, gt=0)
    reduction_factor: float = Field(3, gt=1)
    max_t: Optional[int] = Field(None, gt=0)  # null -> train.epochs of the resolved config


class SchedulerSpec(_Strict):
    asha: Optional[AshaSpec] = None


class ArmSpec(_Strict):
    note: str = ""
    overrides: dict[str, Any] = Field(default_factory=dict)


class SequentialSeeds(_Strict):
    """`seeds: {start, max, ...}`: seeds added in waves until each arm's delta is decided
    (experiments/sequential.py); seeds are 0..max-1."""

    start: int = Field(2, ge=2)
    max: int = Field(8, ge=2)
    step: int = Field(1, ge=1)
    until: Literal["decided"] = "decided"
    width: Optional[float] = Field(None, gt=0)        # also stop an arm when its interval is this narrow
    max_device_hours: Optional[float] = Field(None, gt=0)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    spending: Literal["pocock", "obrien_fleming"] = "pocock"


class ResourcesSpec(_Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class FailureSpec(_Strict):
    max_failures: int = Field(0, ge=0)


class TrackingSpec(_Strict):
    uri: str = DEFAULT_TRACKING_URI
    experiment: Optional[str] = None  # null -> the sweep name
    log_checkpoints: bool = True


class SweepFile(_Strict):
    """The YAML schema (structure only; `load_sweep` adds the cross-checks)."""

    name: str
    experiment: str
    description: str = ""
    overrides: dict[str, Any] = Field(default_factory=dict)
    search: Optional[SearchSpec] = None
    scheduler: Optional[SchedulerSpec] = None  # `none` in the file reads as null
    arms: Optional[dict[str, ArmSpec]] = None
    design: Optional[dict[str, Any]] = None  # factors -> design points (experiments/design.py); arms besides them
    seeds: Union[list[int], SequentialSeeds] = Field(default_factory=lambda: [0])
    metric: Optional[str] = None  # for arms-only sweeps with a scheduler; search.metric wins
    mode: Optional[Literal["max", "min"]] = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent: Optional[int] = Field(None, gt=0)
    max_trials: int = Field(10_000, gt=0)  # a plan larger than this is refused before it is built
    failure: FailureSpec = Field(default_factory=FailureSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)


@dataclass
class SweepSpec:
    """A validated sweep: the file's fields plus the resolved base config."""

    path: Path
    file: SweepFile
    base: ExperimentConfig       # base experiment + sweep overrides
    metric: str
    mode: str
    arms: dict[str, ArmSpec] = field(default_factory=dict)  # the design's points, then the file's arms
    design: Optional[Any] = None  # experiments.design.Design

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def arm_names(self) -> list[str]:
        return list(self.arms)

    @property
    def experiment_name(self) -> str:
        return self.file.tracking.experiment or self.file.name

    @property
    def asha(self) -> Optional[AshaSpec]:
        return self.file.scheduler.asha if self.file.scheduler else None

    @property
    def sequential(self) -> Optional[SequentialSeeds]:
        """The sequential seeding settings (None for a fixed seed list)."""
        seeds = self.file.seeds
        return seeds if isinstance(seeds, SequentialSeeds) else None

    @property
    def seeds(self) -> list[int]:
        """Every seed the sweep may train: the list, or 0..max-1 for sequential seeding."""
        seq = self.sequential
        return list(range(seq.max)) if seq is not None else list(self.file.seeds)

    def waves(self):
        """The wave planner of a sequentially seeded sweep (experiments.sequential.Waves), None otherwise."""
        from experiments.sequential import Waves

        seq = self.sequential
        if seq is None:
            return None
        return Waves(self.arm_names, seq.start, seq.max, seq.step, seq.alpha, seq.spending, seq.width,
                     seq.max_device_hours)

    def arm_overrides(self, arm: Optional[str]) -> dict[str, Any]:
        return dict(self.arms[arm].overrides) if arm else {}

    def trial_config(self, arm: Optional[str], seed: int, params: dict[str, Any] | None = None) -> ExperimentConfig:
        """The trial's config: `base` (with the sweep overrides) + arm, seed and searched params."""
        return apply_overrides(self.base, {**self.arm_overrides(arm), "train.seed": seed, **(params or {})})

    @property
    def base_config_path(self) -> Path:
        return (self.path.parent / self.file.experiment).resolve()

    def max_t(self, arm: Optional[str] = None) -> int:
        asha = self.asha
        if asha and asha.max_t:
            return asha.max_t
        return self.trial_config(arm, self.seeds[0]).train.epochs


# --------------------------------------------------------------------------- loading


def _fail(path: Path, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {msg}")


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and fully validate a sweep file; ConfigError names the file and the key."""
    path = Path(path)
    data = read_yaml(path, "sweep")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sweep keys, got {type(data).__name__}")
    return validate_sweep(data, path)


def validate_sweep(data: dict, path: Path) -> SweepSpec:
    if data.get("scheduler") == "none":
        data = {**data, "scheduler": None}
    if "seeds" in data:  # a list or a mapping: validated as the one it is (pydantic would report both forms)
        form = SequentialSeeds if isinstance(data["seeds"], dict) else TypeAdapter(list[int])
        try:
            data = {**data, "seeds": form.model_validate(data["seeds"]) if form is SequentialSeeds
                    else form.validate_python(data["seeds"])}
        except ValidationError as exc:
            raise ConfigError("invalid sweep: " + "; ".join(_pyd_messages(exc, path, "seeds"))) from None
    try:
        sf = SweepFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("invalid sweep: " + "; ".join(_pyd_messages(exc, path))) from None
    if not _NAME.match(sf.name):
        raise _fail(path, "name", f"{sf.name!r}: use letters, digits and _ . + - only")
    cfg_path = (path.parent / sf.experiment).resolve()
    if not cfg_path.exists():
        raise _fail(path, "experiment", f"base config {cfg_path} not found (paths are relative to the sweep file)")
    if not cfg_path.is_file():
        from ssd_core.config import _kind
        raise _fail(path, "experiment", f"base config {cfg_path} is {_kind(cfg_path)}, not a YAML file")
    keys = config_keys()
    _check_keys(path, "overrides", sf.overrides, keys)
    raw_base = load_config(cfg_path)
    base = _apply(path, "overrides", raw_base, sf.overrides)
    if isinstance(sf.seeds, SequentialSeeds):
        seq = sf.seeds
        if seq.max < seq.start:
            raise _fail(path, "seeds.max", f"{seq.max} is below seeds.start {seq.start}")
        if sf.search is not None:
            raise _fail(path, "seeds", "sequential seeding decides each arm's delta against the baseline: it takes "
                        "arms and no search (search the configuration first, then compare arms)")
    elif not sf.seeds:
        raise _fail(path, "seeds", "empty: expected at least one seed")
    elif len(set(sf.seeds)) != len(sf.seeds):
        raise _fail(path, "seeds", f"{sf.seeds} repeats a seed")
    if sf.resources.gpu > 1 and sf.resources.gpu != int(sf.resources.gpu):
        raise _fail(path, "resources.gpu", f"{sf.resources.gpu}: fractions are for one GPU (<= 1) only")
    if sf.arms is not None and not sf.arms:
        raise _fail(path, "arms", "empty: expected at least one arm or no `arms` key")
    if sf.arms is None and sf.search is None and sf.design is None:
        raise _fail(path, "arms", "neither `arms`, `design` nor `search`: a sweep needs one of them (a single arm "
                    "`arms: {base: {}}` repeats the base config over the seeds)")
    total = planned_trials(sf)
    if total > sf.max_trials:  # before anything is built: a plan can be astronomically large
        raise _fail(path, "max_trials", f"the plan has {total:,} trials, more than max_trials {sf.max_trials:,}: "
                    f"shrink the sweep, or raise max_trials if you mean it")
    design, arms = _design_arms(path, sf, keys)
    if isinstance(sf.seeds, SequentialSeeds) and len(arms) < 2:
        raise _fail(path, "seeds", "sequential seeding needs a baseline arm and at least one arm to compare")
    roots = set()
    for name, arm in arms.items():
        if not _NAME.match(str(name)):
            raise _fail(path, f"arms.{name}", "arm names use letters, digits and _ . + - only")
        _check_keys(path, f"arms.{name}.overrides", arm.overrides, keys)
        arm_cfg = _apply(path, f"arms.{name}.overrides", base, arm.overrides)
        if (arm_cfg.data.root, arm_cfg.data.default_root) not in roots:
            roots.add((arm_cfg.data.root, arm_cfg.data.default_root))
            _check_data_root(path, arm_cfg)
    if not arms:
        _check_data_root(path, base)
    metric, mode = _metric_and_mode(sf, path, base)
    if sf.search is not None or (sf.scheduler is not None and sf.scheduler.asha is not None):
        for arm in (list(arms) or [None]):
            arm_cfg = _apply(path, f"arms.{arm}.overrides", base, arms[arm].overrides) if arm else base
            if not arm_cfg.data.val_sets and arm_cfg.data.holdout is None:
                what = "search" if sf.search is not None else "scheduler"
                raise _fail(path, what, f"a search or early stopping chooses on the validation split, and the config"
                            f"{' of arm ' + arm if arm else ''} has none: set data.val_sets or data.holdout "
                            f"(overrides: {{data.holdout: 0.1}})")
    if sf.search is not None:
        for arm in (list(arms) or [None]):
            arm_cfg = _apply(path, f"arms.{arm}.overrides", base, arms[arm].overrides) if arm else base
            _check_space(path, sf.search, arm_cfg, keys)
        _check_objectives(path, sf, arms, base)
        if sf.search.sampler == "grid":
            size = grid_size(search_params(path, sf.search))
            if sf.search.num_samples is not None and sf.search.num_samples > size:
                raise _fail(path, "search.num_samples", f"{sf.search.num_samples} exceeds the grid size {size}")
    if sf.search is not None and design is not None:
        warnings.warn(f"{path}: design with search: an Optuna search per design point ({len(design.points)} "
                      f"searches) is expensive; search the configuration first, then run the design", stacklevel=2)
    spec = SweepSpec(path=path, file=sf, base=base, metric=metric, mode=mode, arms=arms, design=design)
    asha = spec.asha
    if asha is not None:
        for arm in (list(arms) or [None]):
            max_t = spec.max_t(arm)
            if asha.grace_period > max_t:
                raise _fail(path, "scheduler.asha.grace_period",
                            f"{asha.grace_period} exceeds max_t {max_t} (train.epochs{' of arm ' + arm if arm else ''})")
    return spec


def _check_data_root(path: Path, cfg: ExperimentConfig) -> None:
    """A data root that exists but is not a folder (or, for a synthetic set to be made, whose nearest existing
    parent is not one) fails here, before anything is created; a missing one is left to the node that reads
    it (on a cluster the driver need not hold the data)."""
    from ssd_core.config import resolve_data_root

    try:
        root = resolve_data_root(cfg)
    except ConfigError:
        return  # not set: fit names the key
    key = "data.root" if cfg.data.root else "data.default_root"
    if root.exists() and not root.is_dir():
        raise _fail(path, key, f"{root} is a file, not a dataset folder")
    if cfg.data.synthetic is not None and not root.exists():
        parent = root.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise _fail(path, key, f"{root}: the synthetic set cannot be made there: {parent} is a file")


def planned_trials(sf: "SweepFile") -> int:
    """The most trials the sweep's plan can hold, counted without building it: arms (the design's points and
    the file's arms) x seeds, and per arm the search's trials plus its confirm seeds (sequential seeding:
    arms x max seeds)."""
    from experiments.design import point_count

    n_arms = max(1, len(sf.arms or {}) + (point_count(sf.design) if isinstance(sf.design, dict) else 0))
    seeds = sf.seeds.max if isinstance(sf.seeds, SequentialSeeds) else len(sf.seeds)
    if sf.search is None:
        return n_arms * seeds
    samples = sf.search.num_samples
    if samples is None:
        try:
            samples = grid_size(parse_space(sf.search.space))
        except SpaceError:
            samples = 1
    return n_arms * (samples + max(0, seeds - 1))


def _design_arms(path: Path, sf: "SweepFile", keys: set[str]):
    """(Design or None, arms): the design's points as arms (named by their changes, the baseline first) and
    then the file's hand-written arms; ConfigError naming design.<key> or the colliding arm."""
    from experiments.design import DesignError, build

    arms: dict[str, ArmSpec] = {}
    design = None
    if sf.design is not None:
        try:
            design = build(sf.design)
        except DesignError as exc:
            raise _fail(path, f"design.{exc.where}".rstrip("."), exc.message) from None
        for f, levels in design.factors.items():
            for lv, over in levels.items():
                _check_keys(path, f"design.factors.{f}.{lv}", over, keys)
        for point, levels in design.points.items():
            note = ", ".join(f"{f} {lv}" for f, lv in levels.items())
            arms[point] = ArmSpec(note=note, overrides=design.overrides(point))
    for name, arm in (sf.arms or {}).items():
        if name in arms:
            raise _fail(path, f"arms.{name}", "is also the name of a design point: rename the arm")
        arms[name] = arm
    return design, arms


def _check_objectives(path: Path, sf: "SweepFile", arms: dict, base: ExperimentConfig) -> None:
    """search.objectives: known deploy/* costs, measured (deploy.bench on, with the backend they name), no
    duplicates, a sampler that handles several objectives, and no early stopping (it ranks on one metric,
    and a stopped trial has no final-epoch cost)."""
    objectives = sf.search.objectives
    if not objectives:
        return
    for i, name in enumerate(objectives):
        if name not in SEARCH_OBJECTIVES:
            raise _fail(path, f"search.objectives[{i}]", f"{name!r}: not a cost a search can minimise; one of "
                        f"{', '.join(SEARCH_OBJECTIVES)}")
    if len(set(objectives)) != len(objectives):
        raise _fail(path, "search.objectives", f"{objectives} repeats an objective")
    if sf.search.sampler not in ("tpe", "random", "nsga2"):
        raise _fail(path, "search.sampler", f"{sf.search.sampler!r} does not search several objectives: use tpe, "
                    f"random or nsga2 with search.objectives")
    if sf.scheduler is not None and sf.scheduler.asha is not None:
        raise _fail(path, "scheduler", "early stopping ranks trials on one metric, and a stopped trial has no "
                    "final-epoch cost: a multi-objective search (search.objectives) runs every trial to its end")
    for arm in (list(arms) or [None]):
        cfg = _apply(path, f"arms.{arm}.overrides", base, arms[arm].overrides) if arm else base
        where = f" (arm {arm})" if arm else ""
        if not cfg.deploy.bench:
            raise _fail(path, "search.objectives", f"{objectives} are measured at each trial's final epoch by "
                        f"deploy.bench, which is off{where}: set it (overrides: {{deploy.bench: true}})")
        for name in objectives:
            for backend in ("onnx", "int8"):
                if name.startswith(f"{M.DEPLOY}/{backend}/") and not getattr(cfg.deploy, backend):
                    raise _fail(path, "search.objectives", f"{name!r} needs deploy.{backend}: true{where}")


def _pyd_messages(exc: ValidationError, path: Path, prefix: str = "") -> list[str]:
    out = []
    for err in exc.errors():
        key = ".".join([prefix] * bool(prefix) + [str(p) for p in err["loc"]
                                                  if not str(p).startswith(("function-", "literal["))])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "extra_forbidden":
            import difflib

            fields = _fields_at(err["loc"][:-1]) if not prefix else set()
            near = difflib.get_close_matches(str(err["loc"][-1]), sorted(fields), n=1)
            msg += f" (did you mean {near[0]!r}?)" if near else ""
        if "input" in err and err["type"] not in ("extra_forbidden", "missing"):
            msg += f" (got {short(err['input'])})"
        out.append(f"{path}: {key or '<root>'}: {msg}")
    return out


def _fields_at(loc: tuple) -> set[str]:
    """The keys a sweep file allows at `loc` (a pydantic error location), for a did-you-mean."""
    model = SweepFile
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return set()
        ann = field.annotation
        candidates = [a for a in (getattr(ann, "__args__", None) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return set()
        model = candidates[0]
    return set(model.model_fields)


def _check_keys(path: Path, where: str, mapping: dict, keys: set[str]) -> None:
    for key in mapping:
        if key not in keys:
            import difflib

            near = difflib.get_close_matches(str(key), sorted(keys), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _fail(path, f"{where}.{key}", f"not a config key{hint}")


def _apply(path: Path, where: str, cfg: ExperimentConfig, overrides: dict) -> ExperimentConfig:
    try:
        return apply_overrides(cfg, overrides)
    except ConfigError as exc:
        raise _fail(path, where, f"the resulting config is invalid: {exc}") from None


def _metric_and_mode(sf: SweepFile, path: Path, base: ExperimentConfig) -> tuple[str, str]:
    """The sweep metric is the config's selection metric (val/<eval.metric>): the one best.pt, the
    run's score and the reports use; another metric would select trials and checkpoints apart."""
    s = sf.search
    for attr in ("metric", "mode"):
        top, inner = getattr(sf, attr), getattr(s, attr) if s else None
        if top is not None and inner is not None and top != inner:
            raise _fail(path, f"search.{attr}", f"{inner!r} disagrees with the top-level {attr} {top!r}")
    selection = M.metric_for(base.eval.metric, M.VAL)
    metric = (s and s.metric) or sf.metric or selection
    mode = (s and s.mode) or sf.mode or DEFAULT_MODE
    if metric != selection:
        raise _fail(path, "search.metric" if s and s.metric else "metric",
                    f"{metric!r}: sweeps select on the config's selection metric {selection!r} (eval.metric "
                    f"{base.eval.metric!r}); change eval.metric to select on another")
    if mode != DEFAULT_MODE:
        raise _fail(path, "search.mode" if s and s.mode else "mode", f"{mode!r}: {selection} is maximised")
    return metric, mode


def search_params(path: Path, search: SearchSpec) -> list[Param]:
    """The search space parsed (experiments.schema.parse_space); ConfigError names the file and key."""
    if not search.space:
        raise _fail(path, "search.space", "empty: expected at least one parameter")
    try:
        return parse_space(search.space)
    except SpaceError as exc:
        raise _fail(path, f"search.space.{exc.where}".rstrip("."), exc.message) from None


def _check_space(path: Path, search: SearchSpec, cfg: ExperimentConfig, keys: set[str]) -> None:
    """What the parsed space must satisfy against the config: known keys, valid extremes, `when` keys
    sampled earlier or in the config, the grid sampler's restrictions."""
    seen: list[str] = []
    for p in search_params(path, search):
        where = f"search.space.{p.key}"
        if p.key not in keys:
            _check_keys(path, "search.space", {p.key: None}, keys)
        for value in p.extremes():  # the extremes / every choice must give a valid config
            _apply(path, f"{where}.{p.kind}", cfg, {p.key: value})
        for wkey, _ in p.when:
            if wkey not in keys:
                _check_keys(path, f"{where}.when", {wkey: None}, keys)
            if wkey in search.space and wkey not in seen:
                raise _fail(path, f"{where}.when.{wkey}", "refers to a parameter sampled later; list it first")
        if p.when and search.sampler == "grid":
            raise _fail(path, f"{where}.when", "the grid sampler takes no conditional parameters")
        if search.sampler == "grid" and p.grid() is None:
            raise _fail(path, where, f"the grid sampler takes choice and int parameters only, got {p.kind}")
        seen.append(p.key)


# --------------------------------------------------------------------------- plan


@dataclass
class Phase:
    """One Ray Tune experiment: `grid` (explicit trials), `search` (Optuna) or `confirm` (reseeds)."""

    kind: Literal["grid", "search", "confirm"]
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
        return [Phase("grid", "trials", trials=trials, num_samples=1)]
    n = s.num_samples or grid_size(parse_space(s.space))
    phases = []
    for i, arm in enumerate(arms or [None]):
        tag = f"{i:02d}-{_slug(arm)}-" if arm else ""
        phases.append(Phase("search", f"{tag}search", arm=arm, num_samples=n,
                            trials=[{"arm": arm, "seed": seeds[0]}]))
        if len(seeds) > 1:
            phases.append(Phase("confirm", f"{tag}confirm", arm=arm,
                                trials=[{"arm": arm, "seed": seed} for seed in seeds[1:]]))
    return phases


def wave_phase(k: int, trials: list[tuple[str, int]]) -> Phase:
    """Wave k of a sequentially seeded sweep as a phase (its own Ray Tune experiment)."""
    return Phase("grid", f"wave-{k:02d}", trials=[{"arm": a, "seed": seed} for a, seed in trials])


def describe(spec: SweepSpec) -> str:
    """The dry-run text: trial plan, resources, tracking."""
    f = spec.file
    lines = [f"sweep {f.name}  ({spec.path})", f"  base config: {spec.base_config_path}"]
    if f.overrides:
        lines.append(f"  overrides: {json.dumps(f.overrides)}")
    lines.append(f"  metric: {spec.metric} ({spec.mode})")
    total = 0
    for ph in plan(spec):
        if ph.kind == "search":
            s = f.search
            n = ph.num_samples
            lines.append(f"  phase {ph.dirname}: Optuna {s.sampler} search (seed {s.seed}), {n} trials"
                         f"{' in arm ' + ph.arm if ph.arm else ''}, train.seed={ph.trials[0]['seed']}")
            for key, dist in s.space.items():
                lines.append(f"      {key}: {json.dumps(dist)}")
        else:
            n = len(ph.trials)
            what = "best searched config x seeds" if ph.kind == "confirm" else "arms x seeds"
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
        Tag.MODE: spec.mode,
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
