"""A sweep file read and validated before anything starts: load_sweep(path) -> SweepSpec.
Every error is a ConfigError naming the sweep file and the key."""
from __future__ import annotations

import warnings
from pathlib import Path

from pydantic import BaseModel, TypeAdapter, ValidationError

from experiments.schema import MAXIMISED, SEARCH_OBJECTIVES, M, Param, SpaceError, grid_size, parse_space
from experiments.sweep.spec import (
    _NAME,
    GRID_SAMPLER,
    MULTI_OBJECTIVE,
    ArmSpec,
    SearchSpec,
    SequentialSeeds,
    SweepFile,
    SweepSpec,
)
from ssd_core.config import ExperimentConfig, apply_overrides, config_keys, load_config, read_yaml, short
from ssd_core.errors import ConfigError


def _fail(path: Path, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {msg}")


def load_sweep(path: str | Path, overrides: dict | None = None) -> SweepSpec:
    """Read and fully validate a sweep file; ConfigError names the file and the key. `overrides` (config keys,
    e.g. from `ssdlab sweep -o train.epochs=5`) join the file's `overrides`, last."""
    path = Path(path)
    data = read_yaml(path, "sweep")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sweep keys, got {type(data).__name__}")
    if overrides:
        if not isinstance(data.get("overrides") or {}, dict):
            raise _fail(path, "overrides", "expected a mapping of config keys")
        data = {**data, "overrides": {**(data.get("overrides") or {}), **overrides}}
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
        from ssd_core.config import file_kind
        raise _fail(path, "experiment", f"base config {cfg_path} is {file_kind(cfg_path)}, not a YAML file")
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
    metric = _selection_metric(sf, path, base)
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
        if sf.search.sampler == GRID_SAMPLER:
            size = grid_size(search_params(path, sf.search))
            if sf.search.num_samples is not None and sf.search.num_samples > size:
                raise _fail(path, "search.num_samples", f"{sf.search.num_samples} exceeds the grid size {size}")
    if sf.search is not None and design is not None:
        warnings.warn(f"{path}: design with search: an Optuna search per design point ({len(design.points)} "
                      f"searches) is expensive; search the configuration first, then run the design", stacklevel=2)
    spec = SweepSpec(path=path, file=sf, base=base, metric=metric, arms=arms, design=design)
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
    if root.exists() and not root.is_dir() and not (cfg.data.format == "yolo" and root.suffix in (".yaml", ".yml")):
        raise _fail(path, key, f"{root} is a file, not a dataset folder" + (" (or a YOLO data.yaml)" if
                                                                             cfg.data.format == "yolo" else ""))
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
    if sf.search.sampler not in MULTI_OBJECTIVE:
        raise _fail(path, "search.sampler", f"{sf.search.sampler!r} does not search several objectives: use "
                    f"{', '.join(MULTI_OBJECTIVE[:-1])} or {MULTI_OBJECTIVE[-1]} with search.objectives")
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


def _selection_metric(sf: SweepFile, path: Path, base: ExperimentConfig) -> str:
    """The sweep metric is the config's selection metric (val/<eval.metric>): the one best.pt, the
    run's score and the reports use; another metric would select trials and checkpoints apart. It is
    maximised: a sweep file may say `mode: max` (or `search.mode`), and nothing else."""
    s = sf.search
    for attr in ("metric", "mode"):
        top, inner = getattr(sf, attr), getattr(s, attr) if s else None
        if top is not None and inner is not None and top != inner:
            raise _fail(path, f"search.{attr}", f"{inner!r} disagrees with the top-level {attr} {top!r}")
    selection = M.metric_for(base.eval.metric, M.VAL)
    metric = (s and s.metric) or sf.metric or selection
    mode = (s and s.mode) or sf.mode or MAXIMISED
    if metric != selection:
        raise _fail(path, "search.metric" if s and s.metric else "metric",
                    f"{metric!r}: sweeps select on the config's selection metric {selection!r} (eval.metric "
                    f"{base.eval.metric!r}); change eval.metric to select on another")
    if mode != MAXIMISED:
        raise _fail(path, "search.mode" if s and s.mode else "mode", f"{mode!r}: {selection} is maximised")
    return metric


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
        if p.when and search.sampler == GRID_SAMPLER:
            raise _fail(path, f"{where}.when", "the grid sampler takes no conditional parameters")
        if search.sampler == GRID_SAMPLER and p.grid() is None:
            raise _fail(path, where, f"the grid sampler takes choice and int parameters only, got {p.kind}")
        seen.append(p.key)
